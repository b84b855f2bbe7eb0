//! `filtermail <config_file> <mode>`: upstream's command line and exit texts, verbatim.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use chatmail_filtermail::Direction;

fn main() -> ExitCode {
    // OsString: a config path need not be UTF-8.
    let args: Vec<OsString> = std::env::args_os().collect();
    let [_, ini, mode] = args.as_slice() else {
        let argv0 = args
            .first()
            .map_or("filtermail".into(), |a| a.to_string_lossy());
        eprintln!("Usage: {argv0} <config_file> <mode>");
        eprintln!("  mode: incoming or outgoing");
        return ExitCode::FAILURE;
    };
    let direction = match mode.to_str() {
        Some("outgoing") => Direction::Outgoing,
        Some("incoming") => Direction::Incoming,
        _ => {
            eprintln!("Error: mode must be 'incoming' or 'outgoing'");
            return ExitCode::FAILURE;
        }
    };
    chatmail_daemon::init_logging();
    let config = match chatmail_config::Config::load(Path::new(ini)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("Failed to read config: {err}");
            return ExitCode::FAILURE;
        }
    };
    match chatmail_filtermail::run_daemon(&config, direction) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Server error: {err}");
            ExitCode::FAILURE
        }
    }
}

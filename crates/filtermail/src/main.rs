//! `filtermail <config_file> <mode>`: upstream's command line and exit texts, verbatim.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use chatmail_filtermail::Direction;

/// What the second argument asks for.
enum Mode {
    Filter(Direction),
    Transport,
}

fn main() -> ExitCode {
    // OsString: a config path need not be UTF-8.
    let args: Vec<OsString> = std::env::args_os().collect();
    let [_, ini, mode] = args.as_slice() else {
        let argv0 = args
            .first()
            .map_or("filtermail".into(), |a| a.to_string_lossy());
        eprintln!("Usage: {argv0} <config_file> <mode>");
        eprintln!("  mode: incoming, outgoing or transport");
        return ExitCode::FAILURE;
    };
    let mode = match mode.to_str() {
        Some("outgoing") => Mode::Filter(Direction::Outgoing),
        Some("incoming") => Mode::Filter(Direction::Incoming),
        Some("transport") => Mode::Transport,
        _ => {
            eprintln!("Error: mode must be 'incoming', 'outgoing' or 'transport'");
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
    let run = match mode {
        Mode::Filter(direction) => chatmail_filtermail::run_daemon(&config, direction),
        Mode::Transport => chatmail_filtermail::run_transport(&config),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Server error: {err}");
            ExitCode::FAILURE
        }
    }
}

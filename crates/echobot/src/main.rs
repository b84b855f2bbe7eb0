//! `echobot INI [--state-dir DIR]`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Delta Chat compatible echo bot of a chatmail relay.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// chatmail.ini (e.g. /usr/local/lib/chatmaild/chatmail.ini).
    ini: PathBuf,
    /// Where the bot keeps its account, key and invite (the unit's StateDirectory).
    #[arg(long, default_value = "/var/lib/echobot")]
    state_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    chatmail_daemon::init_logging();
    let Some(config) = chatmail_daemon::load_config(&args.ini) else {
        return ExitCode::FAILURE;
    };
    match echobot::run(&config, &args.state_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

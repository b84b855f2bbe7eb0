//! `chatmail-metadata SOCKET INI`: the command line of upstream's chatmail-metadata.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// IMAP METADATA dict daemon and push notifier of a chatmail relay.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Unix socket to listen on (e.g. /run/chatmail-metadata/metadata.socket).
    socket: PathBuf,
    /// chatmail.ini (e.g. /usr/local/lib/chatmaild/chatmail.ini).
    ini: PathBuf,
    /// JSON file served as /shared/vendor/deltachat/appversions, re-read on every lookup
    /// [default: appversions.json beside INI; while it does not exist, the shipped list].
    #[arg(long)]
    appversions: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    chatmail_daemon::init_logging();
    let config = match chatmail_config::Config::load(&args.ini) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    match chatmail_metadata::run_daemon(&args.socket, &config, args.appversions.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

//! `doveauth SOCKET INI`: the command line of upstream's doveauth.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Dovecot passdb/userdb dict daemon of a chatmail relay.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Unix socket to listen on (e.g. /run/doveauth/doveauth.socket).
    socket: PathBuf,
    /// chatmail.ini (e.g. /usr/local/lib/chatmaild/chatmail.ini).
    ini: PathBuf,
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
    match doveauth::run_daemon(&args.socket, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

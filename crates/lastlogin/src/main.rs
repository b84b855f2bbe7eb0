//! `lastlogin SOCKET INI`: the command line of upstream's lastlogin.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Last-login dict daemon of a chatmail relay.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Unix socket to listen on (e.g. /run/chatmail-lastlogin/lastlogin.socket).
    socket: PathBuf,
    /// chatmail.ini (e.g. /usr/local/lib/chatmaild/chatmail.ini).
    ini: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    chatmail_daemon::init_logging();
    let Some(config) = chatmail_daemon::load_config(&args.ini) else {
        return ExitCode::FAILURE;
    };
    match lastlogin::run_daemon(&args.socket, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

//! `echobot INI [--state-dir DIR] [--imap-server HOST:PORT] [--smtp-server HOST:PORT]`:
//! the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use echobot::service::Endpoint;

/// Delta Chat compatible echo bot of a chatmail relay.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// chatmail.ini (e.g. /usr/local/lib/chatmaild/chatmail.ini).
    ini: PathBuf,
    /// Where the bot keeps its account, key and invite (the unit's StateDirectory).
    #[arg(long, default_value = "/var/lib/echobot")]
    state_dir: PathBuf,
    /// IMAP server with implicit TLS instead of mail_domain port 993, e.g. 127.0.0.1:10993
    /// or [::1]:993. The certificate is checked as for mail_domain (tls_cert_mode).
    #[arg(long, value_name = "HOST:PORT", value_parser = Endpoint::parse)]
    imap_server: Option<Endpoint>,
    /// SMTP submission server with implicit TLS instead of mail_domain port 465.
    #[arg(long, value_name = "HOST:PORT", value_parser = Endpoint::parse)]
    smtp_server: Option<Endpoint>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    chatmail_daemon::init_logging();
    let Some(config) = chatmail_daemon::load_config(&args.ini) else {
        return ExitCode::FAILURE;
    };
    match echobot::run(&config, &args.state_dir, args.imap_server, args.smtp_server) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("echobot").chain(args.iter().copied()))
    }

    #[test]
    fn ini_and_state_dir_as_before() {
        let args = parse(&["chatmail.ini"]).unwrap();
        assert_eq!(args.ini, PathBuf::from("chatmail.ini"));
        assert_eq!(args.state_dir, PathBuf::from("/var/lib/echobot"));
        assert_eq!((args.imap_server, args.smtp_server), (None, None));
        let args = parse(&["chatmail.ini", "--state-dir", "/tmp/bot"]).unwrap();
        assert_eq!(args.state_dir, PathBuf::from("/tmp/bot"));
    }

    #[test]
    fn server_overrides() {
        let args = parse(&[
            "--imap-server",
            "127.0.0.1:10993",
            "chatmail.ini",
            "--smtp-server=[::1]:10465",
        ])
        .unwrap();
        let imap = args.imap_server.unwrap();
        let smtp = args.smtp_server.unwrap();
        assert_eq!((imap.host.as_str(), imap.port), ("127.0.0.1", 10993));
        assert_eq!((smtp.host.as_str(), smtp.port), ("::1", 10465));
        for bad in [
            ["chatmail.ini", "--imap-server", "127.0.0.1"],
            ["chatmail.ini", "--smtp-server", "host:0"],
            ["chatmail.ini", "--smtp-server", "::1:465"],
        ] {
            let err = parse(&bad).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }
}

//! `loopback-relay`: Dovecot plus our daemons on 127.0.0.1, for trying them by hand.
//!
//! It starts the same relay the end-to-end tests use, prints how to log in, and stops
//! everything it started (and removes its temp dir) on Ctrl-C or SIGTERM.

use std::process::ExitCode;

use chatmail_e2e::{DOMAIN, Relay};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    // Handlers, not a blocked signal mask: the daemons would inherit the mask and ignore
    // the SIGTERM that stops them.
    let mut stop = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("loopback-relay: cannot handle signals: {err}");
            return ExitCode::FAILURE;
        }
    };
    let Some(relay) = Relay::start() else {
        eprintln!("loopback-relay: this machine cannot run the relay (see above)");
        return ExitCode::FAILURE;
    };
    let imap = relay.imap_addr();
    println!(
        "chatmail loopback relay is up: Dovecot with doveauth, lastlogin and chatmail-metadata.

  IMAP        {imap} (no TLS; LOGIN and AUTHENTICATE PLAIN)
  domain      {DOMAIN}
  accounts    created at first login: any address <9 chars of a-z0-9>@{DOMAIN}
              with a password of at least 9 characters, e.g.

    printf 'a LOGIN abc123xyz@{DOMAIN} \"correct-horse\"\\r\\nb LOGOUT\\r\\n' | nc {ip} {port}

  push        device tokens set with SETMETADATA are notified at a local gateway on delivery
  list them   doveadm -c {conf} user '*'
  files       {dir}
              (chatmail.ini, dovecot.conf, *.log, lmtp.socket, mail/)

Ctrl-C stops everything started here and removes {dir}.",
        ip = imap.ip(),
        port = imap.port(),
        conf = relay.path("dovecot.conf").display(),
        dir = relay.path("").display(),
    );
    if let Some(signal) = stop.forever().next() {
        let name = if signal == SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        println!("\n{name} received: stopping the relay");
    }
    drop(relay);
    ExitCode::SUCCESS
}

//! `loopback-relay`: a whole chatmail relay on 127.0.0.1, for trying it with Delta Chat.
//!
//! ```text
//! loopback-relay [start] [--state-dir DIR] [--free-ports]
//! loopback-relay stop [--state-dir DIR]
//! ```
//!
//! `start` brings up Postfix, filtermail (outgoing, incoming, transport), Dovecot,
//! doveauth, lastlogin and chatmail-metadata with the templates in packaging/conf/, waits
//! until each answers, prints how to log in (a `dclogin:` URL and its QR code) and
//! returns, leaving them running. `stop` stops exactly what `start` started and removes the
//! state dir. The logic is in `chatmail_e2e::loopback`.

use std::path::PathBuf;
use std::process::ExitCode;

use chatmail_e2e::DOMAIN;
use chatmail_e2e::loopback::{
    self, DEFAULT_STATE_DIR, Running, StartOptions, dclogin_url, qr_code,
};

const USAGE: &str = "usage: loopback-relay [start] [--state-dir DIR] [--free-ports]
       loopback-relay stop [--state-dir DIR]";

fn main() -> ExitCode {
    let mut stop = false;
    let mut state_dir = PathBuf::from(DEFAULT_STATE_DIR);
    let mut free_ports = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "start" => stop = false,
            "stop" => stop = true,
            "--free-ports" => free_ports = true,
            "--state-dir" => match args.next() {
                Some(dir) => state_dir = PathBuf::from(dir),
                None => return usage("--state-dir needs a directory"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if stop {
        match loopback::stop(&state_dir) {
            Ok(stopped) => {
                let names: Vec<String> = stopped
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.pid))
                    .collect();
                println!(
                    "stopped: {}; removed {}",
                    if names.is_empty() {
                        "nothing was recorded".to_string()
                    } else {
                        names.join(", ")
                    },
                    state_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("loopback-relay stop: {err}");
                ExitCode::FAILURE
            }
        }
    } else {
        let options = StartOptions {
            state_dir,
            free_ports,
        };
        match loopback::start(&options) {
            Ok(running) => {
                print_running(&running);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("loopback-relay start: {err}");
                ExitCode::FAILURE
            }
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("loopback-relay: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn print_running(running: &Running) {
    let ports = &running.ports;
    let p = &ports.postfix;
    let dir = running.state_dir.display();
    let processes: Vec<String> = running
        .processes
        .iter()
        .map(|process| format!("{} {}", process.name, process.pid))
        .collect();
    let url = dclogin_url(&running.addr, &running.password, ports);
    println!(
        "chatmail relay running on 127.0.0.1, domain {DOMAIN} (self-signed certificate)

  IMAP        127.0.0.1:{imaps} (TLS)   127.0.0.1:{imap} (STARTTLS)
  SMTP        127.0.0.1:{submissions} (TLS)   127.0.0.1:{submission} (STARTTLS)   login required
  MX          127.0.0.1:{smtp} (STARTTLS required, through filtermail incoming)
  internal    filtermail 127.0.0.1:{filtermail} (outgoing), :{filtermail_incoming} (incoming),
              :{filtermail_http_incoming} (incoming /mxdeliv), :{filtermail_transport} (transport: mail to other
              relays, on to their HTTPS 443 or SMTP 25), reinjection 127.0.0.1:{reinject} and :{reinject_incoming}
  processes   {processes}
  files       {dir} (chatmail.ini, dovecot.conf, postfix-etc/, *.log, mail/)

Accounts are created at first login: any <9 of a-z0-9>@{DOMAIN} with a password
of 9 or more characters. This one exists already:

  address     {addr}
  password    {password}

Delta Chat logs in with this URL (scan the QR code, or paste the URL as an invite link):

{url}
",
        imaps = ports.imaps,
        imap = ports.imap,
        submissions = p.submissions,
        submission = p.submission,
        smtp = p.smtp,
        filtermail = p.filtermail,
        filtermail_incoming = p.filtermail_incoming,
        filtermail_http_incoming = p.filtermail_http_incoming,
        filtermail_transport = p.filtermail_transport,
        reinject = p.reinject,
        reinject_incoming = p.reinject_incoming,
        processes = processes.join(", "),
        addr = running.addr,
        password = running.password,
    );
    match qr_code(&url) {
        Some(qr) => println!("{qr}"),
        None => println!("(install qrencode to see the URL as a QR code here)\n"),
    }
    if running.state_dir.as_os_str() == DEFAULT_STATE_DIR {
        println!("Stop it with: scripts/loopback-relay stop");
    } else {
        println!("Stop it with: scripts/loopback-relay stop --state-dir {dir}");
    }
}

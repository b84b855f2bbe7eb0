//! Another relay, as filtermail's transport mode sees it, on `[::1]`: an HTTPS `/mxdeliv`
//! endpoint and an SMTP server with STARTTLS, both with a self-signed certificate (a
//! literal destination is not certificate-checked), each answering as the test scripts it
//! and recording what arrives.
//!
//! `[::1]` because the relay under test listens on 127.0.0.1 only: Postfix then treats
//! `user@[IPv6:::1]` as a remote address and hands it to its `default_transport`, where
//! `user@[127.0.0.1]` would be its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// How long the remote waits for the next line or byte of a peer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request head or SMTP line the remote reads.
const MAX_LINE: usize = 4096;

/// What arrived at the remote relay by one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// `https` or `smtp`.
    pub channel: &'static str,
    /// `X-MAIL-FROM` / `MAIL FROM`, empty for the null sender.
    pub sender: String,
    /// `X-MAIL-TO` headers / `RCPT TO` commands, in order.
    pub recipients: Vec<String>,
    /// The HTTP body, or the SMTP data up to the final dot: both dot-stuffed wire form.
    pub data: Vec<u8>,
    /// SMTP only: whether the data came after STARTTLS.
    pub tls: bool,
}

/// How the remote answers.
#[derive(Debug, Clone)]
pub struct Script {
    /// The HTTP status of `/mxdeliv` (200 accepts).
    pub https_status: u16,
    /// The reply to every RCPT TO (e.g. `250 OK` or `550 5.1.1 No such user`).
    pub rcpt_reply: String,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            https_status: 200,
            rcpt_reply: "250 2.1.5 OK".into(),
        }
    }
}

/// A running remote relay; its threads end with the test process.
pub struct RemoteRelay {
    https_port: u16,
    smtp_port: u16,
    script: Arc<Mutex<Script>>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
}

impl RemoteRelay {
    /// Listens on two free ports of `[::1]`.
    pub fn start(script: Script) -> RemoteRelay {
        let config = tls_config();
        let script = Arc::new(Mutex::new(script));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let https = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("cannot bind [::1]");
        let smtp = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("cannot bind [::1]");
        let relay = RemoteRelay {
            https_port: https.local_addr().expect("address").port(),
            smtp_port: smtp.local_addr().expect("address").port(),
            script: script.clone(),
            arrivals: arrivals.clone(),
        };
        spawn_acceptor(https, config.clone(), &script, &arrivals, serve_https);
        spawn_acceptor(smtp, config, &script, &arrivals, serve_smtp);
        relay
    }

    /// `filtermail_transport_https_port` for chatmail.ini.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// `filtermail_transport_smtp_port` for chatmail.ini.
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// Changes how the remote answers from now on.
    pub fn set_script(&self, script: Script) {
        if let Ok(mut current) = self.script.lock() {
            *current = script;
        }
    }

    /// Everything that arrived so far, in order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

type Serve = fn(TcpStream, Arc<ServerConfig>, Script) -> Option<Arrival>;

fn spawn_acceptor(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    script: &Arc<Mutex<Script>>,
    arrivals: &Arc<Mutex<Vec<Arrival>>>,
    serve: Serve,
) {
    let script = script.clone();
    let arrivals = arrivals.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let config = config.clone();
            let current = script.lock().map(|s| s.clone()).unwrap_or_default();
            let arrivals = arrivals.clone();
            std::thread::spawn(move || {
                if let Some(arrival) = serve(stream, config, current) {
                    if let Ok(mut all) = arrivals.lock() {
                        all.push(arrival);
                    }
                }
            });
        }
    });
}

/// A self-signed certificate for `::1`, HTTP/1.1 only (no ALPN).
fn tls_config() -> Arc<ServerConfig> {
    let key = rcgen::KeyPair::generate().expect("cannot make the remote's key");
    let params = rcgen::CertificateParams::new(vec!["::1".to_string()])
        .expect("remote certificate parameters");
    let cert = params
        .self_signed(&key)
        .expect("cannot sign the remote's certificate");
    crate::tls::server_config(&cert, &key)
}

/// Reads one line (at most [`MAX_LINE`] bytes) without its line end; `None` at EOF or error.
fn read_line<R: BufRead>(reader: &mut R) -> Option<String> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .ok()?;
    if read == 0 {
        return None;
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// One `POST /mxdeliv` per TLS connection.
fn serve_https(stream: TcpStream, config: Arc<ServerConfig>, script: Script) -> Option<Arrival> {
    let connection = ServerConnection::new(config).ok()?;
    let mut reader = BufReader::new(StreamOwned::new(connection, stream));
    let request_line = read_line(&mut reader)?;
    let mut sender = String::new();
    let mut recipients = Vec::new();
    let mut length = 0usize;
    for _ in 0..100 {
        let header = read_line(&mut reader)?;
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim().to_string();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok()?,
            "x-mail-from" => sender = value,
            "x-mail-to" => recipients.push(value),
            _ => {}
        }
    }
    let mut data = vec![0u8; length];
    reader.read_exact(&mut data).ok()?;
    let status = script.https_status;
    let reply =
        format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let stream = reader.get_mut();
    stream.write_all(reply.as_bytes()).ok()?;
    stream.flush().ok()?;
    let accepted = request_line.starts_with("POST /mxdeliv ") && status == 200;
    accepted.then_some(Arrival {
        channel: "https",
        sender,
        recipients,
        data,
        tls: true,
    })
}

/// An SMTP dialogue offering STARTTLS; records the message if the data was accepted.
fn serve_smtp(stream: TcpStream, config: Arc<ServerConfig>, script: Script) -> Option<Arrival> {
    let mut plain = BufReader::new(stream);
    reply(plain.get_mut(), "220 remote.localhost ESMTP")?;
    loop {
        let line = read_line(&mut plain)?;
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => reply(
                plain.get_mut(),
                "250-remote.localhost\r\n250-STARTTLS\r\n250 8BITMIME",
            )?,
            "STAR" => {
                reply(plain.get_mut(), "220 2.0.0 Ready to start TLS")?;
                break;
            }
            "QUIT" => return None,
            _ => reply(
                plain.get_mut(),
                "530 5.7.0 Must issue a STARTTLS command first",
            )?,
        }
    }
    let connection = ServerConnection::new(config).ok()?;
    let mut reader = BufReader::new(StreamOwned::new(connection, plain.into_inner()));
    let mut sender = String::new();
    let mut recipients = Vec::new();
    let mut arrival = None;
    for _ in 0..1000 {
        // A client may close after the data without QUIT: what it sent still counts.
        let Some(line) = read_line(&mut reader) else {
            return arrival;
        };
        let upper = line.to_ascii_uppercase();
        let path = || {
            line.split_once(':')
                .map(|(_, rest)| rest.trim().trim_start_matches('<').trim_end_matches('>'))
                .unwrap_or("")
                .to_string()
        };
        if upper.starts_with("EHLO") {
            reply(reader.get_mut(), "250-remote.localhost\r\n250 8BITMIME")?;
        } else if upper.starts_with("MAIL FROM:") {
            sender = path();
            reply(reader.get_mut(), "250 2.1.0 OK")?;
        } else if upper.starts_with("RCPT TO:") {
            let accepted = script.rcpt_reply.starts_with('2');
            if accepted {
                recipients.push(path());
            }
            reply(reader.get_mut(), &script.rcpt_reply)?;
        } else if upper == "DATA" {
            if recipients.is_empty() {
                reply(reader.get_mut(), "554 5.5.1 No valid recipients")?;
                continue;
            }
            reply(reader.get_mut(), "354 Go ahead")?;
            let mut data = Vec::new();
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).ok()? == 0 {
                    return None;
                }
                if line == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&line);
            }
            reply(reader.get_mut(), "250 2.0.0 Queued")?;
            arrival = Some(Arrival {
                channel: "smtp",
                sender: sender.clone(),
                recipients: std::mem::take(&mut recipients),
                data,
                tls: true,
            });
        } else if upper == "QUIT" {
            let _ = reply(reader.get_mut(), "221 2.0.0 Bye");
            return arrival;
        } else if upper == "RSET" || upper == "NOOP" {
            reply(reader.get_mut(), "250 OK")?;
        } else {
            reply(reader.get_mut(), "500 5.5.2 Unknown command")?;
        }
    }
    arrival
}

fn reply<W: Write>(stream: &mut W, text: &str) -> Option<()> {
    stream.write_all(format!("{text}\r\n").as_bytes()).ok()?;
    stream.flush().ok()
}

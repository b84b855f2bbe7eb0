//! A push notification gateway on 127.0.0.1 for chatmail-metadata's `notification_url`:
//! HTTPS with a certificate for `127.0.0.1` issued by a CA made for this gateway alone
//! (chatmail-metadata trusts it through `notification_ca_file`), HTTP/1.1 on each
//! connection; it answers every POST with 200 and records the body (the device token).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::relay::set_mode;

/// A running gateway; its thread ends with the test process.
pub struct Gateway {
    port: u16,
    ca_file: PathBuf,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Makes the gateway's CA and certificate, writes the CA certificate to `ca_file`
    /// (mode 0644: chatmail-metadata runs as vmail), and starts listening.
    pub fn start(ca_file: &Path) -> Gateway {
        let (ca_pem, config) = tls_config();
        std::fs::write(ca_file, ca_pem)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", ca_file.display()));
        set_mode(ca_file, 0o644);
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the push gateway");
        let port = listener.local_addr().expect("gateway address").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let recorded = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let recorded = recorded.clone();
                let config = config.clone();
                std::thread::spawn(move || serve(stream, config, &recorded));
            }
        });
        Gateway {
            port,
            ca_file: ca_file.to_path_buf(),
            bodies,
        }
    }

    /// `notification_url` for chatmail.ini.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/notify", self.port)
    }

    /// `notification_ca_file` for chatmail.ini: the CA that issued the gateway's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// A CA (its certificate as PEM) and the server configuration with a certificate for
/// `127.0.0.1` it issued. No ALPN: the client falls back to HTTP/1.1.
fn tls_config() -> (String, Arc<ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().expect("cannot make the gateway CA's key");
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("gateway CA parameters");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chatmail-e2e push gateway CA");
    let ca = ca_params
        .self_signed(&ca_key)
        .expect("cannot sign the gateway CA");
    let key = rcgen::KeyPair::generate().expect("cannot make the gateway's key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("gateway certificate parameters");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("cannot issue the gateway certificate");
    (ca.pem(), crate::tls::server_config(&cert, &key))
}

/// Serves HTTP/1.1 requests on one TLS connection (keep-alive) until the client closes it.
fn serve(stream: TcpStream, config: Arc<ServerConfig>, recorded: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(connection) = ServerConnection::new(config) else {
        return;
    };
    let mut reader = BufReader::new(StreamOwned::new(connection, stream));
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut bodies) = recorded.lock() {
            bodies.push(String::from_utf8_lossy(&body).into_owned());
        }
        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let stream = reader.get_mut();
        if stream.write_all(reply.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

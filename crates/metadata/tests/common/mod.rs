//! Test helpers: a local HTTPS notification gateway (HTTP/1.1 and HTTP/2, certificates
//! made here), a dict client, chatmail.ini files and maildirs in a temporary directory.

#![allow(dead_code, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const DOMAIN: &str = "chat.example.org";

/// How the gateway answers a token: by its prefix.
/// `ok…` 200, `gone…` 410, `fail…` 500, `hang…` never.
fn status_for(token: &str) -> Option<u16> {
    if token.starts_with("gone") {
        Some(410)
    } else if token.starts_with("fail") {
        Some(500)
    } else if token.starts_with("hang") {
        None
    } else {
        Some(200)
    }
}

/// What the gateway saw.
#[derive(Default)]
pub struct GatewayState {
    /// Every request body, in arrival order, with its HTTP version.
    pub received: Mutex<Vec<(String, Version)>>,
    /// Tokens answered, with the status.
    pub answered: Mutex<Vec<(String, u16)>>,
    /// TLS connections accepted.
    pub connections: AtomicUsize,
    /// While set, every request hangs (the restart test's first daemon).
    pub hang_all: AtomicBool,
}

impl GatewayState {
    pub fn received_tokens(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn answered(&self) -> Vec<(String, u16)> {
        self.answered.lock().unwrap().clone()
    }

    /// How often each token was answered 200.
    pub fn delivered(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (token, status) in self.answered() {
            if status == 200 {
                *counts.entry(token).or_default() += 1;
            }
        }
        counts
    }

    /// Waits (up to 20 s) until at least `n` requests arrived.
    pub async fn wait_received(&self, n: usize) {
        wait_until(|| self.received.lock().unwrap().len() >= n, "requests").await;
    }

    /// Waits (up to 20 s) until at least `n` requests were answered.
    pub async fn wait_answered(&self, n: usize) {
        wait_until(|| self.answered.lock().unwrap().len() >= n, "answers").await;
    }
}

pub async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A local HTTPS server with a certificate from its own CA.
pub struct Gateway {
    pub url: String,
    pub ca_file: PathBuf,
    pub state: Arc<GatewayState>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chatmail-metadata test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/notify", listener.local_addr().unwrap());
        let state = Arc::new(GatewayState::default());
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let service =
                        hyper::service::service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Gateway {
            url,
            ca_file,
            state,
            _dir: dir,
        }
    }
}

async fn answer(
    state: Arc<GatewayState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = request.version();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let token = String::from_utf8_lossy(&body).into_owned();
    state
        .received
        .lock()
        .unwrap()
        .push((token.clone(), version));
    let status = if state.hang_all.load(Ordering::SeqCst) {
        None
    } else {
        status_for(&token)
    };
    let Some(status) = status else {
        std::future::pending::<()>().await;
        unreachable!();
    };
    state.answered.lock().unwrap().push((token, status));
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"")))
        .unwrap())
}

/// A dict connection.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).await.unwrap();
        let (read, writer) = stream.into_split();
        Client {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Sends `text` (any number of lines) without waiting for a reply.
    pub async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    /// Sends `text` and reads one reply line.
    pub async fn request(&mut self, text: &str) -> String {
        self.send(text).await;
        self.read_line().await
    }

    pub async fn read_line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
            .await
            .expect("reply within 20 s")
            .unwrap();
        line
    }
}

/// A temporary relay: chatmail.ini, `mail/` and maildirs.
pub struct Relay {
    pub dir: tempfile::TempDir,
}

impl Relay {
    /// `extra` lines are appended to `[params]`.
    pub fn new(extra: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        let ini = format!(
            "[params]\nmail_domain = {DOMAIN}\nmailboxes_dir = {}\nturn_socket_path = {}\n{extra}",
            mail.display(),
            dir.path().join("turn.socket").display(),
        );
        std::fs::write(dir.path().join("chatmail.ini"), ini).unwrap();
        Relay { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ini(&self) -> PathBuf {
        self.path("chatmail.ini")
    }

    pub fn config(&self) -> chatmail_config::Config {
        chatmail_config::Config::load(&self.ini()).unwrap()
    }

    pub fn mail(&self) -> PathBuf {
        self.path("mail")
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.mail().join("pending_notifications")
    }

    /// Creates the maildir of `addr` and returns it.
    pub fn maildir(&self, addr: &str) -> PathBuf {
        let dir = self.mail().join(addr);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Names in the queue directory, sorted.
    pub fn queued(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.queue_dir()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Contents of the queue files, sorted.
    pub fn queued_contents(&self) -> Vec<String> {
        let mut contents: Vec<String> = self
            .queued()
            .iter()
            .map(|name| std::fs::read_to_string(self.queue_dir().join(name)).unwrap())
            .collect();
        contents.sort();
        contents
    }
}

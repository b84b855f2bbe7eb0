//! An HTTPS server standing in for a relay's `/mxdeliv` (nginx + filtermail): TLS with a
//! self-signed certificate, HTTP/1.1 or HTTP/2 by ALPN; records every request and
//! answers with the status the test sets, or never (to run into the client's timeout).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The authority the client asked for (`:authority` or `Host`).
    pub authority: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub version: hyper::Version,
}

impl Recorded {
    /// Values of the header `name`, in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

struct State {
    status: AtomicU16,
    hang: AtomicBool,
    requests: Mutex<Vec<Recorded>>,
}

/// A running server; its tasks end with the test's runtime.
pub struct HttpsServer {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl HttpsServer {
    /// Listens on `ip`, port 0, answering `status`.
    pub async fn start(ip: IpAddr, status: u16) -> HttpsServer {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(super::self_signed_tls(&[b"h2", b"http/1.1"]));
        let state = Arc::new(State {
            status: AtomicU16::new(status),
            hang: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsServer { addr, state }
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Never answer from now on.
    pub fn hang(&self) {
        self.state.hang.store(true, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = request.version();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    state.requests.lock().unwrap().push(Recorded {
        method,
        path,
        authority,
        headers,
        body,
        version,
    });
    if state.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap();
    let text = if status.is_success() {
        "250 OK"
    } else {
        "523 Encryption Needed: Invalid Unencrypted Mail"
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}

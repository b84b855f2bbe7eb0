//! An SMTP server standing in for a remote relay's port 25: STARTTLS with a self-signed
//! certificate (optional), PIPELINING (optional), replies scripted per command; records
//! every command and the message data as received on the wire (still dot-stuffed).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How the server behaves.
#[derive(Clone)]
pub struct Script {
    pub starttls: bool,
    pub pipelining: bool,
    /// Replies replacing the defaults, by verb (`EHLO`, `STARTTLS`, `MAIL`, `RCPT`, `DATA`, and `.`
    /// for the end of data); lines separated by CRLF, no final CRLF. A `RCPT` reply
    /// applies to recipients whose command contains `RCPT_MATCH` when that is set.
    pub replies: HashMap<&'static str, String>,
    /// Only RCPT commands containing this get the scripted RCPT reply.
    pub rcpt_match: Option<String>,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            starttls: true,
            pipelining: true,
            replies: HashMap::new(),
            rcpt_match: None,
        }
    }
}

/// One connection as the server saw it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Command lines without CRLF, in order.
    pub commands: Vec<String>,
    /// Whether TLS was established.
    pub tls: bool,
    /// Each message's data as received, without the final `.` line.
    pub data: Vec<Vec<u8>>,
}

/// A running server; its tasks end with the test's runtime.
pub struct SmtpServer {
    pub addr: SocketAddr,
    sessions: Arc<Mutex<Vec<Arc<Mutex<Session>>>>>,
    accept: tokio::task::JoinHandle<()>,
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

impl SmtpServer {
    /// Listens on `ip`:`port` (0: ephemeral).
    pub async fn start(ip: IpAddr, port: u16, script: Script) -> SmtpServer {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let all = sessions.clone();
        let acceptor = TlsAcceptor::from(super::self_signed_tls(&[]));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let session = Arc::new(Mutex::new(Session::default()));
                all.lock().unwrap().push(session.clone());
                let script = script.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, script, acceptor, session).await;
                });
            }
        });
        SmtpServer {
            addr,
            sessions,
            accept,
        }
    }

    /// Stops listening: further connection attempts are refused.
    pub async fn stop(&self) {
        self.accept.abort();
        for _ in 0..10_000 {
            if self.accept.is_finished() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the SMTP server did not stop");
    }

    pub fn sessions(&self) -> Vec<Session> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }
}

async fn serve(
    tcp: TcpStream,
    script: Script,
    acceptor: TlsAcceptor,
    session: Arc<Mutex<Session>>,
) -> std::io::Result<()> {
    let mut stream: BufReader<Box<dyn Conn>> = BufReader::new(Box::new(tcp));
    let mut tls = false;
    send(&mut stream, "220 test.invalid ESMTP").await?;
    loop {
        let Some(line) = read_line(&mut stream).await? else {
            return Ok(());
        };
        session.lock().unwrap().commands.push(line.clone());
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let scripted = script.replies.get(verb.as_str()).cloned().filter(|_| {
            verb != "RCPT" || script.rcpt_match.as_ref().is_none_or(|m| line.contains(m))
        });
        match verb.as_str() {
            "EHLO" => {
                let mut reply = vec!["250-test.invalid".to_owned()];
                if script.starttls && !tls {
                    reply.push("250-STARTTLS".to_owned());
                }
                if script.pipelining {
                    reply.push("250-PIPELINING".to_owned());
                }
                reply.push("250 8BITMIME".to_owned());
                send(&mut stream, &scripted.unwrap_or(reply.join("\r\n"))).await?;
            }
            "STARTTLS" if script.starttls && !tls => {
                send(&mut stream, &scripted.unwrap_or("220 go ahead".to_owned())).await?;
                let plain = stream.into_inner();
                let encrypted = acceptor.accept(plain).await?;
                stream = BufReader::new(Box::new(encrypted));
                tls = true;
                session.lock().unwrap().tls = true;
            }
            "MAIL" | "RCPT" | "RSET" | "NOOP" => {
                send(&mut stream, &scripted.unwrap_or("250 2.1.0 OK".to_owned())).await?;
            }
            "DATA" => {
                let reply = scripted.unwrap_or("354 go on".to_owned());
                send(&mut stream, &reply).await?;
                if !reply.starts_with("354") {
                    continue;
                }
                let mut data = Vec::new();
                loop {
                    let mut line = Vec::new();
                    if stream.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&line);
                }
                session.lock().unwrap().data.push(data);
                let done = script
                    .replies
                    .get(".")
                    .cloned()
                    .unwrap_or("250 2.0.0 queued".to_owned());
                send(&mut stream, &done).await?;
            }
            "QUIT" => {
                send(&mut stream, "221 bye").await?;
                return Ok(());
            }
            _ => send(&mut stream, "500 unknown command").await?,
        }
    }
}

async fn read_line(stream: &mut BufReader<Box<dyn Conn>>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    if stream.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&line);
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

async fn send(stream: &mut BufReader<Box<dyn Conn>>, reply: &str) -> std::io::Result<()> {
    let inner = stream.get_mut();
    inner.write_all(format!("{reply}\r\n").as_bytes()).await?;
    inner.flush().await
}

/// A listener on `ip`:`port` whose accept queue is full, so further connection attempts
/// get no answer at all (the SYN is dropped): a host that blackholes port 25. Returns
/// what must be kept alive.
pub async fn blackhole(ip: IpAddr, port: u16) -> (TcpListener, Vec<TcpStream>) {
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4().unwrap(),
        IpAddr::V6(_) => TcpSocket::new_v6().unwrap(),
    };
    socket.bind(SocketAddr::new(ip, port)).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            TcpStream::connect(addr),
        )
        .await;
        match attempt {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => {
                // The queue is full: connection attempts now go unanswered.
                return (listener, fillers);
            }
        }
    }
    panic!("the accept queue of {addr} never filled");
}

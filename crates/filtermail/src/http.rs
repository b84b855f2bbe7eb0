//! The incoming HTTP listener: `/mxdeliv`, by which other relays deliver over HTTPS (TLS
//! is terminated by nginx in front, which forwards plain HTTP here), filtermail-latest.md
//! §6.3.
//!
//! `POST` with the envelope in `X-MAIL-FROM` / `X-MAIL-TO` headers and the message in
//! SMTP's data form as the body ([`crate::wire`]); the answer is the SMTP reply as the
//! body, with status 200 for `250 OK`, 413 for an oversize body, 405 for another method
//! and 400 for every other reply. The message goes through the same check, DKIM origin
//! check and reinjection as one received over SMTP ([`Filter::judge_and_reinject`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_LENGTH, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::Filter;
use crate::buffers::MESSAGE_BUFFERS;
use crate::server::accept_connections;
use crate::wire::{envelope_address, unstuff};

/// The reply to a request whose `X-MAIL-TO` is no plain address.
pub const INVALID_RECIPIENT: &str = "553 5.1.3 Invalid recipient address in X-MAIL-TO";

/// The reply to a body longer than `max_message_size`, with status 413.
pub const TOO_LARGE: &str = "552 Message exceeds maximum size";

/// Limits that keep one peer from holding resources forever.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A connection on which nothing could be read, or nothing written, for this long is
    /// closed (upstream: 60 s each); also the bound on reading one request's headers.
    pub inactivity: Duration,
    /// Connections served at once; further peers wait in the listen backlog.
    pub max_connections: usize,
    /// Requests in flight on one HTTP/2 connection (each may hold a message in memory).
    pub max_streams: u32,
    /// How long in-flight requests may finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            inactivity: Duration::from_secs(60),
            // As the SMTP listener.
            max_connections: 1000,
            // nginx speaks HTTP/1.x to its upstreams; only local clients use h2c here.
            max_streams: 16,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `listener` until `shutdown` completes, then lets in-flight requests finish for
/// `shutdown_grace` (idle keep-alive connections are closed at once).
pub async fn serve(
    listener: TcpListener,
    filter: Arc<Filter>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.inactivity);
    builder.http2().max_concurrent_streams(limits.max_streams);
    // The SMTP listener's accept loop: the same cap, the same back-off on accept errors.
    let accept_loop = accept_connections(&listener, &permits, |stream, permit| {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Inactivity::new(stream, limits.inactivity));
        let filter = filter.clone();
        let service = service_fn(move |request| {
            let filter = filter.clone();
            async move { Ok::<_, Infallible>(handle(request, &filter).await) }
        });
        let connection = graceful.watch(builder.serve_connection(io, service).into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                // Peers that vanish or idle out; nothing an operator can act on.
                tracing::debug!("(HTTP) connection ended: {err}");
            }
            drop(permit);
        });
    });
    tokio::select! {
        () = accept_loop => {}
        () = shutdown => {}
    }
    let _ = tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await;
}

fn reply(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response
}

/// One request: envelope from the headers, body within the size limit, data form, then
/// the incoming pipeline.
async fn handle(request: Request<Incoming>, filter: &Filter) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let (parts, body) = request.into_parts();
    // Absent, or anything but one plain address: the null sender, as upstream does for
    // a value that is not visible ASCII. A sender other than the From: address is blanked
    // by the check anyway.
    let sender = parts
        .headers
        .get("x-mail-from")
        .and_then(|value| envelope_address(value.as_bytes()))
        .unwrap_or_default();
    tracing::debug!("(HTTP) MAIL FROM:<{sender}>");
    let mut recipients = Vec::new();
    for value in parts.headers.get_all("x-mail-to") {
        let Some(rcpt) = envelope_address(value.as_bytes()) else {
            tracing::warn!("(HTTP) Refused an X-MAIL-TO header that is no plain address");
            return reply(StatusCode::BAD_REQUEST, INVALID_RECIPIENT);
        };
        tracing::debug!("(HTTP) RCPT TO:<{rcpt}>");
        recipients.push(rcpt);
    }
    let max = filter.max_message_size;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        // Refused before a byte of the body is read.
        return reply(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE);
    }
    let data = match read_body(body, max, declared).await {
        Ok(Some(data)) => data,
        Ok(None) => return reply(StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE),
        Err(err) => {
            // The peer is gone or stalled; it will hardly read this.
            tracing::debug!("(HTTP) reading the body: {err}");
            return reply(StatusCode::BAD_REQUEST, "451 4.3.0 Error reading the body");
        }
    };
    let data = match unstuff(data) {
        Ok(data) => data,
        Err(invalid) => {
            tracing::debug!("(HTTP) Invalid DATA: {invalid}");
            return reply(StatusCode::BAD_REQUEST, invalid.reply());
        }
    };
    let answer = filter.judge_and_reinject(sender, recipients, data).await;
    let status = if answer.starts_with("250 ") {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    reply(status, answer)
}

/// The body, or `None` as soon as it exceeds `max` bytes: an oversize body is never held
/// beyond the limit, and the rest is not read at all.
async fn read_body(
    mut body: Incoming,
    max: u64,
    declared: Option<u64>,
) -> Result<Option<Vec<u8>>, hyper::Error> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let declared = declared.and_then(|length| usize::try_from(length).ok());
    let mut data = MESSAGE_BUFFERS.take();
    data.reserve_exact(declared.unwrap_or(0).min(max));
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue; // trailers
        };
        if chunk.len() > max - data.len() {
            return Ok(None);
        }
        if data.capacity() - data.len() < chunk.len() {
            // A quarter more rather than double (as the SMTP path), never beyond the limit.
            let more = chunk.len().max(data.len() / 4).max(64 * 1024);
            data.reserve_exact(more.min(max - data.len()));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Some(data))
}

/// A stream that fails with `TimedOut` when a read, or a write, has waited for `timeout`
/// without progress.
struct Inactivity<S> {
    inner: S,
    timeout: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Inactivity<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Inactivity {
            inner,
            timeout,
            read_timer: None,
            write_timer: None,
        }
    }
}

/// Passes a ready result through (and disarms `timer`); on `Pending` arms `timer` and
/// fails once it fires.
fn watch<T>(
    result: Poll<io::Result<T>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    what: &str,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    if result.is_ready() {
        *timer = None;
        return result;
    }
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    ready!(sleep.as_mut().poll(cx));
    *timer = None;
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no {what} for {timeout:?}"),
    )))
}

impl<S: AsyncRead + Unpin> AsyncRead for Inactivity<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        watch(result, &mut this.read_timer, this.timeout, "data", cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inactivity<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        watch(
            result,
            &mut this.write_timer,
            this.timeout,
            "write progress",
            cx,
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        watch(
            result,
            &mut this.write_timer,
            this.timeout,
            "write progress",
            cx,
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        watch(
            result,
            &mut this.write_timer,
            this.timeout,
            "write progress",
            cx,
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        watch(
            result,
            &mut this.write_timer,
            this.timeout,
            "write progress",
            cx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn inactivity_fails_a_stalled_read_and_not_a_slow_one() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Inactivity::new(server, Duration::from_secs(60));
        let mut client = client;
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                client.write_all(b"x").await.unwrap();
            }
            // Then silence, with the stream still open.
            std::future::pending::<()>().await;
        });
        let mut byte = [0u8; 1];
        for _ in 0..3 {
            server.read_exact(&mut byte).await.unwrap();
        }
        let err = server.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn inactivity_fails_a_write_nobody_reads() {
        let (_client, server) = tokio::io::duplex(16);
        let mut server = Inactivity::new(server, Duration::from_secs(60));
        let err = server.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}

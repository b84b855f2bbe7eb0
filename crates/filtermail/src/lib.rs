//! filtermail: the before-queue SMTP filter and the LMTP transport of a chatmail relay, a
//! drop-in for upstream's filtermail (0.7.4 dialect); incoming mode also serves the
//! `/mxdeliv` HTTP endpoint other relays deliver to.
//!
//! Postfix hands every submitted (`outgoing`) and every received (`incoming`) message to
//! this filter over SMTP (`smtpd_proxy_filter`). Cleartext is refused unless an exemption
//! applies, outgoing senders are rate-limited, incoming mail must carry a DKIM signature of
//! its `From:` domain, and accepted mail is reinjected into Postfix. In `transport` mode
//! Postfix hands every message for other relays to it over LMTP, and it delivers them
//! per destination ([`transport`]).
//!
//! Where things are: [`check`] (the policy, pure), [`dkim`] (the origin check), [`openpgp`] (armor and packet walk),
//! [`mime`] (the MIME walker), [`address`], [`command`] (SMTP command lines),
//! [`limiter`] (GCRA), [`server`] (sockets), [`reinject`] (SMTP client to Postfix),
//! [`http`] (the `/mxdeliv` listener), [`wire`] (its data form and envelope headers) and
//! [`transport`] (the worker pool of transport mode).

#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod address;
pub mod buffers;
pub mod check;
pub mod command;
pub mod data;
pub mod dkim;
pub mod http;
pub mod index;
pub mod limiter;
pub mod mime;
pub mod openpgp;
pub mod reinject;
pub mod server;
pub mod transport;
pub mod wire;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use chatmail_config::Config;
use chatmail_delivery::{DeliverySettings, RemoteDelivery};
use chatmail_mailbox::Mailboxes;
use dkim::{DkimVerifier, SystemResolver};
use thiserror::Error;
use tokio::net::TcpListener;

pub use check::Direction;
use limiter::SendLimiter;
use reinject::ReinjectTarget;
use server::{Handler, Limits};
use transport::Transport;

/// Failures that stop the daemon.
#[derive(Debug, Error)]
pub enum FiltermailError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("postfix_host {host}: {reason}")]
    PostfixHost { host: String, reason: String },
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("setting up the DNS resolver: {0}")]
    Resolver(dkim::LookupError),
    #[error("setting up remote delivery: {0}")]
    Delivery(chatmail_delivery::DeliveryError),
}

/// Everything a connection needs, shared by all connections of one listener.
pub struct Filter {
    /// Which rules apply.
    pub direction: Direction,
    /// Where the `enforceE2EEincoming` markers live.
    pub mailboxes: Mailboxes,
    /// Outgoing only: the per-sender send rate.
    pub limiter: Option<SendLimiter>,
    /// Larger messages get 552 (Postfix enforces the same limit earlier).
    pub max_message_size: u64,
    /// Postfix's reinjection port for this direction.
    pub reinject: ReinjectTarget,
    /// Timeouts and the connection cap.
    pub limits: Limits,
    /// Incoming only: the DKIM origin check; `None` skips it (`FILTERMAIL_SKIP_DKIM`, and
    /// always outgoing).
    pub dkim: Option<Arc<DkimVerifier>>,
}

impl Filter {
    /// The filter for `direction` as chatmail.ini configures it, without DKIM
    /// verification (the caller sets [`Filter::dkim`]).
    pub fn from_config(config: &Config, direction: Direction) -> Result<Filter, FiltermailError> {
        let (limiter, reinject_port) = match direction {
            Direction::Outgoing => (
                Some(SendLimiter::new(
                    config.max_user_send_per_minute,
                    config.max_user_send_burst_size,
                )),
                config.postfix_reinject_port,
            ),
            Direction::Incoming => (None, config.postfix_reinject_port_incoming),
        };
        let reinject_addr = resolve_postfix_host(&config.postfix_host, reinject_port)?;
        Ok(Filter {
            direction,
            mailboxes: Mailboxes::new(&config.mailboxes_dir),
            limiter,
            max_message_size: config.max_message_size,
            reinject: ReinjectTarget::new(reinject_addr, Duration::from_secs(60))
                .with_ehlo_address(config.filtermail_host),
            limits: Limits::default(),
            dkim: None,
        })
    }
}

/// `postfix_host`:`port` as a socket address: an IP address as it is, a name resolved
/// once, now (the first address the system resolver gives).
pub fn resolve_postfix_host(host: &str, port: u16) -> Result<SocketAddr, FiltermailError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let failed = |reason: String| FiltermailError::PostfixHost {
        host: host.to_owned(),
        reason,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|err| failed(err.to_string()))?
        .next()
        .ok_or_else(|| failed("the name has no address".to_owned()))
}

/// The port chatmail.ini assigns to `direction`'s listener.
pub fn listen_port(config: &Config, direction: Direction) -> u16 {
    match direction {
        Direction::Outgoing => config.filtermail_smtp_port,
        Direction::Incoming => config.filtermail_smtp_port_incoming,
    }
}

/// The environment variable that turns DKIM verification off (tests only).
pub const SKIP_DKIM: &str = "FILTERMAIL_SKIP_DKIM";

fn runtime() -> Result<tokio::runtime::Runtime, FiltermailError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(FiltermailError::Runtime)
}

/// Runs the daemon until SIGTERM/SIGINT: binds 127.0.0.1 (incoming: the SMTP and the HTTP
/// port), logs `entering serving loop`, notifies systemd, serves.
pub fn run_daemon(config: &Config, direction: Direction) -> Result<(), FiltermailError> {
    runtime()?.block_on(async {
        let shutdown = chatmail_daemon::shutdown_signal().map_err(FiltermailError::Signals)?;
        let dkim = match direction {
            Direction::Outgoing => None,
            Direction::Incoming if dkim::skip_requested(std::env::var_os(SKIP_DKIM).as_deref()) => {
                // Before the serving-loop line, as upstream (relay's blackbox test skips it).
                tracing::warn!(
                    "DKIM verification DISABLED! This should not be used in production."
                );
                None
            }
            Direction::Incoming => {
                let resolver = SystemResolver::new().map_err(FiltermailError::Resolver)?;
                let verifier =
                    DkimVerifier::new(Arc::new(resolver)).map_err(FiltermailError::Resolver)?;
                Some(Arc::new(verifier))
            }
        };
        let filter = Arc::new(Filter {
            dkim,
            ..Filter::from_config(config, direction)?
        });
        let port = listen_port(config, direction);
        let http = match direction {
            Direction::Outgoing => None,
            Direction::Incoming => {
                let port = config.filtermail_http_port_incoming;
                let addr = SocketAddr::new(config.filtermail_host, port);
                let listener =
                    bind_listener(addr).map_err(|source| FiltermailError::Bind { addr, source })?;
                Some((listener, filter.clone()))
            }
        };
        listen_and_serve(config, port, filter, shutdown, http).await
    })
}

/// `filtermail INI transport`: the LMTP transport on `filtermail_lmtp_port_transport`,
/// otherwise as [`run_daemon`].
pub fn run_transport(config: &Config) -> Result<(), FiltermailError> {
    runtime()?.block_on(async {
        let shutdown = chatmail_daemon::shutdown_signal().map_err(FiltermailError::Signals)?;
        let deliver = Arc::new(
            RemoteDelivery::system(delivery_settings(config)).map_err(FiltermailError::Delivery)?,
        );
        let transport = Arc::new(Transport::from_config(config, deliver));
        let port = config.filtermail_lmtp_port_transport;
        listen_and_serve(config, port, transport, shutdown, None).await
    })
}

/// How transport mode reaches other relays: EHLO with `mail_domain`, their SMTP and
/// HTTPS ports as chatmail.ini says (25 and 443 unless a test setup changes them).
pub fn delivery_settings(config: &Config) -> DeliverySettings {
    DeliverySettings {
        smtp_port: config.filtermail_transport_smtp_port,
        https_port: config.filtermail_transport_https_port,
        ..DeliverySettings::new(&config.mail_domain)
    }
}

/// Receive buffer of the listening sockets, inherited by every accepted connection
/// (the kernel doubles it for its bookkeeping and caps it at `net.core.rmem_max`,
/// 208 KiB on a stock Debian).
///
/// Postfix pushes a whole message at once over loopback. A new connection starts with a
/// 128 KiB buffer that autotuning grows only as the connection goes on, and Postfix's
/// proxy opens one connection per message: the sender then stalls on the window, and
/// every read of ours sends a window update whose loopback delivery transmits the
/// sender's next segments on our CPU. With room for a typical message the sender puts
/// it all on the wire in its own time. Memory is only used by data waiting to be read.
pub const RECEIVE_BUFFER: u32 = 1 << 20;

/// A listener on `addr` (`filtermail_host`, 127.0.0.1 by default) whose connections get
/// [`RECEIVE_BUFFER`].
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind: a restart must not wait for TIME_WAIT connections.
    socket.set_reuseaddr(true)?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Binds 127.0.0.1:`port`, logs `entering serving loop` and the configuration's
/// warnings, notifies systemd, serves until `shutdown`; with `http` (incoming), serves the
/// `/mxdeliv` listener beside it with the same filter, and one signal stops both.
async fn listen_and_serve<H: Handler>(
    config: &Config,
    port: u16,
    handler: Arc<H>,
    shutdown: impl std::future::Future<Output = ()>,
    http: Option<(TcpListener, Arc<Filter>)>,
) -> Result<(), FiltermailError> {
    let addr = SocketAddr::new(config.filtermail_host, port);
    let listener = bind_listener(addr).map_err(|source| FiltermailError::Bind { addr, source })?;
    // Must be the first line after the optional DKIM warning: relay's blackbox test
    // waits for a line with "loop".
    tracing::info!("entering serving loop");
    // Config warnings come after it for the same reason.
    for warning in config
        .warnings()
        .into_iter()
        .chain(passthrough_warnings(config))
    {
        tracing::warn!("{warning}");
    }
    if nix::unistd::geteuid().is_root() {
        // Nothing here needs privileges; a parser bug should not be one as root.
        tracing::warn!(
            "running as root: filtermail needs no privileges, run it as an unprivileged \
             user (systemd User=vmail)"
        );
    }
    chatmail_daemon::notify_ready();
    let release = tokio::spawn(buffers::release_idle_buffers());
    match http {
        None => server::serve(listener, handler, shutdown).await,
        Some((http_listener, filter)) => {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let signalled = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tokio::join!(
                async {
                    shutdown.await;
                    let _ = stop.send(true);
                },
                server::serve(listener, handler, signalled(stopped.clone())),
                http::serve(
                    http_listener,
                    filter,
                    http::HttpLimits::default(),
                    signalled(stopped),
                ),
            );
        }
    }
    release.abort();
    chatmail_daemon::notify_stopping();
    Ok(())
}

/// filtermail 0.7 dropped the passthrough exemptions; an ini that still sets them gets
/// told so instead of silently losing them.
pub fn passthrough_warnings(config: &Config) -> Vec<String> {
    [
        ("passthrough_senders", &config.passthrough_senders),
        ("passthrough_recipients", &config.passthrough_recipients),
    ]
    .into_iter()
    .filter(|(_, list)| !list.is_empty())
    .map(|(key, _)| {
        format!("{key} is ignored: filtermail no longer exempts anyone from encryption")
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_get_the_receive_buffer() {
        use nix::sys::socket::{getsockopt, sockopt::RcvBuf};
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The kernel doubles what was asked, after capping it at rmem_max.
        let expected = 2 * (RECEIVE_BUFFER as usize).min(rmem_max);
        assert_eq!(getsockopt(&accepted, RcvBuf).unwrap(), expected);
    }

    #[test]
    fn postfix_host_is_an_address_or_a_name_resolved_at_start() {
        assert_eq!(
            resolve_postfix_host("10.1.2.3", 10025).unwrap(),
            "10.1.2.3:10025".parse().unwrap()
        );
        assert_eq!(
            resolve_postfix_host("::1", 10026).unwrap(),
            "[::1]:10026".parse().unwrap()
        );
        // From /etc/hosts, no network involved.
        let local = resolve_postfix_host("localhost", 10025).unwrap();
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 10025);
    }

    #[test]
    fn ehlo_names_are_address_literals() {
        let target = ReinjectTarget::new("127.0.0.1:1".parse().unwrap(), Duration::from_secs(1));
        assert_eq!(target.ehlo_name, "[127.0.0.1]");
        let v4 = target
            .clone()
            .with_ehlo_address("10.0.0.7".parse().unwrap());
        assert_eq!(v4.ehlo_name, "[10.0.0.7]");
        let v6 = target.with_ehlo_address("fd00::7".parse().unwrap());
        assert_eq!(v6.ehlo_name, "[IPv6:fd00::7]");
    }
}

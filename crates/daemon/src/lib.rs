//! Start-up pieces every chatmail daemon shares: log output that journald and mtail read
//! as upstream's, readiness and stopping notices for systemd, and the shutdown signal.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Sets up logging to stderr. `RUST_LOG` overrides the default level (info).
///
/// Upstream writes bare message text to stderr, and operators' mtail programs match on it
/// (`: Created address: ...` must follow the journal's `name[pid]: ` directly). So lines
/// carry no timestamp, target or level word. Under systemd (`JOURNAL_STREAM` set) each
/// line starts with a `<N>` syslog priority, which journald strips and files as the
/// entry's priority; elsewhere warnings and errors get a `WARNING: `/`ERROR: ` prefix.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = PlainFormat {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(format)
        .try_init();
}

/// The line format described at [`init_logging`].
struct PlainFormat {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for PlainFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            let priority = match level {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                Level::DEBUG | Level::TRACE => 7,
            };
            write!(writer, "<{priority}>")?;
        } else if level == Level::ERROR {
            writer.write_str("ERROR: ")?;
        } else if level == Level::WARN {
            writer.write_str("WARNING: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Loads chatmail.ini for a daemon's `main`: logs each warning (unknown keys, ...) and,
/// on error, the one-line reason, returning `None` so `main` exits non-zero.
pub fn load_config(path: &std::path::Path) -> Option<chatmail_config::Config> {
    match chatmail_config::Config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                tracing::warn!("{warning}");
            }
            Some(config)
        }
        Err(err) => {
            tracing::error!("{err}");
            None
        }
    }
}

/// Tells systemd (Type=notify units) that the daemon is serving. Without `NOTIFY_SOCKET`
/// this does nothing.
pub fn notify_ready() {
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("sd_notify READY=1 failed: {err}");
    }
}

/// Tells systemd that the daemon is shutting down.
pub fn notify_stopping() {
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]) {
        tracing::warn!("sd_notify STOPPING=1 failed: {err}");
    }
}

/// Completes on SIGTERM or SIGINT. Call from inside the tokio runtime, before serving,
/// so that the handlers are installed before the daemon reports ready.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    })
}

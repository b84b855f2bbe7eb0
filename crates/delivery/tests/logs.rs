//! The log lines operators and upstream's mtail program match on, verbatim. A test binary
//! of its own: the subscriber is the process's global one, so no other test's threads
//! can race with tracing's per-callsite interest cache.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use chatmail_delivery::{DeliverySettings, Destination, RemoteDelivery, resolver_at};
use support::dns::DnsStub;
use support::https::HttpsServer;
use support::smtp::{Script, SmtpServer};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Collects the formatted log lines of the process.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn operator_log_lines_are_verbatim() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dns = DnsStub::start().await;
    dns.mx("_log.test", &[(10, "mx1._log.test"), (20, "mx2._log.test")]);
    dns.ip("mx1._log.test", &[ip("127.0.0.3")]);
    dns.ip("mx2._log.test", &[ip("127.0.0.1")]);
    let mut script = Script::default();
    script
        .replies
        .insert("MAIL", "554 5.7.1 go away".to_owned());
    let smtp = SmtpServer::start(ip("127.0.0.1"), 0, script).await;
    let https = HttpsServer::start(ip("127.0.0.1"), 404).await;
    let mut settings = DeliverySettings::new("relay.example");
    settings.https_port = https.addr.port();
    settings.smtp_port = smtp.addr.port();
    let delivery = RemoteDelivery::with_resolver(settings, resolver_at(dns.addr).unwrap()).unwrap();
    let destination = Destination::of_recipient("b@_log.test").unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(40),
        delivery.deliver(
            &destination,
            "a@relay.example",
            &["b@_log.test".to_owned()],
            b"Subject: x\r\n\r\nx\r\n",
        ),
    )
    .await
    .expect("delivery did not finish");
    let port = smtp.addr.port();
    let forwarded = format!("554 5.7.1 go away (forwarded from mx2._log.test[127.0.0.1:{port}])");
    assert_eq!(reply, forwarded);
    let text = logs.text();
    assert!(
        text.contains("HTTPS delivery to mx2._log.test failed: status 404"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Connection error relaying to mail server mx1._log.test: Failed to connect to any of the following addresses: [127.0.0.3:{port}]"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Message rejected by mail server mx2._log.test: {forwarded}"
        )),
        "{text}"
    );
}

//! Delivery against local servers: a stub name server, an HTTPS `/mxdeliv` endpoint and
//! SMTP servers with and without STARTTLS, all on loopback addresses.

#![allow(clippy::indexing_slicing)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use chatmail_delivery::{DeliverySettings, Destination, RemoteDelivery, resolver_at};
use support::dns::DnsStub;
use support::https::HttpsServer;
use support::smtp::{Script, SmtpServer, blackhole};

const V4: &str = "127.0.0.1";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Generous bound of one delivery, so a test that regresses fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(40);

fn delivery(dns: &DnsStub, https_port: u16, smtp_port: u16) -> RemoteDelivery {
    let mut settings = DeliverySettings::new("relay.example");
    settings.https_port = https_port;
    settings.smtp_port = smtp_port;
    RemoteDelivery::with_resolver(settings, resolver_at(dns.addr).unwrap()).unwrap()
}

async fn deliver(
    delivery: &RemoteDelivery,
    sender: &str,
    recipients: &[&str],
    data: &[u8],
) -> String {
    let destination = Destination::of_recipient(recipients[0]).unwrap();
    let recipients: Vec<String> = recipients.iter().map(|r| (*r).to_owned()).collect();
    tokio::time::timeout(
        WATCHDOG,
        delivery.deliver(&destination, sender, &recipients, data),
    )
    .await
    .expect("delivery did not finish")
}

const MESSAGE: &[u8] =
    b"From: alice@relay.example\r\nSubject: hi\r\n\r\n.leading dot\r\n..two\r\nend\r\n";
const STUFFED: &[u8] =
    b"From: alice@relay.example\r\nSubject: hi\r\n\r\n..leading dot\r\n...two\r\nend\r\n";

/// Undoes dot-stuffing (for comparing what an SMTP server received with the original).
fn unstuffed(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut line_start = true;
    for &byte in wire {
        if line_start && byte == b'.' {
            line_start = false;
            continue;
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    out
}

/// A name server with `domain` MX `mx` (preference 10) → `addrs`.
async fn dns_with(domain: &str, mx: &str, addrs: &[IpAddr]) -> DnsStub {
    let dns = DnsStub::start().await;
    dns.mx(domain, &[(10, mx)]);
    dns.ip(mx, addrs);
    dns
}

#[tokio::test]
async fn https_success_sends_envelope_headers_and_stuffed_body() {
    let dns = dns_with("_a.test", "mx._a.test", &[ip(V4)]).await;
    let https = HttpsServer::start(ip(V4), 200).await;
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let delivery = delivery(&dns, https.addr.port(), smtp.addr.port());
    let reply = deliver(
        &delivery,
        "alice@relay.example",
        &["bob@_a.test", "carol@_a.test"],
        MESSAGE,
    )
    .await;
    assert_eq!(reply, "250 OK (HTTPS)");
    let requests = https.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.version, hyper::Version::HTTP_2, "h2 by ALPN");
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/mxdeliv");
    assert_eq!(
        request.authority,
        format!("mx._a.test:{}", https.addr.port())
    );
    assert_eq!(request.header("x-mail-from"), vec!["alice@relay.example"]);
    assert_eq!(
        request.header("x-mail-to"),
        vec!["bob@_a.test", "carol@_a.test"]
    );
    assert_eq!(request.body, STUFFED);
    assert!(smtp.sessions().is_empty(), "SMTP used after HTTPS success");
}

#[tokio::test]
async fn null_sender_has_no_mail_from_header() {
    let dns = dns_with("_null.test", "mx._null.test", &[ip(V4)]).await;
    let https = HttpsServer::start(ip(V4), 200).await;
    let delivery = delivery(&dns, https.addr.port(), support::free_port().await);
    let reply = deliver(&delivery, "", &["bob@_null.test"], MESSAGE).await;
    assert_eq!(reply, "250 OK (HTTPS)");
    let request = &https.requests()[0];
    assert!(request.header("x-mail-from").is_empty(), "{request:?}");
    assert_eq!(request.header("x-mail-to"), vec!["bob@_null.test"]);
}

#[tokio::test]
async fn ipv6_literal_is_bracketed_in_the_https_url() {
    let dns = DnsStub::start().await;
    let https = HttpsServer::start(ip("::1"), 200).await;
    let delivery = delivery(&dns, https.addr.port(), support::free_port().await);
    let reply = deliver(&delivery, "a@relay.example", &["bob@[IPv6:::1]"], MESSAGE).await;
    assert_eq!(reply, "250 OK (HTTPS)");
    assert_eq!(
        https.requests()[0].authority,
        format!("[::1]:{}", https.addr.port())
    );
}

/// HTTPS refusals and timeouts fall back to SMTP on the same host; after the SMTP
/// success that host is not asked over HTTPS again.
async fn https_failure_falls_back(domain: &str, status: u16, hang: bool) {
    let mx = format!("mx.{domain}");
    let dns = dns_with(domain, &mx, &[ip(V4)]).await;
    let https = HttpsServer::start(ip(V4), status).await;
    if hang {
        https.hang();
    }
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let mut settings = DeliverySettings::new("relay.example");
    settings.https_port = https.addr.port();
    settings.smtp_port = smtp.addr.port();
    settings.https_timeout = Duration::from_secs(1);
    let delivery = RemoteDelivery::with_resolver(settings, resolver_at(dns.addr).unwrap()).unwrap();
    let rcpt = format!("bob@{domain}");
    let reply = deliver(&delivery, "alice@relay.example", &[&rcpt], MESSAGE).await;
    assert_eq!(reply, "250 OK (SMTP)", "status {status}");
    assert_eq!(https.requests().len(), 1);
    let sessions = smtp.sessions();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].tls);
    assert_eq!(sessions[0].data, vec![STUFFED.to_vec()]);
    assert!(
        sessions[0]
            .commands
            .contains(&"EHLO relay.example".to_owned())
    );

    let reply = deliver(&delivery, "alice@relay.example", &[&rcpt], MESSAGE).await;
    assert_eq!(reply, "250 OK (SMTP)");
    assert_eq!(https.requests().len(), 1, "HTTPS asked again");
    assert_eq!(smtp.sessions().len(), 2);
}

#[tokio::test]
async fn https_404_falls_back_to_smtp_and_then_skips_https() {
    https_failure_falls_back("_h404.test", 404, false).await;
}

#[tokio::test]
async fn https_500_falls_back_to_smtp_and_then_skips_https() {
    https_failure_falls_back("_h500.test", 500, false).await;
}

#[tokio::test]
async fn https_timeout_falls_back_to_smtp_and_then_skips_https() {
    https_failure_falls_back("_hang.test", 200, true).await;
}

#[tokio::test]
async fn smtp_rejection_is_forwarded_on_one_line_and_the_next_mx_not_tried() {
    let dns = DnsStub::start().await;
    dns.mx("_rej.test", &[(20, "mx2._rej.test"), (10, "mx1._rej.test")]);
    dns.ip("mx1._rej.test", &[ip(V4)]);
    dns.ip("mx2._rej.test", &[ip("127.0.0.2")]);
    let mut script = Script::default();
    script.replies.insert(
        "RCPT",
        "550-5.1.1 No such user here\r\n550 5.1.1 see https://example.invalid/550".to_owned(),
    );
    let first = SmtpServer::start(ip(V4), 0, script).await;
    let port = first.addr.port();
    let second = SmtpServer::start(ip("127.0.0.2"), port, Script::default()).await;
    let https = HttpsServer::start(ip(V4), 404).await;
    let delivery = delivery(&dns, https.addr.port(), port);
    let reply = deliver(
        &delivery,
        "alice@relay.example",
        &["bob@_rej.test"],
        MESSAGE,
    )
    .await;
    assert_eq!(
        reply,
        format!(
            "550 5.1.1 No such user here 5.1.1 see https://example.invalid/550 (forwarded from mx1._rej.test[127.0.0.1:{port}])"
        )
    );
    assert!(
        second.sessions().is_empty(),
        "second MX tried after a rejection"
    );
    // Pipelined: DATA was accepted despite the refused RCPT, so only a lone "." followed.
    assert_eq!(first.sessions()[0].data, vec![Vec::<u8>::new()]);
}

#[tokio::test]
async fn pipelined_rcpt_failure_is_reported_and_a_lone_dot_ends_data() {
    let dns = dns_with("_pipe.test", "mx._pipe.test", &[ip(V4)]).await;
    let mut script = Script::default();
    script
        .replies
        .insert("RCPT", "450 4.2.1 mailbox busy".to_owned());
    script.rcpt_match = Some("carol".to_owned());
    let smtp = SmtpServer::start(ip(V4), 0, script).await;
    let delivery = delivery(&dns, support::free_port().await, smtp.addr.port());
    let reply = deliver(
        &delivery,
        "alice@relay.example",
        &["bob@_pipe.test", "carol@_pipe.test"],
        MESSAGE,
    )
    .await;
    let port = smtp.addr.port();
    assert_eq!(
        reply,
        format!("450 4.2.1 mailbox busy (forwarded from mx._pipe.test[127.0.0.1:{port}])")
    );
    let session = &smtp.sessions()[0];
    // DATA was accepted (this server does not check): the message sent is empty.
    assert_eq!(session.data, vec![Vec::<u8>::new()]);
}

#[tokio::test]
async fn lock_step_without_pipelining() {
    let dns = dns_with("_step.test", "mx._step.test", &[ip(V4)]).await;
    let script = Script {
        pipelining: false,
        ..Script::default()
    };
    let smtp = SmtpServer::start(ip(V4), 0, script).await;
    let delivery = delivery(&dns, support::free_port().await, smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@_step.test"], MESSAGE).await;
    assert_eq!(reply, "250 OK (SMTP)");
    let session = &smtp.sessions()[0];
    assert_eq!(
        &session.commands[..6],
        &[
            "EHLO relay.example",
            "STARTTLS",
            "EHLO relay.example",
            "MAIL FROM:<a@relay.example>",
            "RCPT TO:<b@_step.test>",
            "DATA"
        ]
    );
}

#[tokio::test]
async fn first_mx_refusing_connections_then_second_mx_used() {
    let dns = DnsStub::start().await;
    dns.mx("_two.test", &[(10, "mx1._two.test"), (20, "mx2._two.test")]);
    dns.ip("mx1._two.test", &[ip("127.0.0.3")]);
    dns.ip("mx2._two.test", &[ip(V4)]);
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let delivery = delivery(&dns, support::free_port().await, smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@_two.test"], MESSAGE).await;
    assert_eq!(reply, "250 OK (SMTP)");
    assert_eq!(smtp.sessions().len(), 1);
}

#[tokio::test]
async fn all_mx_refusing_connections_gives_421() {
    let dns = DnsStub::start().await;
    dns.mx(
        "_none.test",
        &[(10, "mx1._none.test"), (20, "mx2._none.test")],
    );
    dns.ip("mx1._none.test", &[ip("127.0.0.3")]);
    dns.ip("mx2._none.test", &[ip("127.0.0.4")]);
    let port = support::free_port().await;
    let delivery = delivery(&dns, port, port);
    let reply = deliver(&delivery, "a@relay.example", &["b@_none.test"], MESSAGE).await;
    assert_eq!(
        reply,
        format!(
            "421 Failed to connect to any mail server; last attempt to mx2._none.test: 450 Failed to connect to any of the following addresses: [\"127.0.0.4:{port}\"]"
        )
    );
}

#[tokio::test]
async fn server_without_starttls_gets_4xx_and_no_mail_command() {
    let dns = dns_with("_clear.test", "mx._clear.test", &[ip(V4)]).await;
    let script = Script {
        starttls: false,
        ..Script::default()
    };
    let smtp = SmtpServer::start(ip(V4), 0, script).await;
    let delivery = delivery(&dns, support::free_port().await, smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@_clear.test"], MESSAGE).await;
    assert!(reply.starts_with('4'), "{reply}");
    assert!(reply.contains("TLS is required"), "{reply}");
    let session = &smtp.sessions()[0];
    assert!(
        !session.commands.iter().any(|c| c.starts_with("MAIL")),
        "{session:?}"
    );
}

#[tokio::test]
async fn nauta_cu_gets_plaintext_smtp_even_with_starttls_offered() {
    let dns = dns_with("nauta.cu", "mx.nauta.cu", &[ip(V4)]).await;
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let https = HttpsServer::start(ip(V4), 200).await;
    let delivery = delivery(&dns, https.addr.port(), smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@nauta.cu"], MESSAGE).await;
    // The HTTPS server's self-signed certificate is not valid for mx.nauta.cu.
    assert_eq!(reply, "250 OK (SMTP)");
    assert!(https.requests().is_empty());
    let session = &smtp.sessions()[0];
    assert!(!session.tls);
    assert!(!session.commands.contains(&"STARTTLS".to_owned()));
    assert_eq!(session.data, vec![STUFFED.to_vec()]);
}

#[tokio::test]
async fn invalid_certificate_of_a_checked_name_fails_tls_with_4xx() {
    let dns = dns_with("checked.test", "mx.checked.test", &[ip(V4)]).await;
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let https = HttpsServer::start(ip(V4), 200).await;
    let delivery = delivery(&dns, https.addr.port(), smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@checked.test"], MESSAGE).await;
    assert_eq!(
        reply,
        "421 Failed to connect to any mail server; last attempt to mx.checked.test: 451 TLS error"
    );
    assert!(
        https.requests().is_empty(),
        "HTTPS request despite a bad certificate"
    );
    let session = &smtp.sessions()[0];
    assert!(!session.tls);
    assert!(!session.commands.iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn dns_outcomes_without_hosts() {
    let dns = DnsStub::start().await;
    dns.mx("_nullmx.test", &[(0, ".")]);
    dns.nxdomain("_nx.test");
    dns.servfail("_sf.test");
    let unused = support::free_port().await;
    let delivery = delivery(&dns, unused, unused);
    assert_eq!(
        deliver(&delivery, "a@relay.example", &["b@_nullmx.test"], MESSAGE).await,
        "556 5.1.10 Permanent failure: Recipient address has null MX"
    );
    assert_eq!(
        deliver(&delivery, "a@relay.example", &["b@_nx.test"], MESSAGE).await,
        "512 Domain _nx.test does not exist"
    );
    assert_eq!(
        deliver(&delivery, "a@relay.example", &["b@_sf.test"], MESSAGE).await,
        "421 DNS resolution failed for _sf.test"
    );
}

#[tokio::test]
async fn domain_without_mx_is_its_own_host() {
    let dns = DnsStub::start().await;
    dns.ip("_nomx.test", &[ip(V4)]);
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let https = HttpsServer::start(ip(V4), 500).await;
    let delivery = delivery(&dns, https.addr.port(), smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@_nomx.test"], MESSAGE).await;
    assert_eq!(reply, "250 OK (SMTP)");
    assert_eq!(
        https.requests()[0].authority,
        format!("_nomx.test:{}", https.addr.port())
    );
}

#[tokio::test]
async fn mx_hosts_are_tried_by_preference_then_name() {
    let dns = DnsStub::start().await;
    dns.mx(
        "_order.test",
        &[
            (20, "b._order.test"),
            (10, "z._order.test"),
            (10, "a._order.test"),
        ],
    );
    for host in ["a._order.test", "b._order.test", "z._order.test"] {
        dns.ip(host, &[ip(V4)]);
    }
    let https = HttpsServer::start(ip(V4), 500).await;
    // Nothing listens on the SMTP port: every host fails with a connection error.
    let port = support::free_port().await;
    let delivery = delivery(&dns, https.addr.port(), port);
    let reply = deliver(&delivery, "a@relay.example", &["b@_order.test"], MESSAGE).await;
    assert!(
        reply.starts_with(
            "421 Failed to connect to any mail server; last attempt to b._order.test: "
        ),
        "{reply}"
    );
    let asked: Vec<String> = https.requests().into_iter().map(|r| r.authority).collect();
    let https_port = https.addr.port();
    assert_eq!(
        asked,
        vec![
            format!("a._order.test:{https_port}"),
            format!("z._order.test:{https_port}"),
            format!("b._order.test:{https_port}"),
        ]
    );
}

#[tokio::test]
async fn parallel_dial_delivers_although_one_address_blackholes() {
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let port = smtp.addr.port();
    let _hole = blackhole(ip("127.0.0.2"), port).await;
    let dns = DnsStub::start().await;
    dns.mx("_hole.test", &[(10, "mx._hole.test")]);
    // The blackholed address first: a sequential dial would wait for its timeout (60 s).
    dns.ip("mx._hole.test", &[ip("127.0.0.2"), ip(V4)]);
    let delivery = delivery(&dns, support::free_port().await, port);
    let reply = deliver(&delivery, "a@relay.example", &["b@_hole.test"], MESSAGE).await;
    assert_eq!(reply, "250 OK (SMTP)");
    assert_eq!(smtp.sessions().len(), 1);
}

/// 1 MiB of text lines, many starting with dots.
fn big_message() -> Vec<u8> {
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    let mut n = 0u64;
    while data.len() < 1024 * 1024 {
        n += 1;
        let line = match n % 5 {
            0 => ".".to_owned(),
            1 => format!(".{n} leading dot"),
            2 => format!("..{n} two dots"),
            _ => format!("line {n} {}", "x".repeat((n % 70) as usize)),
        };
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    data
}

#[tokio::test]
async fn one_mib_message_arrives_byte_identical_over_both_channels() {
    let data = big_message();
    let dns = DnsStub::start().await;
    dns.mx("_bigh.test", &[(10, "mx._bigh.test")]);
    dns.ip("mx._bigh.test", &[ip(V4)]);
    dns.mx("_bigs.test", &[(10, "mx._bigs.test")]);
    dns.ip("mx._bigs.test", &[ip("127.0.0.2")]);
    let https = HttpsServer::start(ip(V4), 200).await;
    let smtp = SmtpServer::start(ip("127.0.0.2"), 0, Script::default()).await;
    let delivery = delivery(&dns, https.addr.port(), smtp.addr.port());

    let reply = deliver(&delivery, "a@relay.example", &["b@_bigh.test"], &data).await;
    assert_eq!(reply, "250 OK (HTTPS)");
    let body = &https.requests()[0].body;
    assert_eq!(unstuffed(body), data);
    assert!(body.len() > data.len());

    let reply = deliver(&delivery, "a@relay.example", &["b@_bigs.test"], &data).await;
    assert_eq!(reply, "250 OK (SMTP)");
    let received = &smtp.sessions()[0].data[0];
    assert_eq!(received, body, "SMTP and HTTPS wire forms differ");
    assert_eq!(unstuffed(received), data);
}

#[tokio::test]
async fn connection_error_puts_https_back_in_play() {
    let dns = dns_with("_back.test", "mx._back.test", &[ip(V4)]).await;
    let https = HttpsServer::start(ip(V4), 404).await;
    let smtp = SmtpServer::start(ip(V4), 0, Script::default()).await;
    let delivery = delivery(&dns, https.addr.port(), smtp.addr.port());
    let deliver_once = || deliver(&delivery, "a@relay.example", &["b@_back.test"], MESSAGE);
    assert_eq!(deliver_once().await, "250 OK (SMTP)");
    assert_eq!(https.requests().len(), 1);
    smtp.stop().await;
    // HTTPS skipped (SMTP worked last time), SMTP refused: the host leaves the cache.
    let reply = deliver_once().await;
    assert!(
        reply.starts_with(
            "421 Failed to connect to any mail server; last attempt to mx._back.test: 450 "
        ),
        "{reply}"
    );
    assert_eq!(https.requests().len(), 1);
    // So the next attempt asks HTTPS again.
    deliver_once().await;
    assert_eq!(https.requests().len(), 2);
}

#[tokio::test]
async fn bytes_after_the_starttls_reply_end_the_attempt() {
    let dns = dns_with("_inject.test", "mx._inject.test", &[ip(V4)]).await;
    let mut script = Script::default();
    script.replies.insert(
        "STARTTLS",
        "220 go ahead\r\n250 injected before the handshake".to_owned(),
    );
    let smtp = SmtpServer::start(ip(V4), 0, script).await;
    let delivery = delivery(&dns, support::free_port().await, smtp.addr.port());
    let reply = deliver(&delivery, "a@relay.example", &["b@_inject.test"], MESSAGE).await;
    assert_eq!(
        reply,
        "421 Failed to connect to any mail server; last attempt to mx._inject.test: 451 Local error"
    );
    let session = &smtp.sessions()[0];
    assert!(!session.tls);
    assert!(!session.commands.iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn system_setup_reads_resolv_conf_and_the_root_store() {
    let delivery = RemoteDelivery::system(DeliverySettings::new("relay.example"));
    assert!(delivery.is_ok(), "{delivery:?}");
}

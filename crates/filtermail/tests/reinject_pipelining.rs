//! Reinjection with PIPELINING (RFC 2920), against the SMTP sink as Postfix: MAIL, RCPT
//! and DATA go in one write when offered and never when not; a refused recipient is the
//! sender's answer and no message is left half-sent; the message data goes out gathered
//! from its slices, however many.

#![allow(clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use chatmail_filtermail::reinject::{ReinjectError, ReinjectTarget, reinject};

use support::eventually;
use support::sink::{Sink, SinkMode};

const TIMEOUT: Duration = Duration::from_secs(5);

const MESSAGE: &[u8] = b"From: alice@example.org\r\nSubject: hi\r\n\r\n.dot line\r\nbody\r\n";

async fn send(
    target: &ReinjectTarget,
    recipients: &[&str],
    data: &[u8],
) -> Result<(), ReinjectError> {
    let recipients: Vec<String> = recipients.iter().map(|r| (*r).to_owned()).collect();
    reinject(target, "alice@example.org", &recipients, data).await
}

#[tokio::test]
async fn commands_are_pipelined_when_offered() {
    let sink = Sink::start(SinkMode::Accept).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    for _ in 0..3 {
        send(&target, &["bob@example.org", "carol@example.org"], MESSAGE)
            .await
            .unwrap();
    }
    assert_eq!(sink.pipelined_mails(), 3);
    let received = sink.received();
    assert_eq!(received.len(), 3);
    for message in received {
        assert_eq!(message.mail_from, "<alice@example.org>");
        assert_eq!(
            message.rcpt_to,
            ["<bob@example.org>", "<carol@example.org>"]
        );
        assert_eq!(message.data, MESSAGE);
    }
}

#[tokio::test]
async fn commands_wait_for_each_reply_without_the_offer() {
    // This sink never answers a command that came with the next one already sent.
    let sink = Sink::start(SinkMode::NoPipelining).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    for _ in 0..2 {
        send(&target, &["bob@example.org", "carol@example.org"], MESSAGE)
            .await
            .unwrap();
    }
    assert_eq!(sink.pipelined_mails(), 0);
    assert_eq!(sink.received().len(), 2);
}

#[tokio::test]
async fn the_only_recipient_refused_is_the_senders_answer() {
    let sink = Sink::start(SinkMode::RefuseSomeRecipients).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    let err = send(&target, &["refused@example.org"], MESSAGE)
        .await
        .unwrap_err();
    assert_eq!(err.reply(), "550 5.1.1 No such user");
    assert!(sink.received().is_empty());
    // DATA was refused too (554), so the session could be ended politely.
    eventually("the connection said QUIT", || sink.quits() == 1).await;
    assert_eq!(target.idle_connections(), 0);
    // The next message goes over a new connection.
    send(&target, &["bob@example.org"], MESSAGE).await.unwrap();
    assert_eq!(sink.connections(), 2);
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn a_refused_recipient_among_accepted_ones_sends_nothing() {
    // DATA gets 354 for bob, while carol was refused: the sender must hear the refusal,
    // and no message may reach bob (the sender will retry, so that would duplicate it).
    let sink = Sink::start(SinkMode::RefuseSomeRecipients).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    let err = send(
        &target,
        &["bob@example.org", "refused@example.org"],
        MESSAGE,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reply(), "550 5.1.1 No such user");
    // The connection is dropped in the data phase without QUIT (which would be data).
    eventually("the connection closed", || sink.open() == 0).await;
    assert_eq!(sink.quits(), 0);
    assert!(sink.received().is_empty());
    assert_eq!(target.idle_connections(), 0);
}

#[tokio::test]
async fn a_message_of_thousands_of_slices_arrives_intact() {
    // Each line-start dot splits the wire form into another slice: far more than one
    // writev takes (IOV_MAX is 1024 on Linux).
    let sink = Sink::start(SinkMode::Accept).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    let mut message = b"From: alice@example.org\r\n\r\n".to_vec();
    for n in 0..5000 {
        message.extend_from_slice(format!(".line {n}\r\n").as_bytes());
    }
    message.extend_from_slice(b"no final line break");
    send(&target, &["bob@example.org"], &message).await.unwrap();
    let received = sink.received();
    let mut expected_data = message.clone();
    expected_data.extend_from_slice(b"\r\n");
    assert_eq!(received[0].data, expected_data);
    // RFC 5321 §4.5.2 written out: every line-start dot doubled, then the terminator.
    let mut expected_wire = Vec::new();
    for line in expected_data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            expected_wire.push(b'.');
        }
        expected_wire.extend_from_slice(line);
    }
    expected_wire.extend_from_slice(b".\r\n");
    assert_eq!(received[0].wire, expected_wire);
}

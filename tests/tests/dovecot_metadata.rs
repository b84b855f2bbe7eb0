//! Dovecot 2.3 with IMAP METADATA in chatmail-metadata and the Lua push hook on LMTP, as on
//! a chatmail relay: a device token set over IMAP is stored in upstream's metadata.json,
//! server keys are readable, and a delivered message makes a push reach the local HTTPS
//! gateway (chatmail-metadata verifies it against the CA in `notification_ca_file`).

use std::fs;
use std::time::Duration;

use chatmail_e2e::{Relay, poll_until};

const PASSWORD: &str = "correct-horse-9";

#[test]
fn device_token_server_keys_and_push_on_delivery() {
    let Some(relay) = Relay::start() else {
        return;
    };
    let user = relay.addr("pushme000");
    let mut imap = relay.imap();
    assert!(
        imap.login(&user, PASSWORD).unwrap().is_ok(),
        "{}",
        relay.logs()
    );

    let set = imap
        .command("SETMETADATA INBOX (/private/devicetoken \"token-of-device-1\")")
        .unwrap();
    assert!(set.is_ok(), "SETMETADATA: {set:?}\n{}", relay.logs());
    let get = imap
        .command("GETMETADATA INBOX /private/devicetoken")
        .unwrap();
    assert!(get.is_ok(), "{get:?}");
    // Values may come as IMAP literals, on the line after `{17}`.
    let text = get.untagged.join("\n");
    assert!(
        text.contains("/private/devicetoken") && text.contains("token-of-device-1"),
        "{get:?}"
    );
    let stored = fs::read_to_string(relay.maildir(&user).join("metadata.json"))
        .unwrap_or_else(|err| panic!("metadata.json: {err}\n{}", relay.logs()));
    assert!(stored.contains("\"devicetoken\""), "{stored}");
    assert!(stored.contains("token-of-device-1"), "{stored}");

    let iroh = imap
        .command("GETMETADATA \"\" /shared/vendor/deltachat/irohrelay")
        .unwrap();
    assert!(
        iroh.untagged.join("\n").contains("https://_chat.localhost"),
        "{iroh:?}\n{}",
        relay.logs()
    );
    let max = imap
        .command("GETMETADATA \"\" /shared/vendor/deltachat/maxsmtprecipients")
        .unwrap();
    assert!(max.untagged.join("\n").contains("1000"), "{max:?}");
    imap.logout().unwrap();

    // A message from someone else rings the device; one from the user themself (the hook
    // compares the From: header) does not.
    let from_self = format!("From: <{user}>\r\nSubject: [...]\r\n\r\nnote to self");
    let reply = relay.deliver(&user, &user, &from_self);
    assert!(reply.starts_with("250"), "{reply}");
    let message = "From: <sender000@_chat.localhost>\r\nSubject: [...]\r\n\r\nhello";
    let reply = relay.deliver("sender000@_chat.localhost", &user, message);
    assert!(reply.starts_with("250"), "{reply}");
    assert!(
        poll_until(Duration::from_secs(20), || !relay.pushes().is_empty()),
        "no push reached the gateway\n{}",
        relay.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.pushes(), ["token-of-device-1"], "{}", relay.logs());
    let queue = relay.mailboxes_dir().join("pending_notifications");
    assert!(
        poll_until(Duration::from_secs(10), || fs::read_dir(&queue)
            .map(|d| d.count() == 0)
            .unwrap_or(true)),
        "the delivered item leaves the queue"
    );
}

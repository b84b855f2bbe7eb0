//! Dovecot's quota with the quota-warning service of packaging/conf/dovecot/dovecot.conf:
//! a delivery that takes a mailbox past 75 % of `max_mailbox_size` runs
//! `chatmail-quota-expire`, which removes the oldest messages until the mailbox is below
//! 70 %. The relay's chatmail.ini sets a 10 MiB quota, from which the relay renders
//! Dovecot's `quota_rule` and `quota_warning`.

use std::fs::{self, File};
use std::os::unix::fs::chown;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatmail_e2e::{Relay, poll_until};

const MIB: u64 = 1024 * 1024;
/// `max_mailbox_size` of this test's chatmail.ini, in MiB.
const MAX_MAILBOX_SIZE_MB: u64 = 10;

#[test]
fn crossing_75_percent_expires_the_oldest_messages() {
    let ini = format!("max_mailbox_size = {MAX_MAILBOX_SIZE_MB}M\n");
    let Some(relay) = Relay::start_with_ini(&ini) else {
        return;
    };
    let addr = relay.addr("quota0001");
    assert!(
        relay.login(&addr, "correct-horse-9").is_ok(),
        "{}",
        relay.logs()
    );
    let cur = relay.maildir(&addr).join("cur");
    fs::create_dir_all(&cur).expect("cannot create cur/");
    let vmail = relay.vmail();
    chown(&cur, Some(vmail.uid.as_raw()), Some(vmail.gid.as_raw())).expect("chown cur/");

    // Old messages up to just below 75 % (named as Dovecot names delivered mail, with the
    // size in S=): 14 of 5 %, then one of 2.5 %, 72.5 % in all.
    let limit = MAX_MAILBOX_SIZE_MB * MIB;
    let piece = limit / 20;
    let mut sizes = vec![piece; 14];
    sizes.push(limit * 3 / 4 - 14 * piece - piece / 2);
    let old = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        - 3 * 86_400;
    let fillers: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let stamp = old + i as u64;
            let path = cur.join(format!("{stamp}.M{i}P1.filler,S={size},W={size}:2,S"));
            let header = format!("From: old@x\r\nSubject: old {i}\r\n\r\n");
            let body = "o".repeat(usize::try_from(*size).expect("size") - header.len());
            fs::write(&path, header + &body).expect("cannot write a filler");
            let file = File::options().write(true).open(&path).expect("filler");
            file.set_modified(UNIX_EPOCH + Duration::from_secs(stamp))
                .expect("cannot date a filler");
            chown(&path, Some(vmail.uid.as_raw()), Some(vmail.gid.as_raw())).expect("chown");
            path
        })
        .collect();
    let recalc = relay.doveadm(&["quota", "recalc", "-u", &addr]);
    assert!(recalc.status.success(), "doveadm quota recalc: {recalc:?}");
    assert!(fillers.iter().all(|path| path.exists()), "{}", relay.logs());

    let used = quota_used(&relay, &addr);
    assert!(
        limit * 7 / 10 < used && used < limit * 3 / 4,
        "the old messages fill {used} of {limit} bytes, not 70-75 %"
    );

    // A 5 % delivery crosses 75 %: Dovecot runs chatmail-quota-expire 7 MAILDIR, which
    // removes the two oldest messages (5 % each) to get below 7 MiB (70 %).
    let line = "x".repeat(76);
    let body: String = (0..(piece as usize / 78))
        .map(|_| format!("{line}\r\n"))
        .collect();
    let message = format!("From: <someone@x>\r\nSubject: [...]\r\n\r\n{body}");
    let reply = relay.deliver("someone@x", &addr, &message);
    assert!(reply.starts_with("250"), "{reply}\n{}", relay.logs());

    let [first, second, rest @ ..] = fillers.as_slice() else {
        panic!("15 fillers");
    };
    assert!(
        poll_until(Duration::from_secs(30), || !first.exists()
            && !second.exists()),
        "the oldest messages were not expired\n{}",
        relay.logs()
    );
    assert!(
        rest.iter().all(|path| path.exists()),
        "more than needed removed"
    );
    // Its summary (stderr, which Dovecot logs) is the line mtail counts on a relay.
    let summary = format!("quota-expire: removed 2 message(s) from {addr}");
    assert!(
        poll_until(Duration::from_secs(10), || relay
            .dovecot_log()
            .contains(&summary)),
        "no {summary:?} in the log\n{}",
        relay.logs()
    );
}

/// The storage `addr` uses, in bytes, as Dovecot's quota counts it.
fn quota_used(relay: &Relay, addr: &str) -> u64 {
    let output = relay.doveadm(&["quota", "get", "-u", addr]);
    assert!(output.status.success(), "doveadm quota get: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.contains("STORAGE"))
        .unwrap_or_else(|| panic!("no STORAGE quota: {text}"));
    // `User quota STORAGE <value KiB> <limit KiB> <percent>`
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [.., value, limit, _percent] = fields.as_slice() else {
        panic!("{line}");
    };
    assert_eq!(
        *limit,
        (MAX_MAILBOX_SIZE_MB * 1024).to_string(),
        "the quota is chatmail.ini's max_mailbox_size: {line}"
    );
    value.parse::<u64>().expect("quota value") * 1024
}

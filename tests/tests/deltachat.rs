//! The real Delta Chat client (deltachat-rpc-server and deltachat-rpc-client from PyPI, in
//! the venv scripts/install-deps makes) against the loopback relay: Postfix with filtermail,
//! Dovecot with doveauth, lastlogin and chatmail-metadata, and the local push gateway.
//!
//! Each test starts a relay with the chatmail.ini lines its scenario needs, writes the
//! relay's parameters to a JSON file, and runs one scenario of tests/deltachat/scenarios.py
//! on it; the scenario asserts on what the client shows and on the relay's files, and its
//! output is streamed here, prefixed with its name. Accounts reach the client as `dclogin:`
//! URLs made by [`chatmail_e2e::dclogin`], so each scenario also proves them.
//!
//! The client connects as to a chatmail relay on an underscore domain: IMAPS and
//! submissions with the relay's self-signed certificate (`is=ssl`, `ss=ssl`, `ic=2`).
//! Postfix requires TLS on every SMTP port, as on the loopback relay, so the raw SMTP
//! sessions of the scenarios use TLS too.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatmail_e2e::binaries::workspace_root;
use chatmail_e2e::deltachat::{
    Account, json_path, json_str, rpc_server, servers, spawn_scenario, start, stream, wait,
};
use chatmail_e2e::host::DOVEADM;
use chatmail_e2e::{DOMAIN, MailRelay, poll_until};

/// The scenarios, relative to the workspace root.
const SCENARIOS: &str = "tests/deltachat/scenarios.py";
/// How long one scenario may run before it is killed; each of its own waits is shorter.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);
/// A password with every character a URL or a form decoder could take for syntax.
const TRICKY_PASSWORD: &str = "dc+login &=%?/#pass-9";
const PASSWORD: &str = "correct-horse-9";

/// Writes the relay's parameters (and `extra`, `"key": value` JSON members) and runs
/// `scenario` on them; panics with its output and the relay's logs unless it exits 0.
fn run(python: &Path, mail: &MailRelay, scenario: &str, accounts: &[Account], extra: &str) {
    let relay = mail.relay();
    let vmail = relay.vmail();
    let (imap, smtp) = servers(mail);
    let accounts_json: Vec<String> = accounts.iter().map(Account::json).collect();
    let root = workspace_root();
    let params = format!(
        "{{\n\
         \"scenario\": {scenario},\n\
         \"domain\": {domain},\n\
         \"host\": \"127.0.0.1\",\n\
         \"imap_port\": {imap},\n\
         \"imap_security\": {imap_security},\n\
         \"submission_port\": {submission},\n\
         \"smtp_security\": {smtp_security},\n\
         \"smtp_port\": {smtp},\n\
         \"mailboxes_dir\": {mailboxes},\n\
         \"dovecot_conf\": {dovecot_conf},\n\
         \"doveadm\": {doveadm},\n\
         \"vmail_uid\": {uid},\n\
         \"vmail_gid\": {gid},\n\
         \"rpc_server\": {rpc_server},\n\
         \"accounts_dir\": {accounts_dir},\n\
         \"accounts\": [{accounts}]{extra}\n\
         }}\n",
        scenario = json_str(scenario),
        domain = json_str(DOMAIN),
        imap = imap.port,
        imap_security = json_str(imap.security.as_str()),
        submission = smtp.port,
        smtp_security = json_str(smtp.security.as_str()),
        smtp = mail.smtp_addr().port(),
        mailboxes = json_path(relay.mailboxes_dir()),
        dovecot_conf = json_path(&relay.path("dovecot.conf")),
        doveadm = json_str(DOVEADM),
        uid = vmail.uid.as_raw(),
        gid = vmail.gid.as_raw(),
        rpc_server = json_path(&rpc_server()),
        accounts_dir = json_path(&relay.path("deltachat-accounts")),
        accounts = accounts_json.join(", "),
        extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",\n{extra}")
        },
    );
    let params_path = relay.path("deltachat-params.json");
    std::fs::write(&params_path, params).expect("cannot write the scenario parameters");

    let mut child = spawn_scenario(python, &root.join(SCENARIOS), &params_path, &relay.path(""));
    let output = Arc::new(Mutex::new(String::new()));
    let readers = [
        stream(child.stdout.take(), scenario, &output, |_| {}),
        stream(child.stderr.take(), scenario, &output, |_| {}),
    ];
    let status = wait(&mut child, SCENARIO_TIMEOUT);
    for reader in readers {
        let _ = reader.join();
    }
    let output = output.lock().map(|o| o.clone()).unwrap_or_default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "scenario {scenario} failed ({status}):\n{output}\n{}",
            mail.logs()
        ),
        None => panic!(
            "scenario {scenario} did not end within {SCENARIO_TIMEOUT:?}:\n{output}\n{}",
            mail.logs()
        ),
    }
}

#[test]
fn dclogin_accounts_are_created_on_first_login() {
    let Some((python, mail)) = start("") else {
        return;
    };
    let accounts = [
        Account::new(&mail, "dclogin01", TRICKY_PASSWORD),
        Account::new(&mail, "dclogin02", PASSWORD),
    ];
    run(&python, &mail, "dclogin", &accounts, "");
    let doveauth = mail.relay().doveauth_log();
    for account in &accounts {
        let created = format!("Created address: {}", account.addr);
        assert!(doveauth.contains(&created), "{}", mail.logs());
    }
}

#[test]
fn securejoin_then_encrypted_text_and_files_both_ways() {
    let Some((python, mail)) = start("") else {
        return;
    };
    let accounts = [
        Account::new(&mail, "sjalice01", PASSWORD),
        Account::new(&mail, "sjbob0001", PASSWORD),
    ];
    run(&python, &mail, "securejoin", &accounts, "");
    assert!(
        mail.filtermail_log()
            .contains("Outgoing: Filtering encrypted mail."),
        "{}",
        mail.logs()
    );
}

#[test]
fn plain_message_by_raw_smtp_is_refused_with_523() {
    let Some((python, mail)) = start("") else {
        return;
    };
    let accounts = [
        Account::new(&mail, "plalice01", PASSWORD),
        Account::new(&mail, "plbob0001", PASSWORD),
    ];
    run(&python, &mail, "plain_refused", &accounts, "");
}

/// One message a minute after a burst of this many.
const BURST: u32 = 6;

#[test]
fn messages_past_the_burst_are_rate_limited() {
    let ini = format!("max_user_send_per_minute = 1\nmax_user_send_burst_size = {BURST}\n");
    let Some((python, mail)) = start(&ini) else {
        return;
    };
    let accounts = [
        Account::new(&mail, "rlalice01", PASSWORD),
        Account::new(&mail, "rlbob0001", PASSWORD),
    ];
    let extra = format!("\"burst\": {BURST},\n\"per_minute\": 1");
    run(&python, &mail, "rate_limit", &accounts, &extra);
    let refused = format!("Too much mail from {}", accounts[0].addr);
    assert!(mail.postfix_log().contains(&refused), "{}", mail.logs());
}

#[test]
fn wrong_password_is_refused() {
    let Some((python, mail)) = start("") else {
        return;
    };
    let accounts = [
        Account::new(&mail, "wpowner01", PASSWORD),
        Account::new(&mail, "wpowner01", "wrong-horse-9"),
    ];
    run(&python, &mail, "wrong_password", &accounts, "");
    assert!(
        mail.relay().dovecot_log().contains("auth failed")
            || mail.relay().dovecot_log().contains("Password mismatch"),
        "{}",
        mail.logs()
    );
}

#[test]
fn device_token_is_stored_and_delivery_pushes() {
    let Some((python, mail)) = start("") else {
        return;
    };
    let accounts = [
        Account::new(&mail, "pualice01", PASSWORD),
        Account::new(&mail, "pubob0001", PASSWORD),
    ];
    let token = "openpgp:e2e-device-token-1";
    let extra = format!("\"push_token\": {}", json_str(token));
    run(&python, &mail, "push", &accounts, &extra);
    let relay = mail.relay();
    assert!(
        poll_until(Duration::from_secs(20), || relay
            .pushes()
            .iter()
            .any(|body| body == token)),
        "no push with the token reached the gateway: {:?}\n{}",
        relay.pushes(),
        mail.logs()
    );
}

/// `max_mailbox_size` of the quota scenario's relay: small, so that filling it is quick.
const QUOTA_MB: u32 = 10;

#[test]
fn quota_warning_expires_the_oldest_messages() {
    let Some((python, mail)) = start(&format!("max_mailbox_size = {QUOTA_MB}M\n")) else {
        return;
    };
    let accounts = [
        Account::new(&mail, "qualice01", PASSWORD),
        Account::new(&mail, "qubob0001", PASSWORD),
    ];
    let extra = format!("\"max_mailbox_size_mb\": {QUOTA_MB}");
    run(&python, &mail, "quota", &accounts, &extra);
}

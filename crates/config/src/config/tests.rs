use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/x/chatmail.ini";

/// A `[params]` section with `mail_domain` and the given extra lines.
fn params(domain: &str, extra: &str) -> String {
    format!("[params]\nmail_domain = {domain}\n{extra}")
}

fn parse_text(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

/// Parses a file for `chat.example.org` with the given extra lines.
fn parse(extra: &str) -> Config {
    let text = params("chat.example.org", extra);
    match parse_text(&text) {
        Ok(config) => config,
        Err(e) => panic!("{text:?}: {e}"),
    }
}

fn parse_domain(domain: &str) -> Config {
    let text = params(domain, "");
    match parse_text(&text) {
        Ok(config) => config,
        Err(e) => panic!("{text:?}: {e}"),
    }
}

/// The error message for a whole file.
fn text_error(text: &str) -> String {
    match parse_text(text) {
        Ok(config) => panic!("{text:?} loaded: {config:?}"),
        Err(e) => e.to_string(),
    }
}

/// The error message for a file for `chat.example.org` with the given extra lines.
fn error(extra: &str) -> String {
    text_error(&params("chat.example.org", extra))
}

/// Writes `text` as `chatmail.ini` into `dir`, for the `load` tests.
fn write_ini(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("chatmail.ini");
    std::fs::write(&path, text).expect("write chatmail.ini");
    path
}

#[test]
fn defaults() {
    let c = parse("");
    assert_eq!(c.path, Path::new(FILE));
    assert_eq!(c.mail_domain, "chat.example.org");
    assert_eq!(c.mail_domain_bare, "chat.example.org");
    assert_eq!(c.ipv4_relay, None);
    assert_eq!(c.postfix_myhostname, "chat.example.org");
    assert_eq!(c.max_user_send_per_minute, 60);
    assert_eq!(c.max_user_send_burst_size, 10);
    assert_eq!(c.max_mailbox_size, "500M");
    assert_eq!(c.max_mailbox_size_mb, 500);
    assert_eq!(c.max_message_size, 31_457_280);
    assert_eq!(c.delete_mails_after, "20");
    assert_eq!(c.delete_large_after, "7");
    assert_eq!(c.delete_mails_after_days().ok(), Some(20));
    assert_eq!(c.delete_large_after_days().ok(), Some(7));
    assert_eq!(c.delete_inactive_users_after, 90);
    assert_eq!(c.username_min_length, 9);
    assert_eq!(c.username_max_length, 9);
    assert_eq!(c.password_min_length, 9);
    assert!(c.passthrough_senders.is_empty());
    assert!(c.passthrough_recipients.is_empty());
    assert!(!c.tmpfs_index);
    assert_eq!(c.www_folder, "");
    assert_eq!(c.filtermail_smtp_port, 10080);
    assert_eq!(c.filtermail_smtp_port_incoming, 10081);
    assert_eq!(c.filtermail_http_port_incoming, 10082);
    assert_eq!(c.filtermail_lmtp_port_transport, 10083);
    assert_eq!(c.filtermail_transport_smtp_port, 25);
    assert_eq!(c.filtermail_transport_https_port, 443);
    assert_eq!(c.postfix_reinject_port, 10025);
    assert_eq!(c.postfix_reinject_port_incoming, 10026);
    assert_eq!(c.mtail_address, None);
    assert!(!c.disable_ipv6);
    assert_eq!(c.acme_email, "");
    assert!(!c.imap_rawlog);
    assert!(!c.imap_compress);
    assert_eq!(
        c.turn_socket_path,
        Path::new("/run/chatmail-turn/turn.socket")
    );
    assert_eq!(c.iroh_relay, "https://chat.example.org");
    assert!(c.enable_iroh_relay);
    assert_eq!(
        c.notification_url,
        "https://notifications.delta.chat/notify"
    );
    assert_eq!(c.notification_url, DEFAULT_NOTIFICATION_URL);
    assert_eq!(c.notification_ca_file, None);
    assert_eq!(c.privacy_postal, None);
    assert_eq!(c.privacy_mail, None);
    assert_eq!(c.privacy_pdo, None);
    assert_eq!(c.privacy_supervisor, None);
    assert!((c.max_load_1m - 5.0).abs() < f64::EPSILON);
    assert_eq!(c.min_available_memory, "200M");
    assert_eq!(c.min_available_memory_mb, 200);
    assert_eq!(c.min_free_disk_space, "1G");
    assert_eq!(c.min_free_disk_space_mb, 1024);
    assert_eq!(c.max_imap_connections, 10_000);
    assert_eq!(c.max_smtp_connections, 1000);
    assert_eq!(c.tls_external_cert_and_key, "");
    assert_eq!(c.tls_cert_mode, TlsCertMode::Acme);
    assert_eq!(
        c.tls_cert_path,
        Path::new("/var/lib/acme/live/chat.example.org/fullchain")
    );
    assert_eq!(
        c.tls_key_path,
        Path::new("/var/lib/acme/live/chat.example.org/privkey")
    );
    assert_eq!(
        c.mailboxes_dir,
        Path::new("/home/vmail/mail/chat.example.org")
    );
    assert_eq!(c.passdb_path, Path::new("/home/vmail/passdb.sqlite"));
    assert_eq!(c.nocreate_file, Path::new("/etc/chatmail-nocreate"));
    assert!(c.unknown_keys.is_empty());
    assert!(c.warnings().is_empty());
}

#[test]
fn every_key_can_be_set() {
    let c = parse(
        "max_user_send_per_minute = 61
max_user_send_burst_size = 11
max_mailbox_size = 2G
max_message_size = 1000
delete_mails_after = 21
delete_large_after = 8
delete_inactive_users_after = 91
username_min_length = 6
username_max_length = 10
password_min_length = 12
passthrough_senders = a@x.org  b@x.org
passthrough_recipients = @y.org
tmpfs_index = true
www_folder = /var/www/extra
filtermail_smtp_port = 1
filtermail_smtp_port_incoming = 2
filtermail_http_port_incoming = 3
filtermail_lmtp_port_transport = 4
filtermail_transport_smtp_port = 2525
filtermail_transport_https_port = 8443
postfix_reinject_port = 5
postfix_reinject_port_incoming = 65535
mtail_address = 127.0.0.1
disable_ipv6 = True
acme_email = admin@example.org
imap_rawlog = TRUE
imap_compress = true
turn_socket_path = /tmp/turn.socket
iroh_relay = https://iroh.example.org
privacy_postal = Street 1
privacy_mail = privacy@example.org
privacy_pdo = Someone
privacy_supervisor = Authority
max_load_1m = 2.5
min_available_memory = 300M
min_free_disk_space = 2G
max_imap_connections = 50000
max_smtp_connections = 5000
tls_external_cert_and_key = /c.pem /k.pem
mailboxes_dir = /tmp/mailboxes
passdb_path = /tmp/passdb.sqlite
nocreate_file = /tmp/nocreate
",
    );
    assert_eq!(c.max_user_send_per_minute, 61);
    assert_eq!(c.max_user_send_burst_size, 11);
    assert_eq!(c.max_mailbox_size, "2G");
    assert_eq!(c.max_mailbox_size_mb, 2048);
    assert_eq!(c.max_message_size, 1000);
    assert_eq!(c.delete_mails_after, "21");
    assert_eq!(c.delete_large_after, "8");
    assert_eq!(c.delete_mails_after_days().ok(), Some(21));
    assert_eq!(c.delete_large_after_days().ok(), Some(8));
    assert_eq!(c.delete_inactive_users_after, 91);
    assert_eq!(c.username_min_length, 6);
    assert_eq!(c.username_max_length, 10);
    assert_eq!(c.password_min_length, 12);
    assert_eq!(c.passthrough_senders, ["a@x.org", "b@x.org"]);
    assert_eq!(c.passthrough_recipients, ["@y.org"]);
    assert!(c.tmpfs_index);
    assert_eq!(c.www_folder, "/var/www/extra");
    assert_eq!(c.filtermail_smtp_port, 1);
    assert_eq!(c.filtermail_smtp_port_incoming, 2);
    assert_eq!(c.filtermail_http_port_incoming, 3);
    assert_eq!(c.filtermail_lmtp_port_transport, 4);
    assert_eq!(c.filtermail_transport_smtp_port, 2525);
    assert_eq!(c.filtermail_transport_https_port, 8443);
    assert_eq!(c.postfix_reinject_port, 5);
    assert_eq!(c.postfix_reinject_port_incoming, 65535);
    assert_eq!(c.mtail_address.as_deref(), Some("127.0.0.1"));
    assert!(c.disable_ipv6);
    assert_eq!(c.acme_email, "admin@example.org");
    assert!(c.imap_rawlog);
    assert!(c.imap_compress);
    assert_eq!(c.turn_socket_path, Path::new("/tmp/turn.socket"));
    assert_eq!(c.iroh_relay, "https://iroh.example.org");
    assert!(!c.enable_iroh_relay);
    assert_eq!(c.privacy_postal.as_deref(), Some("Street 1"));
    assert_eq!(c.privacy_mail.as_deref(), Some("privacy@example.org"));
    assert_eq!(c.privacy_pdo.as_deref(), Some("Someone"));
    assert_eq!(c.privacy_supervisor.as_deref(), Some("Authority"));
    assert!((c.max_load_1m - 2.5).abs() < f64::EPSILON);
    assert_eq!(c.min_available_memory, "300M");
    assert_eq!(c.min_available_memory_mb, 300);
    assert_eq!(c.min_free_disk_space, "2G");
    assert_eq!(c.min_free_disk_space_mb, 2048);
    assert_eq!(c.max_imap_connections, 50000);
    assert_eq!(c.max_smtp_connections, 5000);
    assert_eq!(c.tls_external_cert_and_key, "/c.pem /k.pem");
    assert_eq!(c.tls_cert_mode, TlsCertMode::External);
    assert_eq!(c.tls_cert_path, Path::new("/c.pem"));
    assert_eq!(c.tls_key_path, Path::new("/k.pem"));
    assert_eq!(c.mailboxes_dir, Path::new("/tmp/mailboxes"));
    assert_eq!(c.passdb_path, Path::new("/tmp/passdb.sqlite"));
    assert_eq!(c.nocreate_file, Path::new("/tmp/nocreate"));
    assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

const UINT_KEYS: &[&str] = &[
    "max_user_send_per_minute",
    "max_user_send_burst_size",
    "max_message_size",
    "delete_inactive_users_after",
    "username_min_length",
    "username_max_length",
    "password_min_length",
    "max_imap_connections",
    "max_smtp_connections",
];

const PORT_KEYS: &[&str] = &[
    "filtermail_smtp_port",
    "filtermail_smtp_port_incoming",
    "filtermail_http_port_incoming",
    "filtermail_lmtp_port_transport",
    "filtermail_transport_smtp_port",
    "filtermail_transport_https_port",
    "postfix_reinject_port",
    "postfix_reinject_port_incoming",
];

const BOOL_KEYS: &[&str] = &[
    "tmpfs_index",
    "disable_ipv6",
    "imap_rawlog",
    "imap_compress",
];

#[test]
fn integer_keys_reject_non_integers() {
    for key in UINT_KEYS.iter().chain(PORT_KEYS) {
        for value in ["abc", "1.5", "10k", ""] {
            assert_eq!(
                error(&format!("{key} = {value}\n")),
                format!("{FILE}: key '{key}' has value '{value}', expected an integer")
            );
        }
    }
}

#[test]
fn integer_keys_reject_negative_values() {
    for key in UINT_KEYS.iter().chain(PORT_KEYS) {
        assert_eq!(
            error(&format!("{key} = -1\n")),
            format!("{FILE}: key '{key}' has value '-1', expected a non-negative integer")
        );
    }
}

#[test]
fn integer_keys_accept_python_int_forms() {
    let c = parse(
        "max_user_send_per_minute = +7\nmax_smtp_connections = 1_000\nusername_min_length = 007\n",
    );
    assert_eq!(c.max_user_send_per_minute, 7);
    assert_eq!(c.max_smtp_connections, 1000);
    assert_eq!(c.username_min_length, 7);
}

#[test]
fn ports_must_fit_u16() {
    for key in PORT_KEYS {
        assert_eq!(
            error(&format!("{key} = 65536\n")),
            format!(
                "{FILE}: key '{key}' has value '65536', expected an integer not larger than 65535"
            )
        );
    }
    assert_eq!(parse("filtermail_smtp_port = 0\n").filtermail_smtp_port, 0);
}

#[test]
fn u32_and_u64_overflow_is_an_error() {
    assert_eq!(
        error("max_user_send_per_minute = 4294967296\n"),
        format!(
            "{FILE}: key 'max_user_send_per_minute' has value '4294967296', expected an integer not larger than 4294967295"
        )
    );
    let huge = "9".repeat(50);
    let e = error(&format!("max_message_size = {huge}\n"));
    assert!(
        e.ends_with("expected an integer not larger than 18446744073709551615"),
        "{e}"
    );
}

#[test]
fn bool_keys_true_only_for_true() {
    for key in BOOL_KEYS {
        for (value, expected) in [
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("yes", false),
            ("1", false),
            ("on", false),
            ("false", false),
            ("", false),
            ("true # comment", false),
        ] {
            let c = parse(&format!("{key} = {value}\n"));
            let got = match *key {
                "tmpfs_index" => c.tmpfs_index,
                "disable_ipv6" => c.disable_ipv6,
                "imap_rawlog" => c.imap_rawlog,
                "imap_compress" => c.imap_compress,
                other => panic!("unexpected key {other}"),
            };
            assert_eq!(got, expected, "{key} = {value}");
        }
    }
}

#[test]
fn max_load_1m_is_a_float() {
    for (value, expected) in [("5", 5.0), ("5.0", 5.0), (" -1.0 ", -1.0), ("0.25", 0.25)] {
        let c = parse(&format!("max_load_1m = {value}\n"));
        assert!((c.max_load_1m - expected).abs() < f64::EPSILON, "{value}");
    }
    for value in ["abc", "nan", "inf", "5 # five"] {
        assert_eq!(
            error(&format!("max_load_1m = {value}\n")),
            format!("{FILE}: key 'max_load_1m' has value '{value}', expected a finite number")
        );
    }
}

#[test]
fn size_keys() {
    let c =
        parse("max_mailbox_size = 1g\nmin_available_memory = 100MB\nmin_free_disk_space = 256\n");
    assert_eq!(c.max_mailbox_size, "1g");
    assert_eq!(c.max_mailbox_size_mb, 1024);
    assert_eq!(c.min_available_memory, "100MB");
    assert_eq!(c.min_available_memory_mb, 100);
    assert_eq!(c.min_free_disk_space, "256");
    assert_eq!(c.min_free_disk_space_mb, 256);
}

#[test]
fn bad_size_is_a_load_error_for_every_size_key() {
    // Including max_mailbox_size, which upstream only checks when it is first used.
    for key in [
        "max_mailbox_size",
        "min_available_memory",
        "min_free_disk_space",
    ] {
        assert_eq!(
            error(&format!("{key} = 1.5G\n")),
            format!(
                "{FILE}: key '{key}' has value '1.5G', expected a whole number of MiB with optional suffix M or G (like 500M or 2G)"
            )
        );
    }
}

#[test]
fn delete_days_stay_strings_and_convert_on_demand() {
    let c = parse("delete_mails_after = abc\ndelete_large_after = -3\n");
    assert_eq!(c.delete_mails_after, "abc");
    assert_eq!(c.delete_large_after, "-3");
    let mails = c.delete_mails_after_days().unwrap_err();
    assert_eq!(
        mails.to_string(),
        format!("{FILE}: key 'delete_mails_after' has value 'abc', expected an integer")
    );
    assert_eq!(mails.key(), Some("delete_mails_after"));
    assert_eq!(
        c.delete_large_after_days().unwrap_err().to_string(),
        format!("{FILE}: key 'delete_large_after' has value '-3', expected a non-negative integer")
    );
    assert_eq!(
        c.warnings(),
        [
            format!(
                "{FILE}: key 'delete_mails_after' has value 'abc', expected an integer; expiry will fail until this is fixed"
            ),
            format!(
                "{FILE}: key 'delete_large_after' has value '-3', expected a non-negative integer; expiry will fail until this is fixed"
            ),
        ]
    );
    assert_eq!(
        parse("delete_mails_after = 0\n")
            .delete_mails_after_days()
            .ok(),
        Some(0)
    );
}

#[test]
fn passthrough_lists_split_on_blanks() {
    let c = parse("passthrough_senders =\npassthrough_recipients =   a@x.org \t @y.org  \n");
    assert!(c.passthrough_senders.is_empty());
    assert_eq!(c.passthrough_recipients, ["a@x.org", "@y.org"]);
    let c = parse("passthrough_recipients = a@x.org\n  b@x.org\n");
    assert_eq!(c.passthrough_recipients, ["a@x.org", "b@x.org"]);
}

#[test]
fn optional_strings_present_but_empty() {
    let c = parse("mtail_address =\nprivacy_mail =\n");
    assert_eq!(c.mtail_address.as_deref(), Some(""));
    assert_eq!(c.privacy_mail.as_deref(), Some(""));
    assert_eq!(c.privacy_pdo, None);
}

#[test]
fn continuation_lines_make_multi_line_values() {
    let c = parse(
        "privacy_postal =\n    Merlinux GmbH\n    Reichgrafen Str. 20\n\n    79102 Freiburg\n",
    );
    assert_eq!(
        c.privacy_postal.as_deref(),
        Some("Merlinux GmbH\nReichgrafen Str. 20\n79102 Freiburg")
    );
}

#[test]
fn colon_syntax_is_accepted() {
    let c = parse_text("[params]\nmail_domain: chat.example.org\nmax_user_send_per_minute: 5\n")
        .expect("loads");
    assert_eq!(c.mail_domain, "chat.example.org");
    assert_eq!(c.max_user_send_per_minute, 5);
}

#[test]
fn inline_comments_are_part_of_the_value() {
    assert_eq!(
        error("max_user_send_per_minute = 5 # five\n"),
        format!("{FILE}: key 'max_user_send_per_minute' has value '5 # five', expected an integer")
    );
    let c = parse("acme_email = a@example.org # admin\nmtail_address = 127.0.0.1 ; local\n");
    assert_eq!(c.acme_email, "a@example.org # admin");
    assert_eq!(c.mtail_address.as_deref(), Some("127.0.0.1 ; local"));
}

#[test]
fn path_keys() {
    let c = parse("mailboxes_dir =  /tmp/m  \nnocreate_file = relative/nocreate\n");
    assert_eq!(c.mailboxes_dir, Path::new("/tmp/m"));
    assert_eq!(c.nocreate_file, Path::new("relative/nocreate"));
    for key in [
        "mailboxes_dir",
        "passdb_path",
        "nocreate_file",
        "turn_socket_path",
    ] {
        assert_eq!(
            error(&format!("{key} =\n")),
            format!("{FILE}: key '{key}' has value '', expected a non-empty path")
        );
    }
}

#[test]
fn ipv4_relay() {
    let c = parse_domain("1.3.3.7");
    assert_eq!(c.mail_domain, "[1.3.3.7]");
    assert_eq!(c.mail_domain_bare, "1.3.3.7");
    assert_eq!(c.ipv4_relay, Some(Ipv4Addr::new(1, 3, 3, 7)));
    assert_eq!(c.postfix_myhostname, "7.3.3.1.in-addr.arpa");
    assert_eq!(c.mailboxes_dir, Path::new("/home/vmail/mail/1.3.3.7"));
    assert_eq!(c.iroh_relay, "https://1.3.3.7");
    assert!(c.enable_iroh_relay);
    assert_eq!(c.tls_cert_mode, TlsCertMode::SelfSigned);
    assert_eq!(c.tls_cert_path, Path::new("/etc/ssl/certs/mailserver.pem"));
    assert_eq!(c.tls_key_path, Path::new("/etc/ssl/private/mailserver.key"));
}

#[test]
fn not_ipv4_literals() {
    for domain in [
        "12394142",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.4.",
        "+1.2.3.4",
        "::1",
    ] {
        let c = parse_domain(domain);
        assert_eq!(c.ipv4_relay, None, "{domain}");
        assert_eq!(c.mail_domain, domain);
        assert_eq!(c.mail_domain_bare, domain);
        assert_eq!(c.postfix_myhostname, domain);
        assert_eq!(c.tls_cert_mode, TlsCertMode::Acme, "{domain}");
    }
}

#[test]
fn underscore_domain_uses_self_signed_certificate() {
    let c = parse_domain("_test.example.org");
    assert_eq!(c.tls_cert_mode, TlsCertMode::SelfSigned);
    assert_eq!(c.tls_cert_mode.as_str(), "self");
    assert_eq!(c.tls_cert_path, Path::new("/etc/ssl/certs/mailserver.pem"));
    assert_eq!(c.tls_key_path, Path::new("/etc/ssl/private/mailserver.key"));
    assert_eq!(c.mail_domain, "_test.example.org");
}

#[test]
fn acme_certificate_paths() {
    let c = parse_domain("c.example.org");
    assert_eq!(c.tls_cert_mode, TlsCertMode::Acme);
    assert_eq!(c.tls_cert_mode.as_str(), "acme");
    assert_eq!(
        c.tls_cert_path,
        Path::new("/var/lib/acme/live/c.example.org/fullchain")
    );
    assert_eq!(
        c.tls_key_path,
        Path::new("/var/lib/acme/live/c.example.org/privkey")
    );
}

#[test]
fn external_certificate_beats_self_signed() {
    let c = parse_text(&params(
        "_test.example.org",
        "tls_external_cert_and_key = /c  \t /k\n",
    ))
    .expect("loads");
    assert_eq!(c.tls_cert_mode, TlsCertMode::External);
    assert_eq!(c.tls_cert_mode.as_str(), "external");
    assert_eq!(c.tls_cert_path, Path::new("/c"));
    assert_eq!(c.tls_key_path, Path::new("/k"));
}

#[test]
fn external_certificate_needs_two_paths() {
    for value in ["/only/cert.pem", "/a /b /c"] {
        assert_eq!(
            error(&format!("tls_external_cert_and_key = {value}\n")),
            format!(
                "{FILE}: key 'tls_external_cert_and_key' has value '{value}': tls_external_cert_and_key must have two space-separated paths: CERT_PATH KEY_PATH"
            )
        );
    }
}

#[test]
fn iroh_relay_present_but_empty() {
    let c = parse("iroh_relay =\n");
    assert_eq!(c.iroh_relay, "");
    assert!(!c.enable_iroh_relay);
}

#[test]
fn notification_keys() {
    let c = parse(
        "notification_url =  https://127.0.0.1:8443/notify  \nnotification_ca_file = /tmp/ca.pem\n",
    );
    assert_eq!(c.notification_url, "https://127.0.0.1:8443/notify");
    assert_eq!(c.notification_ca_file, Some(PathBuf::from("/tmp/ca.pem")));
    assert!(c.unknown_keys.is_empty());
    let c = parse("notification_ca_file =\n");
    assert_eq!(c.notification_ca_file, None, "empty means the system roots");
}

#[test]
fn notification_url_must_be_a_url() {
    for value in [
        "",
        "notifications.delta.chat/notify",
        "ftp://x/notify",
        "https://",
    ] {
        assert_eq!(
            error(&format!("notification_url = {value}\n")),
            format!("{FILE}: key 'notification_url' has value '{value}', expected an https:// URL"),
            "{value:?}"
        );
    }
}

#[test]
fn testrun_overlay() {
    let c = parse_domain("ci.testrun.org");
    assert!(c.tmpfs_index);
    assert_eq!(
        c.passthrough_recipients,
        ["privacy@testrun.org", "echo@ci.testrun.org"]
    );
    // The overlay only supplies defaults; the privacy texts are not reproduced.
    assert_eq!(c.privacy_mail, None);
}

#[test]
fn testrun_overlay_yields_to_the_file() {
    let c = parse_text(&params(
        "ci.testrun.org",
        "tmpfs_index = false\npassthrough_recipients =\n",
    ))
    .expect("loads");
    assert!(!c.tmpfs_index);
    assert!(c.passthrough_recipients.is_empty());
    // Only subdomains are testrun relays.
    assert!(!parse_domain("testrun.org").tmpfs_index);
    assert!(!parse_domain("ci.testrun.org.example").tmpfs_index);
}

#[test]
fn unknown_keys_in_file_order() {
    let c = parse_text(
        "[params]\nzeta = 1\nmail_domain = chat.example.org\nalpha = 2\npassthrough_senders = x@y\n\n[other]\nignored = 1\n",
    )
    .expect("loads");
    assert_eq!(c.unknown_keys, ["zeta", "alpha"]);
    assert_eq!(
        c.warnings(),
        [
            format!("{FILE}: unknown key 'zeta' in [params] has no effect"),
            format!("{FILE}: unknown key 'alpha' in [params] has no effect"),
        ]
    );
}

#[test]
fn impossible_username_lengths_are_a_warning() {
    let c = parse("username_min_length = 10\n");
    assert_eq!(
        c.warnings(),
        [format!(
            "{FILE}: username_min_length 10 is larger than username_max_length 9, no account can be created"
        )]
    );
}

#[test]
fn error_missing_section() {
    assert_eq!(
        text_error("[other]\nmail_domain = x.org\n"),
        format!("{FILE}: missing section [params]")
    );
    assert_eq!(text_error(""), format!("{FILE}: missing section [params]"));
}

#[test]
fn error_missing_mail_domain() {
    let text = "[params]\nmax_user_send_per_minute = 5\n";
    assert_eq!(
        text_error(text),
        format!("{FILE}: missing required key 'mail_domain' in [params]")
    );
    let e = parse_text(text).unwrap_err();
    assert_eq!(e.key(), Some("mail_domain"));
    assert_eq!(e.path(), Path::new(FILE));
}

#[test]
fn error_empty_mail_domain() {
    assert_eq!(
        text_error("[params]\nmail_domain =\n"),
        format!("{FILE}: key 'mail_domain' has value '', expected a non-empty domain name")
    );
}

#[test]
fn error_mail_domain_unusable_as_directory() {
    for domain in ["a/b.org", "x@y.org", "a b.org", "..", ".", "a\u{0}b"] {
        let e = text_error(&params(domain, ""));
        assert!(
            e.starts_with(&format!("{FILE}: key 'mail_domain' has value '")),
            "{e}"
        );
        assert!(e.contains("expected a domain name"), "{e}");
    }
    // A value continued over two lines holds a line break.
    assert_eq!(
        text_error("[params]\nmail_domain = a.org\n  b.org\n"),
        format!(
            "{FILE}: key 'mail_domain' has value 'a.org\\nb.org', expected a domain name or IPv4 address without '/', '@', blanks or control characters"
        )
    );
}

#[test]
fn syntax_errors_name_file_and_line() {
    assert_eq!(
        text_error("[params]\nmail_domain = a.org\n# c\nmail_domain = b.org\n"),
        format!("{FILE}: line 4: duplicate key 'mail_domain' in section [params]")
    );
    assert_eq!(
        text_error("mail_domain = a.org\n"),
        format!(
            "{FILE}: line 1: key 'mail_domain' outside of any section (no section header defined)"
        )
    );
    let e = parse_text("[params]\n[params]\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{FILE}: line 2: duplicate section [params]")
    );
    assert_eq!(e.key(), None);
    assert_eq!(
        text_error("[params]\n  orphan\n"),
        format!(
            "{FILE}: line 2: indented continuation line without a preceding 'name = value' line"
        )
    );
    assert_eq!(
        error("no separator here\n"),
        format!(
            "{FILE}: line 3: expected 'name = value' or 'name: value', found 'no separator here'"
        )
    );
}

#[test]
fn error_messages_are_one_line() {
    let e = error("max_message_size = 1\n  2\n");
    assert_eq!(
        e,
        format!("{FILE}: key 'max_message_size' has value '1\\n2', expected an integer")
    );
    let path = Path::new("/odd\ndir/chatmail.ini");
    let e = Config::parse("", path).unwrap_err().to_string();
    assert_eq!(e, "/odd\\ndir/chatmail.ini: missing section [params]");
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_ini(&dir, "[params]\nmail_domain = chat.example.org\nfoo = 1\n");
    let c = Config::load(&path).expect("loads");
    assert_eq!(c.path, path);
    assert_eq!(c.mail_domain, "chat.example.org");
    assert_eq!(
        c.warnings(),
        [format!(
            "{}: unknown key 'foo' in [params] has no effect",
            path.display()
        )]
    );
}

#[test]
fn load_error_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_ini(
        &dir,
        "[params]\nmail_domain = x.org\nmax_user_send_per_minute = abc\n",
    );
    assert_eq!(
        Config::load(&path).unwrap_err().to_string(),
        format!(
            "{}: key 'max_user_send_per_minute' has value 'abc', expected an integer",
            path.display()
        )
    );
}

#[test]
fn load_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chatmail.ini");
    let e = Config::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            path.display()
        )
    );
    assert_eq!(e.path(), path);
}

#[test]
fn load_rejects_non_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chatmail.ini");
    std::fs::write(&path, b"[params]\nmail_domain = \xff\n").expect("write");
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot read: ", path.display())),
        "{e}"
    );
}

#[test]
fn load_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Config::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: cannot read: ", dir.path().display())),
        "{e}"
    );
}

#[test]
fn filtermail_and_postfix_hosts() {
    let c = parse("");
    assert_eq!(c.filtermail_host.to_string(), "127.0.0.1");
    assert_eq!(c.postfix_host, "127.0.0.1");
    let c = parse("filtermail_host = ::1\npostfix_host = postfix.internal\n");
    assert_eq!(c.filtermail_host.to_string(), "::1");
    assert_eq!(c.postfix_host, "postfix.internal");
    let c = parse("postfix_host = 10.0.0.5\n");
    assert_eq!(c.postfix_host, "10.0.0.5");
    for value in ["localhost", "example.org:25", "", "10.0.0.300x"] {
        assert_eq!(
            error(&format!("filtermail_host = {value}\n")),
            format!("{FILE}: key 'filtermail_host' has value '{value}', expected an IP address")
        );
    }
    for value in ["example.org:25", "/etc/passwd", "", "a b"] {
        assert_eq!(
            error(&format!("postfix_host = {value}\n")),
            format!(
                "{FILE}: key 'postfix_host' has value '{value}', expected an IP address or a host name"
            )
        );
    }
}

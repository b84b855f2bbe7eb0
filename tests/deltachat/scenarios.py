"""End-to-end scenarios: the real Delta Chat client against one loopback test relay.

Run by tests/tests/deltachat.rs as `python scenarios.py PARAMS.json`, with the venv that
scripts/install-deps makes. PARAMS.json describes the relay the Rust test started (ports,
mail domain, mailboxes dir, Dovecot's config, the accounts with their dclogin: URLs) and
names the scenario to run. Each scenario asserts on what the client shows (message text,
file bytes, verified contacts, errors) and on the relay's files (password files,
metadata.json, maildirs); a failed assertion or a timeout exits non-zero. Every wait is
bounded.
"""

import hashlib
import imaplib
import json
import os
import queue
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

from deltachat_rpc_client import DeltaChat, JsonRpcError, Rpc

# How long one step may take: configuring, SecureJoin, one message's delivery.
STEP_TIMEOUT = 60
# How long to wait before concluding that something does not happen.
SETTLE = 5

# Message states (core's MessageState).
STATE_OUT_PENDING = 20
STATE_OUT_FAILED = 24
STATE_OUT_DELIVERED = 26


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


class Params:
    def __init__(self, path):
        self.raw = json.loads(Path(path).read_text())
        for key, value in self.raw.items():
            setattr(self, key, value)
        self.mailboxes = Path(self.mailboxes_dir)

    def maildir(self, addr):
        return self.mailboxes / addr


def call(rpc_method, *args, timeout=STEP_TIMEOUT, what=None):
    """Calls an RPC method, waiting at most `timeout` seconds for its result."""
    future = rpc_method.future(*args)
    result = queue.Queue()

    def wait():
        try:
            result.put((True, future()))
        except Exception as err:  # noqa: BLE001 - handed to the caller
            result.put((False, err))

    threading.Thread(target=wait, daemon=True).start()
    try:
        ok, value = result.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"{what or rpc_method.name}: no answer within {timeout} s") from None
    if not ok:
        raise value
    return value


class Client:
    """One deltachat-rpc-server with its accounts in a fresh directory."""

    def __init__(self, params, name):
        self.params = params
        accounts_dir = Path(params.accounts_dir) / name
        accounts_dir.parent.mkdir(parents=True, exist_ok=True)
        self.rpc = Rpc(accounts_dir=str(accounts_dir), rpc_server_path=params.rpc_server)
        self.dc = DeltaChat(self.rpc)
        self.labels = {}

    def start(self):
        self.rpc.start()
        info = self.dc.get_system_info()
        log("deltachat core", info.deltachat_core_version)

    def close(self):
        self.rpc.close()

    def add_account(self, label):
        account = self.dc.add_account()
        self.labels[account.id] = label
        return account

    def next_event(self, account, deadline, what):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self.labels.get(account.id)}: no {what} in time")
        try:
            event = self.rpc.get_queue(account.id).get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError(f"{self.labels.get(account.id)}: no {what} in time") from None
        kind = event.get("kind")
        if kind in ("Warning", "Error", "ErrorSelfNotInGroup"):
            log(f"  [{self.labels.get(account.id)}] {kind}: {event.get('msg')}")
        return event

    def wait_event(self, account, predicate, what, timeout=STEP_TIMEOUT):
        """Consumes `account`'s events until one satisfies `predicate`, and returns it."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(account, deadline, what)
            if predicate(event):
                return event

    def configure(self, account, dclogin):
        """Configures `account` from a dclogin: URL and waits until its inbox is idle."""
        call(account._rpc.add_transport_from_qr, account.id, dclogin, what="configure")
        assert account.is_configured(), "the account is not configured after configure"
        account.start_io()
        call(account._rpc.wait_for_all_work_done, account.id, what="going online")
        account.clear_all_events()

    def online_account(self, label, entry):
        account = self.add_account(label)
        self.configure(account, entry["dclogin"])
        addr = account.get_config("configured_addr")
        assert addr == entry["addr"], f"configured_addr {addr!r} != {entry['addr']!r}"
        log(f"{label}: online as {addr}")
        return account

    def wait_incoming(self, account, what="incoming message", timeout=STEP_TIMEOUT):
        event = self.wait_event(account, lambda e: e.get("kind") == "IncomingMsg", what, timeout)
        return account.get_message_by_id(event["msgId"])

    def wait_file(self, account, message, timeout=STEP_TIMEOUT):
        """Waits until `message`'s attachment is downloaded (a large one arrives as a
        pre-message first and its post-message after it) and returns its snapshot."""
        deadline = time.monotonic() + timeout
        asked = False
        while True:
            snap = message.get_snapshot()
            if snap.download_state == "Done" and snap.file:
                return snap
            if time.monotonic() > deadline:
                raise TimeoutError(f"message {message.id} not downloaded: {dict(snap)}")
            if not asked and time.monotonic() > deadline - timeout / 2:
                log(f"message {message.id} still {snap.download_state}: asking for it")
                account._rpc.download_full_message(account.id, message.id)
                asked = True
            time.sleep(0.2)

    def wait_delivered(self, account, message, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            state = message.get_snapshot().state
            if state == STATE_OUT_DELIVERED:
                return
            assert state != STATE_OUT_FAILED, f"message {message.id} failed: {message.get_info()}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"message {message.id} still in state {state}")
            time.sleep(0.2)


@contextmanager
def client(params, name="client"):
    c = Client(params, name)
    c.start()
    try:
        yield c
    finally:
        c.close()


def securejoin(c, alice, bob):
    """Bob scans Alice's QR code; returns (alice's chat with bob, bob's chat with alice)."""
    qr = alice.get_qr_code()
    bob.secure_join(qr)
    c.wait_event(
        alice,
        lambda e: e.get("kind") == "SecurejoinInviterProgress" and e.get("progress") == 1000,
        "SecureJoin inviter success",
    )
    c.wait_event(
        bob,
        lambda e: e.get("kind") == "SecurejoinJoinerProgress" and e.get("progress") == 1000,
        "SecureJoin joiner success",
    )
    bob_addr = bob.get_config("configured_addr")
    alice_addr = alice.get_config("configured_addr")
    bob_at_alice = alice.get_contact_by_addr(bob_addr)
    alice_at_bob = bob.get_contact_by_addr(alice_addr)
    assert bob_at_alice is not None and alice_at_bob is not None, "contacts after SecureJoin"
    # Each side holds the other's own key: the fingerprint the peer shows for "Me" is the
    # one this side shows for the peer.
    alice_info = bob_at_alice.get_encryption_info()
    bob_info = alice_at_bob.get_encryption_info()
    alice_own = fingerprint(alice_info, "Me")
    bob_own = fingerprint(bob_info, "Me")
    assert fingerprint(alice_info, bob_addr) == bob_own, f"{alice_info!r} vs {bob_info!r}"
    assert fingerprint(bob_info, alice_addr) == alice_own, f"{bob_info!r} vs {alice_info!r}"
    assert alice_own != bob_own
    for contact, where in ((bob_at_alice, "bob at alice"), (alice_at_bob, "alice at bob")):
        snap = contact.get_snapshot()
        assert snap.is_key_contact and snap.e2ee_avail, f"{where}: {dict(snap)}"
        # Older cores report verification explicitly.
        assert snap.get("is_verified", True), f"{where} is not verified: {dict(snap)}"
    log(f"SecureJoin done: alice {alice_own}, bob {bob_own}, each verified by the other")
    return bob_at_alice.create_chat(), alice_at_bob.create_chat()


def fingerprint(encryption_info, who):
    """The fingerprint listed under the line starting with `who` in a contact's
    encryption info ("Me (addr):" or "addr (addr):", then two lines of hex groups)."""
    lines = encryption_info.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"{who} (") and line.endswith("):"):
            return "".join("".join(lines[index + 1 : index + 3]).split())
    raise AssertionError(f"no fingerprint for {who} in {encryption_info!r}")


def maildir_files(params, addr):
    files = []
    for sub in ("new", "cur"):
        folder = params.maildir(addr) / sub
        if folder.is_dir():
            files.extend(p for p in folder.iterdir() if p.is_file())
    return sorted(files)


# ----- scenarios -----


def scenario_dclogin(params):
    """Accounts configured from dclogin: URLs are created by their first login."""
    with client(params) as c:
        for index, entry in enumerate(params.accounts):
            password_file = params.maildir(entry["addr"]) / "password"
            assert not password_file.exists(), f"{password_file} exists before the first login"
            account = c.online_account(f"ac{index}", entry)
            transports = call(account._rpc.list_transports, account.id)
            assert len(transports) == 1, f"transports: {transports}"
            transport = transports[0]
            assert transport["password"] == entry["password"], (
                f"the client took the password {transport['password']!r} from the URL"
            )
            for key in ("imapServer", "imapPort", "imapSecurity", "smtpServer", "smtpPort",
                        "smtpSecurity", "certificateChecks"):
                log(f"ac{index}: {key} = {transport.get(key)!r}")
            assert transport["imapPort"] == params.imap_port, transport
            assert transport["smtpPort"] == params.submission_port, transport
            # TLS from the first byte on both, the self-signed certificate accepted (ic=2).
            assert transport["imapSecurity"] == params.imap_security == "ssl", transport
            assert transport["smtpSecurity"] == params.smtp_security == "ssl", transport
            assert transport["certificateChecks"] == "acceptInvalidCertificates", transport
            assert password_file.is_file(), f"doveauth did not create {password_file}"
            st = password_file.stat()
            assert st.st_uid == params.vmail_uid, f"{password_file} not owned by vmail"
            content = password_file.read_text()
            assert entry["password"] not in content, "the password file holds the clear text"
            log(f"ac{index}: {password_file} created ({len(content)} bytes)")


def scenario_securejoin(params):
    """SecureJoin, then encrypted text and a file both ways."""
    alice_entry, bob_entry = params.accounts[:2]
    with client(params) as c:
        alice = c.online_account("alice", alice_entry)
        bob = c.online_account("bob", bob_entry)
        alice_chat, bob_chat = securejoin(c, alice, bob)

        for sender, chat, receiver, name in (
            (alice, alice_chat, bob, "alice"),
            (bob, bob_chat, alice, "bob"),
        ):
            text = f"hello from {name}, {os.urandom(6).hex()}"
            sent = chat.send_text(text)
            got = c.wait_incoming(receiver, f"text from {name}")
            snap = got.get_snapshot()
            assert snap.text == text, f"{snap.text!r} != {text!r}"
            assert snap.show_padlock, f"text from {name} is not shown as encrypted"
            c.wait_delivered(sender, sent)
            log(f"text from {name} arrived encrypted: {snap.text!r}")

            payload = os.urandom(200_000)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"from-{name}.bin"
                path.write_bytes(payload)
                sent = chat.send_file(str(path))
                got = c.wait_incoming(receiver, f"file from {name}")
            snap = c.wait_file(receiver, got)
            received = Path(snap.file).read_bytes()
            assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest(), (
                f"file from {name}: {len(received)} bytes differ from the {len(payload)} sent"
            )
            assert snap.file_name == f"from-{name}.bin", snap.file_name
            assert snap.show_padlock, f"file from {name} is not shown as encrypted"
            log(f"file from {name} arrived: {len(received)} bytes, same SHA-256")


def scenario_plain_refused(params):
    """A plain message by raw SMTP (as the client's own login) is refused with 523."""
    alice_entry, bob_entry = params.accounts[:2]
    with client(params) as c:
        alice = c.online_account("alice", alice_entry)
        bob = c.online_account("bob", bob_entry)
        assert alice.is_configured()
        before = maildir_files(params, bob_entry["addr"])
        bob.clear_all_events()

        message = EmailMessage()
        message["From"] = alice_entry["addr"]
        message["To"] = bob_entry["addr"]
        message["Subject"] = "plain"
        message.set_content("This is not encrypted.")
        with smtp_session(params, alice_entry) as smtp:
            code, text = refused_data(smtp, message)
        log(f"submission answered {code} {text}")
        assert code == 523, f"{code} {text}"
        assert "Encryption Needed" in text, text

        # The same from another relay's MTA on port 25 (after STARTTLS, which the relay
        # requires).
        del message["From"]
        message["From"] = "someone@example.org"
        smtp = smtplib.SMTP(params.host, params.smtp_port, timeout=STEP_TIMEOUT)
        try:
            smtp.ehlo("mx.example.org")
            smtp.starttls(context=tls_context())
            smtp.ehlo("mx.example.org")
            code, text = refused_data(smtp, message)
        finally:
            smtp.close()
        log(f"port 25 answered {code} {text}")
        assert code == 523, f"{code} {text}"

        # Neither the mailbox nor bob's client gets it.
        try:
            got = c.wait_incoming(bob, "no message", timeout=SETTLE)
        except TimeoutError:
            pass
        else:
            raise AssertionError(f"bob received {got.get_snapshot().text!r}")
        after = maildir_files(params, bob_entry["addr"])
        assert after == before, f"bob's maildir changed: {before} -> {after}"


def refused_data(smtp, message):
    """Sends `message`, which the relay must refuse after DATA: (code, text)."""
    try:
        smtp.send_message(message)
    except smtplib.SMTPDataError as err:
        return err.smtp_code, err.smtp_error.decode()
    raise AssertionError("the relay accepted a plain message")


def scenario_rate_limit(params):
    """Messages past the burst stay queued in the client: the relay answered 450."""
    alice_entry, bob_entry = params.accounts[:2]
    burst = params.burst
    count = burst + 4
    with client(params) as c:
        alice = c.online_account("alice", alice_entry)
        bob = c.online_account("bob", bob_entry)
        alice_chat, bob_chat = securejoin(c, alice, bob)
        log(f"alice sends {count} messages; burst {burst}, {params.per_minute} a minute")
        sent = [alice_chat.send_text(f"burst message {i}") for i in range(count)]

        def states():
            return [m.get_snapshot().state for m in sent]

        deadline = time.monotonic() + STEP_TIMEOUT
        while STATE_OUT_DELIVERED not in states():
            assert time.monotonic() < deadline, f"nothing delivered: {states()}"
            time.sleep(0.5)
        # Let the client try every message at least once, and retry.
        time.sleep(3 * SETTLE)
        final = states()
        log(f"message states: {final}")
        delivered = [m for m, s in zip(sent, final) if s == STATE_OUT_DELIVERED]
        pending = [m for m, s in zip(sent, final) if s == STATE_OUT_PENDING]
        assert STATE_OUT_FAILED not in final, f"a message failed: {final}"
        assert pending, f"every message was delivered: no rate limit ({final})"
        assert len(delivered) <= burst, f"{len(delivered)} delivered, burst is {burst}"
        # Delivered in the order sent: the queue is blocked by the first refused one.
        assert final == sorted(final, reverse=True), f"states out of order: {final}"

        received = []
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(received) < len(delivered):
            received.append(c.wait_incoming(bob, "a delivered message",
                                            timeout=max(1, deadline - time.monotonic())))
        try:
            extra = c.wait_incoming(bob, "no more messages", timeout=SETTLE)
        except TimeoutError:
            pass
        else:
            raise AssertionError(f"bob received a message past the limit: "
                                 f"{extra.get_snapshot().text!r}")
        texts = [m.get_snapshot().text for m in received]
        assert texts == [f"burst message {i}" for i in range(len(delivered))], texts
        log(f"bob shows {len(texts)} message(s), alice has {len(pending)} pending")


def scenario_wrong_password(params):
    """A second client with a wrong password is refused; the account stays as it was."""
    right, wrong = params.accounts[:2]
    assert right["addr"] == wrong["addr"] and right["password"] != wrong["password"]
    password_file = params.maildir(right["addr"]) / "password"
    with client(params) as c:
        c.online_account("owner", right)
        stored = password_file.read_bytes()
        intruder = c.add_account("intruder")
        try:
            call(intruder._rpc.add_transport_from_qr, intruder.id, wrong["dclogin"],
                 what="configure with a wrong password")
        except JsonRpcError as err:
            error = str(err)
        else:
            raise AssertionError("configuring with a wrong password succeeded")
        log(f"client error: {error}")
        assert not intruder.is_configured(), "the intruder's account is configured"
        assert "login" in error.lower() or "auth" in error.lower(), error
        assert password_file.read_bytes() == stored, "the password file changed"
        # The owner's login still works.
        with imap_session(params, right) as imap:
            imap.noop()


def scenario_push(params):
    """A device token set with SETMETADATA is stored; a delivery sends a push."""
    alice_entry, bob_entry = params.accounts[:2]
    token = params.push_token
    with client(params) as c:
        alice = c.online_account("alice", alice_entry)
        bob = c.online_account("bob", bob_entry)
        alice_chat, _ = securejoin(c, alice, bob)

        # imaplib knows no METADATA commands (RFC 5464): teach it the two used here.
        imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
        imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
        with imap_session(params, bob_entry) as imap:
            typ, data = imap._simple_command(
                "SETMETADATA", "INBOX", f'(/private/devicetoken "{token}")')
            log(f"SETMETADATA: {typ} {data}")
            assert typ == "OK", f"SETMETADATA: {typ} {data}"
            typ, data = imap._simple_command("GETMETADATA", "INBOX", "/private/devicetoken")
            untagged = imap.untagged_responses.pop("METADATA", [])
            log(f"GETMETADATA: {typ} {untagged}")
            assert typ == "OK" and token in repr(untagged), f"GETMETADATA: {typ} {untagged}"
        stored = (params.maildir(bob_entry["addr"]) / "metadata.json").read_text()
        assert token in stored, f"metadata.json lacks the token: {stored}"

        text = "ring ring"
        alice_chat.send_text(text)
        got = c.wait_incoming(bob, "the message that rings")
        assert got.get_snapshot().text == text
        log("bob received the message; the Rust test checks the gateway for the push")


def scenario_quota(params):
    """Crossing 75 % of the quota runs quota expiry, which removes the oldest messages."""
    alice_entry, bob_entry = params.accounts[:2]
    bob_addr = bob_entry["addr"]
    bob_dir = params.maildir(bob_addr)
    # Bob's first login creates the account; the old messages go in before his client
    # first looks at the inbox, so it takes them as history and does not download them.
    with imap_session(params, bob_entry) as imap:
        imap.select("INBOX")
    used, limit = quota_storage(params, bob_addr)
    log(f"bob's quota: {used} of {limit} bytes")
    assert limit == params.max_mailbox_size_mb << 20, "the quota is not chatmail.ini's"
    target = limit * 70 // 100
    # Three days old, named as Dovecot names delivered mail (the size in S=): 14 of 5 %,
    # then one up to 72.5 %.
    piece = limit // 20
    sizes = [piece] * 14 + [limit * 3 // 4 - 14 * piece - used - piece // 2]
    old = int(time.time()) - 3 * 86400
    fillers = []
    for i, size in enumerate(sizes):
        path = bob_dir / "cur" / f"{old + i}.M{i}P1.filler,S={size},W={size}:2,S"
        header = f"From: old@{params.domain}\r\nSubject: old {i}\r\n\r\n".encode()
        path.write_bytes(header + b"o" * (size - len(header)))
        os.utime(path, (old + i, old + i))
        os.chown(path, params.vmail_uid, params.vmail_gid)
        fillers.append(path)
    doveadm(params, "quota", "recalc", "-u", bob_addr)
    used, _ = quota_storage(params, bob_addr)
    log(f"bob's quota after the old messages: {used} of {limit} bytes ({100 * used / limit:.2f} %)")
    assert target < used < limit * 3 // 4, "the old messages do not fill 70-75 %"

    with client(params) as c:
        alice = c.online_account("alice", alice_entry)
        bob = c.online_account("bob", bob_entry)
        alice_chat, _ = securejoin(c, alice, bob)

        # A file of 5 % takes the mailbox past 75 %.
        payload = os.urandom(piece)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.bin"
            path.write_bytes(payload)
            alice_chat.send_file(str(path))
            got = c.wait_incoming(bob, "the file past 75 %")
        received = Path(c.wait_file(bob, got).file).read_bytes()
        assert received == payload, "the big file arrived changed"
        log("bob's client shows the file that crossed 75 %")

        deadline = time.monotonic() + STEP_TIMEOUT
        while all(p.exists() for p in fillers):
            assert time.monotonic() < deadline, "quota expiry removed no old message"
            time.sleep(0.5)
        time.sleep(1)
    removed = [p for p in fillers if not p.exists()]
    log(f"quota expiry removed {len(removed)} of {len(fillers)} old messages")
    # Oldest first, down to 70 %. (Bob's client deletes what it downloaded from the server,
    # so today's messages are gone either way.)
    assert removed == fillers[: len(removed)], "not the oldest messages were removed"
    assert len(removed) < len(fillers), "every old message was removed, not just enough"
    left = sum(maildir_size(p) for p in maildir_files(params, bob_addr))
    log(f"bob's mailbox now holds {left} bytes, target {target}")
    assert left <= target, f"{left} bytes left, above 70 % ({target})"


def maildir_size(path):
    """The size Dovecot's quota counts: S= of the name, else the file's size."""
    for part in path.name.split(":")[0].split(","):
        if part.startswith("S="):
            return int(part[2:])
    return path.stat().st_size


def quota_storage(params, addr):
    """(used, limit) of `addr`'s storage quota in bytes, as Dovecot reports them."""
    for line in doveadm(params, "quota", "get", "-u", addr).splitlines():
        fields = line.split()
        if "STORAGE" in fields:
            value, limit = fields[-3], fields[-2]
            assert limit.isdigit(), f"no storage limit: {line}"
            return int(value) * 1024, int(limit) * 1024
    raise AssertionError(f"doveadm quota get shows no STORAGE quota for {addr}")


# ----- raw protocol helpers -----


def doveadm(params, *args):
    result = subprocess.run(
        [params.doveadm, "-c", params.dovecot_conf, *args],
        capture_output=True, text=True, timeout=STEP_TIMEOUT,
    )
    assert result.returncode == 0, f"doveadm {args}: {result.returncode} {result.stderr}"
    return result.stdout.strip()


def tls_context():
    """The test relay's certificate is self-signed: accept it, as the client is told to."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextmanager
def smtp_session(params, entry):
    """An authenticated submission session as `entry`, with the client's SMTP settings."""
    if params.smtp_security == "ssl":
        smtp = smtplib.SMTP_SSL(params.host, params.submission_port, timeout=STEP_TIMEOUT,
                                context=tls_context())
    else:
        smtp = smtplib.SMTP(params.host, params.submission_port, timeout=STEP_TIMEOUT)
    try:
        smtp.ehlo()
        if params.smtp_security == "starttls":
            smtp.starttls(context=tls_context())
            smtp.ehlo()
        smtp.login(entry["addr"], entry["password"])
        yield smtp
    finally:
        try:
            smtp.quit()
        except smtplib.SMTPException:
            pass


@contextmanager
def imap_session(params, entry):
    """A logged-in IMAP session as `entry`, with the client's IMAP settings."""
    if params.imap_security == "ssl":
        imap = imaplib.IMAP4_SSL(params.host, params.imap_port, timeout=STEP_TIMEOUT,
                                 ssl_context=tls_context())
    else:
        imap = imaplib.IMAP4(params.host, params.imap_port, timeout=STEP_TIMEOUT)
        if params.imap_security == "starttls":
            imap.starttls(ssl_context=tls_context())
    try:
        imap.login(entry["addr"], entry["password"])
        yield imap
    finally:
        try:
            imap.logout()
        except imaplib.IMAP4.error:
            pass


SCENARIOS = {
    "dclogin": scenario_dclogin,
    "securejoin": scenario_securejoin,
    "plain_refused": scenario_plain_refused,
    "rate_limit": scenario_rate_limit,
    "wrong_password": scenario_wrong_password,
    "push": scenario_push,
    "quota": scenario_quota,
}


def main():
    params = Params(sys.argv[1])
    scenario = SCENARIOS[params.scenario]
    log(f"scenario {params.scenario}: {scenario.__doc__}")
    started = time.monotonic()
    try:
        scenario(params)
    except Exception:
        traceback.print_exc()
        log(f"scenario {params.scenario} FAILED after {time.monotonic() - started:.1f} s")
        sys.exit(1)
    log(f"scenario {params.scenario} passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()

"""The echo bot with the real Delta Chat client, on one loopback test relay.

Run by tests/tests/echobot.rs as `python echobot.py PARAMS.json`, with the venv that
scripts/install-deps makes, while the bot's binary runs against the relay. PARAMS.json
holds the relay's parameters, one account with its dclogin: URL, the bot's invite link and
the control directory. A fresh account joins the bot through the link and checks that
the bot is the verified contact the link names; sends a text, a file with a caption and
`/help` and gets each answered once, decrypted, from the bot; a second account joins
with the legacy start (the link without `v=3`) and gets a text and a large file (sent by
the client as pre-message and post-message) back; the first account asks the Rust test to stop
the bot (`@control N stop-bot` on stdout, answered by the file N in the control
directory), sends a text while it is down, asks for it to start again (the answer is the
invite link, which must not change), gets that text and one sent after the restart back,
and finally checks that every message got exactly one answer. Every wait is bounded; a
failed assertion or a timeout exits non-zero.
"""

import hashlib
import itertools
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import parse_qs, unquote

# The shared client helpers of the other scenarios (the script's directory is on sys.path).
from scenarios import SETTLE, STEP_TIMEOUT, Params, client, log

TEXT = "hi, I hope you text me back 😀\nsecond line with trailing space \n\nend: ü€ ✓"
CAPTION = "caption ü 📎\nwith a second line"
AFTER_RESTART = "sent after the restart 🔁"
WHILE_DOWN = "sent while the bot was down 💤"
HELP = "/help"
HELP_TEXT = "Send me any message and I will echo it back"
LEGACY_TEXT = "joined without v=3 ✔"
BIG_CAPTION = "a file sent as pre-message and post-message 📦"
# Core sends a file above 140 000 bytes as a pre-message with the caption and a
# post-message with the file; below it, as one message.
SMALL_SIZE = 100_000
BIG_SIZE = 3_000_000

_control_numbers = itertools.count(1)


def control(params, request, timeout=2 * STEP_TIMEOUT):
    """Asks the Rust test for `request` and returns its answer."""
    number = next(_control_numbers)
    answer = Path(params.control_dir) / str(number)
    print(f"@control {number} {request}", flush=True)
    deadline = time.monotonic() + timeout
    while not answer.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"control request {request!r}: no answer within {timeout} s")
        time.sleep(0.1)
    text = answer.read_text()
    log(f"control {request}: {text}")
    return text


def parse_invite(link):
    """(fingerprint, address) of an https://i.delta.chat/#FP&a=ADDR&... invite link."""
    prefix = "https://i.delta.chat/#"
    assert link.startswith(prefix), link
    fingerprint, _, query = link[len(prefix):].partition("&")
    fields = parse_qs(query)
    addr = unquote(fields["a"][0])
    assert len(fingerprint) == 40 and all(c in "0123456789ABCDEF" for c in fingerprint), link
    return fingerprint, addr


def listed_fingerprint(encryption_info, addr):
    """The fingerprint listed under the line ending with `(addr):` in a contact's
    encryption info ("Name (addr):", then two lines of hex groups)."""
    lines = encryption_info.splitlines()
    for index, line in enumerate(lines):
        if line.endswith(f"({addr}):"):
            return "".join("".join(lines[index + 1 : index + 3]).split()).upper()
    raise AssertionError(f"no fingerprint for {addr} in {encryption_info!r}")


def legacy_link(link):
    """The invite without `v=3`: the joiner starts with the unencrypted vc-request."""
    assert "&v=3&" in link, link
    return link.replace("&v=3&", "&")


def echo_file(c, user, chat, bot, name, size, caption, what):
    """Sends a random file of `size` bytes named `name` with `caption`; checks the echo."""
    payload = os.urandom(size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(payload)
        sent = chat.send_message(text=caption, file=str(path))
        got = expect_echo(c, user, chat, bot, caption, what)
    snap = c.wait_file(user, got)
    received = Path(snap.file).read_bytes()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest(), (
        f"{what}: {len(received)} bytes back differ from the {len(payload)} sent"
    )
    assert snap.file_name == name, f"{what}: {snap.file_name!r} != {name!r}"
    assert snap.text == caption, f"{what}: caption {snap.text!r} != {caption!r}"
    log(f"{what}: came back, {len(received)} bytes, same SHA-256, {snap.file_name!r}")
    return sent


def join(c, user, link):
    """Joins the bot through `link`; returns (the chat with the bot, the bot's contact)."""
    fingerprint, bot_addr = parse_invite(link)
    user.secure_join(link)
    c.wait_event(
        user,
        lambda e: e.get("kind") == "SecurejoinJoinerProgress" and e.get("progress") == 1000,
        "SecureJoin joiner success",
    )
    bot = user.get_contact_by_addr(bot_addr)
    assert bot is not None, f"no contact {bot_addr} after SecureJoin"
    snap = bot.get_snapshot()
    log(f"bot contact: {dict(snap)}")
    assert snap.is_key_contact and snap.e2ee_avail, f"bot contact: {dict(snap)}"
    assert snap.is_bot, f"the bot's contact is not marked as a bot: {dict(snap)}"
    # Core 2.65's contact snapshot has no is_verified; older ones report it explicitly.
    assert snap.get("is_verified", True), f"the bot is not verified: {dict(snap)}"
    # The key the client holds for the bot is the one the invite link names.
    info = bot.get_encryption_info()
    held = listed_fingerprint(info, bot_addr)
    assert held == fingerprint, f"bot key {held} != invite's {fingerprint}:\n{info}"
    log(f"joined the bot {bot_addr}, key {fingerprint} as in the invite")
    return bot.create_chat(), bot


def expect_echo(c, user, chat, bot, text, what):
    """Waits for the next incoming message and checks it is the bot's encrypted `text`."""
    got = c.wait_incoming(user, what)
    snap = got.get_snapshot()
    assert snap.chat_id == chat.id, f"{what}: in chat {snap.chat_id}, not {chat.id}"
    assert snap.from_id == bot.id, f"{what}: from contact {snap.from_id}, not the bot {bot.id}"
    assert snap.show_padlock, f"{what}: not shown as encrypted: {dict(snap)}"
    assert snap.text == text, f"{what}: {snap.text!r} != {text!r}"
    assert not snap.is_info, f"{what}: an info message: {dict(snap)}"
    log(f"{what}: came back encrypted: {snap.text!r}")
    return got


def expect_nothing(c, user, why):
    """No message arrives within SETTLE seconds."""
    try:
        got = c.wait_incoming(user, "no message", timeout=SETTLE)
    except TimeoutError:
        return
    raise AssertionError(f"{why}: got {dict(got.get_snapshot())}")


def scenario(params):
    link = params.invite_link
    entry = params.accounts[0]
    sent = []
    with client(params, "echobot") as c:
        user = c.online_account("user", entry)
        chat, bot = join(c, user, link)

        sent.append(chat.send_text(TEXT))
        expect_echo(c, user, chat, bot, TEXT, "text")

        sent.append(
            echo_file(c, user, chat, bot, "echo-file ü.bin", SMALL_SIZE, CAPTION, "file")
        )

        sent.append(chat.send_text(HELP))
        expect_echo(c, user, chat, bot, HELP_TEXT, "/help")
        expect_nothing(c, user, "a second answer before the restart")

        # A second account joins with the legacy start and sends a large file.
        legacy = c.online_account("legacy", params.accounts[1])
        legacy_chat, legacy_bot = join(c, legacy, legacy_link(link))
        legacy_chat.send_text(LEGACY_TEXT)
        expect_echo(c, legacy, legacy_chat, legacy_bot, LEGACY_TEXT, "legacy: text")
        echo_file(c, legacy, legacy_chat, legacy_bot, "big.bin", BIG_SIZE, BIG_CAPTION,
                  "legacy: large file")
        expect_nothing(c, legacy, "legacy: a second answer")
        legacy_answers = [
            s.text for s in (m.get_snapshot() for m in legacy_chat.get_messages())
            if s.from_id == legacy_bot.id and not s.is_info
        ]
        assert legacy_answers == [LEGACY_TEXT, BIG_CAPTION], legacy_answers

        control(params, "stop-bot")
        message = chat.send_text(WHILE_DOWN)
        sent.append(message)
        c.wait_delivered(user, message)
        expect_nothing(c, user, "an answer while the bot is down")

        again = control(params, "start-bot").strip()
        assert again == link, f"the invite link changed across the restart: {again!r}"
        expect_echo(c, user, chat, bot, WHILE_DOWN, "text sent while the bot was down")
        sent.append(chat.send_text(AFTER_RESTART))
        expect_echo(c, user, chat, bot, AFTER_RESTART, "text after the restart")
        expect_nothing(c, user, "a second answer after the restart")

        # Exactly one answer for each message, in order: nothing answered twice.
        snaps = [m.get_snapshot() for m in chat.get_messages()]
        mine = [s.text for s in snaps if s.from_id == 1 and not s.is_info]
        answers = [s.text for s in snaps if s.from_id == bot.id and not s.is_info]
        log(f"chat: {len(mine)} sent, {len(answers)} answers")
        assert mine == [TEXT, CAPTION, HELP, WHILE_DOWN, AFTER_RESTART], mine
        assert answers == [TEXT, CAPTION, HELP_TEXT, WHILE_DOWN, AFTER_RESTART], answers
        assert len(sent) == len(answers)
        # The bot is still the contact the invite names.
        held = listed_fingerprint(bot.get_encryption_info(), parse_invite(link)[1])
        assert held == parse_invite(link)[0], held


def main():
    params = Params(sys.argv[1])
    try:
        scenario(params)
    except Exception:  # noqa: BLE001 - reported, exit status 1
        traceback.print_exc()
        sys.exit(1)
    log("echobot: passed")


if __name__ == "__main__":
    main()

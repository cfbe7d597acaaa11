"""What gateway.smtp.library takes from aiosmtpd and asyncio is still there, and aiosmtpd's texts are all translated.

These fail, naming the name or the text, when an aiosmtpd or Python release
changes what the gateway relies on beyond the public API.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP

from gateway import replies
from gateway.smtp import library
from gateway.smtp.server import READ_SIZE, GatewaySMTP
from tests.support_smtp import Raw, Starter

ROOT = Path(__file__).resolve().parents[1]
VERSION = importlib.metadata.version("aiosmtpd")


def _problem(owner: object, where: str, private: library.Private, values: dict[str, object]) -> str | None:
    """What is wrong with one private name on ``owner`` (None: it is as expected)."""
    label = f"{where}.{private.name} (aiosmtpd {VERSION})"
    if private.kind == "method":
        found = inspect.getattr_static(owner, private.name, None)
        if found is None:
            return f"{label}: missing"
        if not inspect.isfunction(found):
            return f"{label}: expected a method, found {type(found).__name__}"
        return None
    if private.name not in values:
        there = inspect.getattr_static(owner, private.name, None) is not None
        return f"{label}: expected an attribute, found {'a class member' if there else 'nothing'}"
    if callable(values[private.name]):
        return f"{label}: expected an attribute, found a callable"
    return None


def problems(owner: object, where: str, kind: str, values: dict[str, object]) -> list[str]:
    found = (_problem(owner, where, p, values) for p in library.PRIVATE if p.owner == kind)
    return [p for p in found if p]


async def test_the_private_names_of_smtp_are_there() -> None:
    instance = SMTP(object(), loop=asyncio.get_running_loop())
    assert not problems(SMTP, "SMTP", "SMTP", vars(instance))


async def test_the_private_names_of_a_connected_session_are_there(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)  # greeted: the session is connected
    try:
        (session,) = h.server.sessions
        assert not problems(session, "SMTP", "SMTP session", vars(session))
        assert isinstance(session.reader, asyncio.StreamReader) and isinstance(session.writer, asyncio.StreamWriter)
        assert not problems(session.reader, "asyncio.StreamReader", "StreamReader", vars(session.reader))
        assert isinstance(vars(session.reader)["_buffer"], bytearray), "StreamReader._buffer is not a bytearray"
        transport = session.transport
        assert transport is not None
        (size,) = [p for p in library.PRIVATE if p.owner == "socket transport"]
        assert getattr(transport, size.name, None) == READ_SIZE, f"{type(transport).__name__}.max_size is not set"
    finally:
        await raw.close()


# What the gateway's session class may define that aiosmtpd's SMTP also has: the overrides.
OVERRIDES = {
    "connection_made", "connection_lost", "eof_received", "data_received", "push", "handle_exception",
    "smtp_MAIL", "smtp_RCPT", "smtp_DATA", "smtp_AUTH", "auth_PLAIN", "auth_LOGIN",
    # commands that move nothing forward, or not the second time (the idle timer):
    "smtp_NOOP", "smtp_RSET", "smtp_HELP", "smtp_VRFY", "smtp_EXPN", "smtp_EHLO", "smtp_HELO",
    "AuthLoginUsernameChallenge", "AuthLoginPasswordChallenge",
    "line_length_limit", "command_size_limits",
    *(p.name for p in library.PRIVATE if p.owner == "SMTP" and p.kind == "method"),
}  # fmt: skip


async def test_the_gateway_overrides_nothing_of_aiosmtpd_by_chance(smtp_gateway: Starter) -> None:
    # A name of the gateway's that a new aiosmtpd release also uses would silently replace the library's.
    names = {n for n in set(vars(GatewaySMTP)) | set(vars(library.Protocol)) if not re.fullmatch(r"__\w+__", n)}
    clashes = sorted(n for n in names - OVERRIDES if hasattr(SMTP, n))
    assert not clashes, f"aiosmtpd {VERSION} SMTP also has: {clashes}"
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    try:
        (session,) = h.server.sessions
        plain = SMTP(object(), loop=asyncio.get_running_loop())
        ours = set(vars(session)) - set(vars(plain)) - OVERRIDES
        assert ours, "no attribute of the gateway's own found on the session"
        clashes = sorted(n for n in ours if hasattr(SMTP, n) or hasattr(asyncio.StreamReaderProtocol, n))
        assert not clashes, f"aiosmtpd {VERSION} SMTP also has: {clashes}"
    finally:
        await raw.close()


def test_aiosmtpd_is_within_the_tested_releases() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (bound,) = [d for d in project["dependencies"] if d.startswith("aiosmtpd")]
    assert bound == "aiosmtpd>=1.4.6,<1.5"
    release = tuple(int(part) for part in re.findall(r"[0-9]+", VERSION)[:3])
    assert (1, 4, 6) <= release < (1, 5), f"aiosmtpd {VERSION} is installed; the gateway is tested with 1.4.6 to 1.4.x"


# -- aiosmtpd's texts ------------------------------------------------------------------

# Texts of aiosmtpd's that translate() never sees, or sees with the gateway's own parts ("X": a part that varies).
SPECIAL = {
    "220 X X": "220 fax-gateway.test fax-gateway ESMTP",  # the greeting; its second part is the gateway's ident
    "250 X": None,  # HELO's answer: Handler.handle_HELO gives it
    "250 HELP": None,  # the last line of EHLO's answer: Handler.handle_EHLO gives it
    "554 Command refused due to lack of security": None,  # only after a failing handle_STARTTLS hook (none)
    "530 Must issue a STARTTLS command first": None,  # only with require_starttls (never set)
    "X Supported commands: X": "250 Supported commands: X",  # HELP: 250, or 501 for an unknown command
}


def aiosmtpd_texts() -> set[str]:
    """Every reply text in aiosmtpd.smtp's source, with "X" for the parts that vary."""
    tree = ast.parse(inspect.getsource(aiosmtpd.smtp))
    parts: set[int] = set()
    texts: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # f"421 4.7.0 {command} sent too many times"
            texts.add("".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values))
            parts.update(id(v) for v in node.values)
        elif isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant):  # "502 Could not VRFY " + arg
            texts.add(f"{node.left.value}X")
            parts.add(id(node.left))
        elif isinstance(node, ast.Attribute) and node.attr == "format" and isinstance(node.value, ast.Constant):
            texts.add(str(node.value.value).replace("{}", "X"))  # "500 Error: ({}) {}".format(...)
            parts.add(id(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            texts.add(node.value)
    return {t for t in texts if re.match(r"(?:[2-5][0-9][0-9]|X) ", t)}


def translate(text: str) -> replies.Answer:
    return library.translate(text, max_line=1000, max_size=2000)


def test_every_text_aiosmtpd_writes_is_translated_to_the_table() -> None:
    texts = aiosmtpd_texts()
    assert len(texts) > 40, sorted(texts)
    assert set(SPECIAL) <= texts, f"aiosmtpd {VERSION} no longer writes {sorted(set(SPECIAL) - texts)}"
    table = replies.all_replies()
    untranslated = []
    for text in sorted(texts):
        sample = SPECIAL.get(text, text)
        if sample is None:
            continue
        answer = translate(sample)
        if table.get(answer.reply.name) is not answer.reply:
            untranslated.append(text)
    assert not untranslated, f"aiosmtpd {VERSION} texts with no table entry: {untranslated}"


@pytest.mark.parametrize(
    ("text", "name", "line"),
    [
        ("503 Error: need RCPT command", "NEED_RCPT", "503 5.5.1 Send RCPT TO first"),
        ("221 Bye", "BYE", "221 2.0.0 Bye"),
        ("500 Line too long (see RFC5321 4.5.3.1.6)", "LINE_TOO_LONG", "500 5.5.2 Line too long (at most 1000 octets)"),
        ("552 Error: Too much mail data", "MESSAGE_TOO_BIG", "552 5.3.4 Message size exceeds the limit of 2000 bytes"),
        ("501 Not enough value", "COMMAND_SYNTAX", "501 5.5.4 Syntax: see HELP"),
        ("501 Supported commands: DATA", "HELP_UNKNOWN", "501 5.5.4 No such command; supported commands: DATA"),
        ("421 4.7.0 MAIL sent too many times", "TOO_MANY_COMMANDS",
         "421 4.7.0 MAIL sent too many times, closing connection"),
        ("535 5.7.8 Authentication credentials invalid", "AUTH_FAILED", "535 5.7.8 Authentication credentials invalid"),
    ],
)  # fmt: skip
def test_a_text_of_aiosmtpd_becomes_its_table_entry(text: str, name: str, line: str) -> None:
    answer = translate(text)
    assert answer.reply is replies.all_replies()[name]
    assert str(answer) == line


def test_a_text_no_table_entry_knows_is_sent_as_written_and_named_unlisted(caplog: pytest.LogCaptureFixture) -> None:
    answer = translate("554 Command refused due to lack of security")
    assert str(answer) == "554 Command refused due to lack of security"
    assert (answer.reply.name, answer.code, answer.refused) == ("UNLISTED", 554, True)
    assert "not in the reply table" in caplog.text

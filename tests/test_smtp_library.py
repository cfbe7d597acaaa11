"""aiosmtpd's own reply texts are all translated to the reply table (gateway.smtp.library).

This fails, naming the text, when an aiosmtpd release writes a reply the table does not know.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re

import aiosmtpd.smtp
import pytest

from gateway import replies
from gateway.smtp import library

VERSION = importlib.metadata.version("aiosmtpd")


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

"""aiosmtpd's own reply texts, translated to the reply table.

In: a reply text aiosmtpd 1.4 writes itself. Out: the table's
:class:`~gateway.replies.Answer` for it (:func:`translate`); :func:`status`,
for the two places where aiosmtpd's types say ``str`` of what it only hands
to ``push``.

aiosmtpd still writes some replies itself, as text: ``"503 Error: need RCPT
command"``, ``"221 Bye"``, ``"500 Error: command "X" not recognized"``...
:func:`translate` reads those texts, the library's words and never the
gateway's, once, with the table below (regular expressions for the ones with
parts that vary). A text it does not know (a newer aiosmtpd) is sent as
written, logged, and counted under the name ``UNLISTED``; the SMTP tests fail
on it (every reply they see must be in the table).
"""

from __future__ import annotations

import logging
import re
import typing

from gateway import replies
from gateway.replies import Answer, Reply

log = logging.getLogger("gateway.smtp")


def status(answer: Answer) -> str:
    """``answer`` where aiosmtpd's types say ``str``: the result of ``handle_exception`` and
    ``AuthResult.message`` go to ``push`` unchanged (aiosmtpd 1.4 ``_handle_client`` and ``smtp_AUTH``)."""
    return typing.cast(str, answer)


# -- aiosmtpd's own reply texts -> the reply table --------------------------------

# Texts aiosmtpd writes that are, word for word, a reply of the table.
_SAME: dict[str, Reply] = {
    "235 2.7.0 Authentication successful": replies.AUTH_OK,
    "535 5.7.8 Authentication credentials invalid": replies.AUTH_FAILED,
    "538 5.7.11 Encryption required for requested authentication mechanism": replies.ENCRYPTION_REQUIRED,
    "504 5.5.4 Unrecognized authentication type": replies.AUTH_MECHANISM,
    "530 5.7.0 Authentication required": replies.AUTH_REQUIRED,
}
# The others (the first match wins).
_TEXTS: tuple[tuple[re.Pattern[str], Reply], ...] = tuple(
    (re.compile(pattern), reply)
    for pattern, reply in [
        (r"220 (?P<hostname>\S+) fax-gateway ESMTP", replies.GREETING),
        (r"220 Ready to start TLS", replies.TLS_READY),
        (r"250 OK", replies.OK),
        (r"221 Bye", replies.BYE),
        (r"354 End data with <CR><LF>\.<CR><LF>", replies.START_DATA),
        (r"250 Syntax: (?P<usage>.*)", replies.HELP_SYNTAX),
        (r"250 Supported commands: (?P<commands>.*)", replies.HELP),
        (r"501 Supported commands: (?P<commands>.*)", replies.HELP_UNKNOWN),
        (r"252 Cannot VRFY .*", replies.CANNOT_VRFY),
        (r"500 Error: command .* not recognized", replies.UNKNOWN_COMMAND),
        (r"500 Line too long .*", replies.LINE_TOO_LONG),
        (r"500 Error: \(.*|500 Error: Cannot describe error", replies.ERROR),
        (r"500 (?:Error: bad syntax|Command line too long|Error: strict ASCII mode)", replies.BAD_COMMAND),
        (r"501 Syntax: (?P<usage>.*)", replies.COMMAND_SYNTAX),
        (r"501 (?:Not enough value|Too many values)", replies.COMMAND_SYNTAX),
        (r"501 Error: BODY can only be .*", replies.BAD_BODY),
        (r"501 Error: SMTPUTF8 .*", replies.SMTPUTF8_UNSUPPORTED),
        (r"501 5\.7\.0 Auth aborted", replies.AUTH_ABORTED),
        (r"501 5\.5\.2 Can't (?:decode base64|split auth value)", replies.AUTH_BAD_BASE64),
        (r"502 5\.5\.1 Too many unrecognized commands.*", replies.TOO_MANY_UNKNOWN),
        (r"502 (?:EXPN not implemented|Could not VRFY .*)", replies.NOT_IMPLEMENTED),
        (r"503 Error: send \w+ first", replies.NEED_HELO),
        (r"503 Error: need MAIL command", replies.NEED_MAIL),
        (r"503 Error: need RCPT command", replies.NEED_RCPT),
        (r"503 Error: nested MAIL command", replies.NESTED_MAIL),
        (r"503 Already authenticated", replies.ALREADY_AUTHENTICATED),
        (r"552 Error: .*", replies.MESSAGE_TOO_BIG),
        (r"553 5\.1\.3 Error: malformed address", replies.BAD_SENDER_SYNTAX),
        (r"555 (?:MAIL FROM|RCPT TO) parameters not recognized or not implemented", replies.PARAMETERS_UNKNOWN),
        (r"454 TLS not available", replies.TLS_UNAVAILABLE),
        (r"421 4\.7\.0 (?P<command>\S+) sent too many times", replies.TOO_MANY_COMMANDS),
    ]
)
_CODE = re.compile(r"(?P<code>[2-5][0-9][0-9]) (?P<text>.*)", re.S)


def translate(text: str, *, max_line: int, max_size: int) -> Answer:
    """The table's answer for a reply ``text`` aiosmtpd wrote (the limits fill LINE_TOO_LONG and MESSAGE_TOO_BIG)."""
    if (same := _SAME.get(text)) is not None:
        return same.answer()
    for pattern, reply in _TEXTS:
        if m := pattern.fullmatch(text):
            limit = max_line if reply is replies.LINE_TOO_LONG else max_size
            values: dict[str, object] = {"limit": limit, "usage": "see HELP", "command": "a command"}
            return reply.format(**(values | {k: v for k, v in m.groupdict().items() if v}))
    log.warning("aiosmtpd reply not in the reply table, sent as it is: %r", replies.clean(text))
    m = _CODE.fullmatch(text)
    code, rest = (int(m["code"]), m["text"]) if m else (500, text)
    return Answer(Reply(code, "", rest, name="UNLISTED"), rest.encode("ascii", "replace").decode("ascii"))

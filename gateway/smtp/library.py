"""What the gateway takes from aiosmtpd and asyncio beyond their public API, in one place.

In: aiosmtpd 1.4.x (pyproject.toml bounds it to the releases the tests ran:
``aiosmtpd>=1.4.6,<1.5``) and asyncio's stream reader and socket transports.
Out: :class:`Protocol`, aiosmtpd's ``SMTP`` with the private parts the gateway
needs under public names; :func:`translate`, which turns a reply text aiosmtpd
writes itself into an entry of the reply table; :func:`status`, for the two
places where aiosmtpd's types say ``str`` of what it only hands to ``push``;
:func:`unread`, :func:`buffered` and :func:`set_read_size` for asyncio. :data:`PRIVATE` lists
every private name used here with its kind; tests/test_smtp_library.py checks
each against the installed releases and fails naming the one that changed.

Why each private name is needed (all of aiosmtpd's are on ``aiosmtpd.smtp.SMTP``):

- ``_create_envelope`` (method, overridden): a transaction's envelope is the
  gateway's ``FaxEnvelope`` (what MAIL and RCPT decided rides on it).
- ``_call_handler_hook`` (method, overridden and called): no idle timeout while
  a hook runs (spooling a message may outlast ``idle_timeout``); and the MAIL,
  RCPT and DATA commands the gateway rewrites call the hooks as aiosmtpd does.
- ``_timeout_cb`` (method, overridden): an idle session hears 421 4.4.2 before
  it is closed (aiosmtpd closes without a word), and never while a hook runs.
- ``_reset_timeout`` (method, overridden and called), ``_timeout_handle``
  (attribute): aiosmtpd restarts its timer at connect and before every
  recognised command; the gateway restarts it only when the session moves
  forward (NOOP, RSET, HELP, VRFY... put the deadline back where it was), on
  the bytes of DATA against the DATA bounds, never on the bytes of an
  unfinished command line, and stops it while a hook runs.
- ``_timeout_duration`` (attribute): the idle timeout, for the log line.
- ``_authenticate`` (method, overridden): takes the credentials aiosmtpd parsed
  from AUTH PLAIN or LOGIN; the password is checked afterwards in a thread
  (scrypt), which aiosmtpd's synchronous authenticator cannot do.
- ``_strip_command_keyword`` (method): RCPT's argument is cut after ``TO:``
  exactly as aiosmtpd does for MAIL.
- ``_original_transport`` (attribute): set once STARTTLS replaced the
  transport, so that the second ``connection_made`` is told from the first;
  and closed when a STARTTLS handshake never comes (asyncio then ends the TLS
  layer without telling the session, which would wait forever).
- ``_auth_require_tls`` (attribute): a trusted network may allow AUTH without
  TLS; aiosmtpd takes this at construction, before the client's address is known.
- ``_handler_coroutine`` (attribute): the session's task; cancelled when the
  gateway closes the session, so that commands already buffered never run.
- ``_reader``, ``_writer`` (attributes, set once connected): DATA is read from
  the reader in chunks (:mod:`gateway.smtp.data`); the writer is closed when
  the client goes away during DATA, as aiosmtpd does.
- ``asyncio.StreamReader._buffer`` (attribute, a bytearray): bytes read past
  the end of DATA are pipelined commands and go back into the reader, which
  has no ``unread``; and when the idle timer runs out, bytes waiting there are
  a command line that never ended.
- ``max_size`` of asyncio's socket transports (attribute; not underscored but
  not API either): how much one wake-up reads from a socket. Optional: a
  transport without it keeps asyncio's own size.

aiosmtpd still writes some replies itself, as text: ``"503 Error: need RCPT
command"``, ``"221 Bye"``, ``"500 Error: command "X" not recognized"``...
:func:`translate` reads those texts, the library's words and never the
gateway's, once, with the table below (regular expressions for the ones with
parts that vary). A text it does not know (a newer aiosmtpd) is sent as
written, logged, and counted under the name ``UNLISTED``; the SMTP tests fail
on it (every reply they see must be in the table).
"""

from __future__ import annotations

import asyncio
import logging
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope

from gateway import replies
from gateway.replies import Answer, Reply
from gateway.text import clean

log = logging.getLogger("gateway.smtp")


@dataclass(frozen=True)
class Private:
    """One name used beyond the public API: where it lives and what it must be."""

    owner: Literal["SMTP", "SMTP session", "StreamReader", "socket transport"]
    name: str
    kind: Literal["method", "attribute"]


PRIVATE = (
    Private("SMTP", "_create_envelope", "method"),
    Private("SMTP", "_call_handler_hook", "method"),
    Private("SMTP", "_timeout_cb", "method"),
    Private("SMTP", "_reset_timeout", "method"),
    Private("SMTP", "_authenticate", "method"),
    Private("SMTP", "_strip_command_keyword", "method"),
    # Set by SMTP.__init__:
    Private("SMTP", "_timeout_handle", "attribute"),
    Private("SMTP", "_timeout_duration", "attribute"),
    Private("SMTP", "_original_transport", "attribute"),
    Private("SMTP", "_auth_require_tls", "attribute"),
    Private("SMTP", "_handler_coroutine", "attribute"),
    # Set once a client is connected:
    Private("SMTP session", "_reader", "attribute"),
    Private("SMTP session", "_writer", "attribute"),
    Private("StreamReader", "_buffer", "attribute"),
    Private("socket transport", "max_size", "attribute"),
)


class Protocol(SMTP):
    """aiosmtpd's SMTP; a subclass overrides the public names here, never the private ones."""

    # -- private methods aiosmtpd calls, each handing over to a public one -----

    def _create_envelope(self) -> Envelope:
        return self.new_envelope()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        return await self.call_hook(command, *args)

    def _timeout_cb(self) -> None:
        self.idle_timed_out()

    def _reset_timeout(self, duration: float | None = None) -> None:
        self.command_received()

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return self.authenticate(mechanism, auth_data)

    def new_envelope(self) -> Envelope:
        """The envelope of a new transaction."""
        return SMTP._create_envelope(self)

    async def call_hook(self, command: str, *args: Any) -> Any:
        """The handler's ``handle_<command>`` hook's answer; ``MISSING`` if it has none."""
        return await SMTP._call_handler_hook(self, command, *args)

    def idle_timed_out(self) -> None:
        """The idle timer ran out (aiosmtpd closes the connection)."""
        SMTP._timeout_cb(self)  # type: ignore[no-untyped-call]  # untyped in aiosmtpd 1.4

    def authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """AUTH PLAIN or LOGIN parsed the client's credentials (``auth_data``: a ``LoginPassword``)."""
        return SMTP._authenticate(self, mechanism, auth_data)

    def command_received(self) -> None:
        """A recognised command is about to run, or the client has just connected (aiosmtpd restarts its timer)."""
        self.restart_idle_timer()

    # -- private state and helpers --------------------------------------------

    @property
    def tls_started(self) -> bool:
        """Whether STARTTLS replaced the transport."""
        return self._original_transport is not None

    @property
    def plain_transport(self) -> asyncio.BaseTransport | None:
        """The TCP transport under TLS once STARTTLS replaced it (None before)."""
        transport: asyncio.BaseTransport | None = self._original_transport
        return transport

    def allow_auth_without_tls(self) -> None:
        self._auth_require_tls = False

    def restart_idle_timer(self, seconds: float | None = None) -> None:
        """The timer runs out in ``seconds`` (None: the idle timeout), calling ``idle_timed_out``."""
        SMTP._reset_timeout(self, seconds)

    def stop_idle_timer(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    @property
    def idle_seconds(self) -> float:
        return float(self._timeout_duration)

    @property
    def session_task(self) -> asyncio.Task[None] | None:
        """The task that reads and runs the client's commands."""
        return self._handler_coroutine

    def strip_keyword(self, keyword: str, arg: str) -> str | None:
        """``arg`` after ``keyword`` (any case), stripped; None if it does not start with it."""
        return self._strip_command_keyword(keyword, arg)

    @property
    def reader(self) -> asyncio.StreamReader:
        return self._reader

    @property
    def writer(self) -> asyncio.StreamWriter:
        return self._writer


def status(answer: Answer) -> str:
    """``answer`` where aiosmtpd's types say ``str``: the result of ``handle_exception`` and
    ``AuthResult.message`` go to ``push`` unchanged (aiosmtpd 1.4 ``_handle_client`` and ``smtp_AUTH``)."""
    return typing.cast(str, answer)


def unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put ``data`` back in front of what ``reader`` holds."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    buffer[0:0] = data


def buffered(reader: asyncio.StreamReader) -> int:
    """How many bytes ``reader`` holds that nobody has read yet."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return len(buffer)


def set_read_size(transport: asyncio.BaseTransport, size: int) -> None:
    """Read at most ``size`` bytes from the socket per wake-up (asyncio's default: 256 KiB)."""
    if hasattr(transport, "max_size"):
        transport.max_size = size


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
    log.warning("aiosmtpd reply not in the reply table, sent as it is: %r", clean(text))
    m = _CODE.fullmatch(text)
    code, rest = (int(m["code"]), m["text"]) if m else (500, text)
    return Answer(Reply(code, "", rest, name="UNLISTED"), rest.encode("ascii", "replace").decode("ascii"))

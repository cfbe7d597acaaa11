"""The SMTP front door: the aiosmtpd server, its limits and its replies.

In: TCP connections on every listener (``[[smtp.listeners]]``, or the one
``smtp.listen``; see :mod:`gateway.smtp.tls`), and the
:class:`~gateway.smtp.intake.Handler` the daemon built for them. Out: messages spooled by that handler (which
decides every MAIL, RCPT and DATA), and
one reply from :mod:`gateway.replies` for every command; each one pushed in
the session also goes to ``SmtpServer.on_reply`` as its
:class:`~gateway.replies.Answer` (the metrics count refusals by name). This
module owns what happens around those decisions:

- connection slots (:mod:`gateway.smtp.slots`): 421 4.7.0 at connect past
  ``max_connections``, past the slots not ``reserved_connections`` for a
  client that is neither from a trusted network nor authenticated, or past
  ``max_connections_per_address`` from its address;
- 421 4.7.0 past ``max_errors`` refused commands, past ``max_commands`` uses
  of one command, past ``max_refused_mail`` MAIL commands refused because the
  client or sender may not send (530 5.7.0, 550 5.7.1: also when that refusal
  waits for RCPT);
- 421 4.4.2 after ``idle_timeout`` without a command that moves the session
  forward (NOOP, RSET, HELP, VRFY, EXPN, a repeated EHLO/HELO and unknown
  commands do not, nor do the bytes of a command line that never ends:
  ``COMMAND_TIMEOUT`` then); in DATA, after ``idle_timeout`` of silence, once
  the section has taken ``data_timeout`` (``DATA_TIMEOUT``), or once it falls
  behind ``data_min_rate`` bytes a second after its first ``idle_timeout``
  (``DATA_TOO_SLOW``); 421 4.3.2 on shutdown;
- per listener: plain SMTP, STARTTLS, or implicit TLS (a :class:`TlsHandshake`
  first: a handshake that fails or takes longer than ``idle_timeout`` is logged
  once and closed); certificates are read again by ``reload_certificates``
  (SIGHUP);
- lines up to ``max_line_length`` (legacy mailers send base64 on one line),
  SIZE, 8BITMIME, PIPELINING, STARTTLS on a STARTTLS listener, AUTH
  PLAIN/LOGIN after TLS (538 5.7.11 before, unless the client's trusted network
  allows plaintext AUTH); 535 5.7.8 for bad credentials. AUTH as printers
  speak it: mechanism names in any case, an initial response or not, LOGIN's
  ``Username:``/``Password:`` prompts, and ``AUTH=LOGIN PLAIN`` in EHLO too
  (the pre-RFC 2554 form some old clients look for);
- 451 4.3.0 for any unexpected error: the client never sees the exception,
  the log has it with the session id (STORE_UNAVAILABLE when the PostgreSQL
  store cannot be reached, as MAIL and RCPT ask it);
- aiosmtpd's own answers are translated to entries of the reply table
  (:mod:`gateway.smtp.library`, which is also the only way to aiosmtpd's
  private names).

The server runs on the daemon's event loop (``loop.create_server``), not in a
thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, TLSSetupException, syntax

from gateway import replies
from gateway.replies import Answer, Hello, Reply
from gateway.settings import Listener, Settings
from gateway.smtp import library, tls
from gateway.smtp.access import check_user, client_network
from gateway.smtp.data import read_data
from gateway.smtp.intake import Connection, FaxEnvelope, Handler, fault_reply
from gateway.smtp.recipients import split_path
from gateway.smtp.slots import Slots
from gateway.store import new_id

log = logging.getLogger("gateway.smtp")

_NULL_SENDER = re.compile(r"FROM:\s*<>(?:\s+(?P<params>.*))?", re.IGNORECASE)

# Bytes read from a client's socket per wake-up.
READ_SIZE = 64 * 1024
# Refusals that say the client or its sender may not send: they count against max_refused_mail.
MAY_NOT_SEND = frozenset({replies.NOT_PERMITTED, replies.AUTH_REQUIRED, replies.SENDER_NOT_PERMITTED})


def _same_syntax(parent: Any) -> Callable[[Any], Any]:
    """aiosmtpd's HELP text of ``parent`` for the method that overrides it."""
    return syntax(parent.__smtp_syntax__, parent.__smtp_syntax_extended__, parent.__smtp_syntax_when__)


class GatewaySMTP(library.Protocol):
    """One client connection: aiosmtpd's protocol with the gateway's limits."""

    # AUTH LOGIN's prompts as every other server sends them (base64 in the 334 lines);
    # aiosmtpd's own ("User Name\0") make some printers abandon the login.
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(self, server: SmtpServer, door: Door, loop: asyncio.AbstractEventLoop) -> None:
        settings = server.settings.smtp
        self.server = server
        self.door = door
        implicit = door.listener.tls == "implicit"
        starttls = door.context if door.listener.tls == "starttls" else None
        self.conn = Connection(id=new_id(), listener=door.listener.name, tls=implicit,
                               tls_possible=implicit or starttls is not None)  # fmt: skip
        self.errors = 0
        self.refused_mail = 0  # refusals in MAY_NOT_SEND
        self.in_data = False
        # The idle timer: when it runs out (loop time) and what the client then hears; and the same
        # before the command that is running, for one that moves nothing forward to put back.
        self._deadline = 0.0
        self._expiry: Reply = replies.IDLE_TIMEOUT
        self._before: tuple[float, Reply] = (0.0, replies.IDLE_TIMEOUT)
        self._data_start = 0.0
        self._data_bytes = 0
        self._refused = False
        self._hook_running = False
        self._credentials: LoginPassword | None = None
        self._handshake_logged = False
        # Read by SMTP.__init__ for the StreamReader limit: the longest line.
        self.line_length_limit = settings.max_line_length
        super().__init__(
            server.handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,  # to read non-ASCII addresses and refuse them precisely
            hostname=settings.hostname,
            ident="fax-gateway ESMTP",
            tls_context=starttls,
            timeout=settings.idle_timeout,
            auth_require_tls=True,
            auth_exclude_mechanism=() if settings.users else ("PLAIN", "LOGIN"),
            command_call_limit=settings.max_commands,
            loop=loop,
        )
        # aiosmtpd keeps these on the class: give each connection its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)

    def new_envelope(self) -> FaxEnvelope:
        return FaxEnvelope()

    # -- connection life ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        after_starttls = self.tls_started
        if not after_starttls:
            peer = transport.get_extra_info("peername")
            self.conn.ip = str(peer[0]) if isinstance(peer, tuple) else ""
            self.conn.network = client_network(self.conn.ip, self.server.settings.smtp.trusted_networks)
            refusal = self.server.admit(self)
            if refusal is not None:
                self._refused = True
                log.warning("session %s: %s refused, %d connections open (%d from outside the trusted networks)",
                            self.conn.id, self.conn.ip, len(self.server.slots),
                            self.server.slots.unvouched())  # fmt: skip
                answer = refusal.format(client=self.conn.ip)
                typing.cast(asyncio.WriteTransport, transport).write(f"{answer}\r\n".encode())
                transport.close()
                return
        super().connection_made(transport)
        # asyncio reads up to 256 KiB per wake-up of a socket; with many sessions sending
        # at once, smaller reads keep each turn of the event loop short.
        library.set_read_size(transport, READ_SIZE)
        if after_starttls:
            self.conn.user = None  # RFC 3207 4.2: forget everything learned before TLS
            self.conn.tls = True
            self.server.slots.vouch(self, self.conn.network is not None)
            return
        if self.conn.tls:  # implicit TLS: encrypted from the first byte, AUTH may follow at once
            self.allow_auth_without_tls()
        elif self.conn.network is not None and self.conn.network.plaintext_auth:
            self.allow_auth_without_tls()
            self.conn.tls_possible = True
        where = f" on {self.conn.listener}" if len(self.server.doors) > 1 else ""
        log.info("session %s: connection from %s%s", self.conn.id, self.conn.ip, where)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.server.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        result: bool | None = super().eof_received()
        return result

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.in_data and not self._hook_running:
            self._data_progress(len(data))
        # Outside DATA bytes alone move nothing: a command line is due whole within the idle timeout.
        super().data_received(data)

    # -- the idle timer -------------------------------------------------------

    def _arm(self, seconds: float, expiry: Reply) -> None:
        self._deadline = self.loop.time() + seconds
        self._expiry = expiry
        self.restart_idle_timer(max(seconds, 0.001))

    def moved_forward(self) -> None:
        """The session moved forward: it may now be silent for the idle timeout."""
        self._arm(self.idle_seconds, replies.IDLE_TIMEOUT)

    def command_received(self) -> None:
        # At connect and before each recognised command; see _moved_nothing for those that do not count.
        self._before = (self._deadline, self._expiry)
        self.moved_forward()

    def _moved_nothing(self) -> None:
        """The command that just ran moved nothing forward: the idle deadline stays where it was before it."""
        if self.transport is None or self._hook_running:
            return
        deadline, expiry = self._before
        self._arm(deadline - self.loop.time(), expiry)

    def _data_progress(self, received: int) -> None:
        """``received`` more bytes of DATA: the timer runs out at the first of the DATA bounds."""
        smtp = self.server.settings.smtp
        self._data_bytes += received
        elapsed = self.loop.time() - self._data_start
        seconds, expiry = self.idle_seconds, replies.IDLE_TIMEOUT
        if smtp.data_timeout - elapsed < seconds:
            seconds, expiry = smtp.data_timeout - elapsed, replies.DATA_TIMEOUT
        if smtp.data_min_rate:  # behind the rate after a first idle timeout's grace
            behind = self.idle_seconds + self._data_bytes / smtp.data_min_rate - elapsed
            if behind < seconds:
                seconds, expiry = behind, replies.DATA_TOO_SLOW
        self._arm(seconds, expiry)

    def idle_timed_out(self) -> None:
        if self.transport is None or self._hook_running:
            return
        smtp = self.server.settings.smtp
        expiry = self._expiry
        if self.tls_started and not self.conn.tls:  # STARTTLS said 220, and no handshake came
            self._handshake_logged = True
            log.warning("session %s: STARTTLS handshake with %s failed, connection closed: %s (idle for %g s)",
                        self.conn.id, self.conn.ip, "no handshake", self.idle_seconds)  # fmt: skip
        elif expiry is replies.DATA_TIMEOUT:
            log.warning("session %s: DATA from %s not finished within %g s (%d bytes), closing", self.conn.id,
                        self.conn.ip, smtp.data_timeout, self._data_bytes)  # fmt: skip
        elif expiry is replies.DATA_TOO_SLOW:
            log.warning("session %s: DATA from %s slower than %d bytes/s (%d bytes in %.0f s), closing", self.conn.id,
                        self.conn.ip, smtp.data_min_rate, self._data_bytes,
                        self.loop.time() - self._data_start)  # fmt: skip
        elif not self.in_data and library.buffered(self.reader):
            expiry = replies.COMMAND_TIMEOUT
            log.warning("session %s: command line from %s not completed within %g s, closing", self.conn.id,
                        self.conn.ip, self.idle_seconds)  # fmt: skip
        else:
            log.info("session %s: idle for %.0f s, closing", self.conn.id, self.idle_seconds)
        self.hang_up(expiry.format(seconds=f"{smtp.data_timeout:g}", rate=smtp.data_min_rate))

    def _drop_unfinished_tls(self) -> None:
        # asyncio ends a TLS layer closed mid-handshake without telling the session:
        # close the TCP connection and end the session here.
        plain = self.plain_transport
        if plain is not None:
            plain.close()
        if self.transport is not None:
            self.connection_lost(None)

    def hang_up(self, reply: Reply | Answer) -> None:
        """Say ``reply`` and close, from outside the session's own task."""
        if self.tls_started and not self.conn.tls:  # mid-handshake after STARTTLS: nothing can be said
            self._drop_unfinished_tls()
        elif self.transport is not None:
            answer = reply.answer() if isinstance(reply, Reply) else reply
            typing.cast(asyncio.WriteTransport, self.transport).write(f"{answer}\r\n".encode())
            self.transport.close()

    async def call_hook(self, command: str, *args: Any) -> Any:
        # No idle timeout while the gateway itself is working on the message.
        self._hook_running = True
        self.stop_idle_timer()
        try:
            return await super().call_hook(command, *args)
        finally:
            self._hook_running = False
            if self.transport is not None:
                self.moved_forward()

    # -- replies --------------------------------------------------------------

    async def push(self, status: Answer | Hello | str | bytes) -> None:
        """Send one reply: the gateway's own (an Answer, or the EHLO/HELO lines), or aiosmtpd's.

        aiosmtpd hands a hook's return value to ``push`` unchanged, so the
        handler's answers arrive here as they were made; what aiosmtpd writes
        itself comes as text and is translated to the table (bytes: the AUTH
        challenges, sent as they are).
        """
        if isinstance(status, bytes):  # AUTH challenges
            await super().push(status)
            return
        if isinstance(status, str):
            smtp = self.server.settings.smtp
            status = library.translate(status, max_line=smtp.max_line_length, max_size=smtp.max_message_size)
        # Replies are ASCII: nothing a client sent may reach them otherwise.
        await super().push(str(status).encode("ascii", "replace"))
        if isinstance(status, Hello):
            return
        self.server.on_reply(status)
        if status.code == 421 or status.reply is replies.TOO_MANY_UNKNOWN:  # the session ends here
            self._close_from_inside()
            return
        if status.reply in MAY_NOT_SEND:
            self.refused_mail += 1
            if self.refused_mail >= self.server.settings.smtp.max_refused_mail:
                log.warning("session %s: %s refused %d times (%s), closing", self.conn.id, self.conn.ip,
                            self.refused_mail, status.reply.name)  # fmt: skip
                await super().push(str(replies.TOO_MANY_REFUSALS.answer()).encode("ascii"))
                self._close_from_inside()
                return
        if status.refused:
            self.errors += 1
            if self.errors >= self.server.settings.smtp.max_errors:
                log.warning("session %s: %d errors, closing", self.conn.id, self.errors)
                await super().push(str(replies.TOO_MANY_ERRORS.answer()).encode("ascii"))
                self._close_from_inside()

    def _close_from_inside(self) -> None:
        # Close and stop reading: commands already buffered must not run.
        if self.transport is not None:
            self.transport.close()
        current = asyncio.current_task()
        if current is not None and current is self.session_task:
            current.cancel()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # aiosmtpd closes the connection after this
            if not self._handshake_logged:
                self._handshake_logged = True
                why = handshake_problem(error.__cause__ or error, self.idle_seconds)
                log.warning("session %s: STARTTLS handshake with %s failed, connection closed: %s", self.conn.id,
                            self.conn.ip, why)  # fmt: skip
            return ""  # not sent: there is no channel left to say it on
        # The job store unavailable (MAIL and RCPT ask it) is said as such; anything else is an internal error.
        return library.status(fault_reply(error, f"session {self.conn.id}: unexpected error"))

    # -- commands -------------------------------------------------------------

    # Commands that move nothing forward: a session that only sends these is idle.

    @_same_syntax(SMTP.smtp_NOOP)
    async def smtp_NOOP(self, arg: str) -> None:
        await super().smtp_NOOP(arg)
        self._moved_nothing()

    @_same_syntax(SMTP.smtp_RSET)
    async def smtp_RSET(self, arg: str) -> None:
        await super().smtp_RSET(arg)
        self._moved_nothing()

    @_same_syntax(SMTP.smtp_HELP)
    async def smtp_HELP(self, arg: str) -> None:
        await super().smtp_HELP(arg)
        self._moved_nothing()

    @_same_syntax(SMTP.smtp_VRFY)
    async def smtp_VRFY(self, arg: str) -> None:
        await super().smtp_VRFY(arg)
        self._moved_nothing()

    async def smtp_EXPN(self, arg: str) -> None:
        await super().smtp_EXPN(arg)
        self._moved_nothing()

    @_same_syntax(SMTP.smtp_EHLO)
    async def smtp_EHLO(self, hostname: str) -> None:
        again = self.session is not None and self.session.host_name is not None
        await super().smtp_EHLO(hostname)
        if again:  # the first EHLO (and the one after STARTTLS) moves forward, the others not
            self._moved_nothing()

    @_same_syntax(SMTP.smtp_HELO)
    async def smtp_HELO(self, hostname: str) -> None:
        again = self.session is not None and self.session.host_name is not None
        await super().smtp_HELO(hostname)
        if again:
            self._moved_nothing()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert isinstance(envelope, FaxEnvelope)
        if envelope.sender_given:
            await self.push(replies.NESTED_MAIL.answer())
            return
        m = _NULL_SENDER.fullmatch((arg or "").strip())
        if m is None:
            await super().smtp_MAIL(arg)  # parses the sender and its parameters, then calls handle_MAIL
            return
        # aiosmtpd answers the null sender with a syntax error; the handler explains it instead.
        options = (m["params"] or "").upper().split()
        await self.push(await self.call_hook("MAIL", "", options))

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        # Replaces aiosmtpd's lenient address parsing: the handler judges the
        # address exactly as written (see gateway.smtp.recipients.split_path).
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert isinstance(envelope, FaxEnvelope)
        if not envelope.sender_given:
            await self.push(replies.NEED_MAIL.answer())
            return
        rest = self.strip_keyword("TO:", arg or "")
        if rest is None:
            await self.push(replies.COMMAND_SYNTAX.format(usage="RCPT TO:<number@fax-domain>"))
            return
        parsed = split_path(rest)
        if isinstance(parsed, Answer):
            await self.push(parsed)
            return
        address, params = parsed
        if params:
            await self.push(replies.PARAMETERS_UNKNOWN.answer())
            return
        await self.push(await self.call_hook("RCPT", address, []))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd's checks and replies, with the data read in chunks (gateway.smtp.data).
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, FaxEnvelope)
        if not envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT.answer())
            return
        if arg:
            await self.push(replies.COMMAND_SYNTAX.format(usage="DATA"))
            return
        await self.push(replies.START_DATA.answer())
        smtp = self.server.settings.smtp
        self.in_data = True
        self._data_start, self._data_bytes = self.loop.time(), 0
        self._data_progress(0)
        try:
            data = await read_data(self.reader, max_size=smtp.max_message_size, max_line=smtp.max_line_length)
        except asyncio.CancelledError:
            log.info("session %s: connection lost during DATA", self.conn.id)
            self.writer.close()
            raise
        finally:
            self.in_data = False
        self.moved_forward()
        if data.problem == "line":
            status = replies.LINE_TOO_LONG.format(limit=smtp.max_line_length)
        elif data.problem == "size":
            status = replies.MESSAGE_TOO_BIG.format(limit=smtp.max_message_size)
        else:
            envelope.content = envelope.original_content = data.content
            status = await self.call_hook("DATA")
        self.envelope = self.new_envelope()  # a new transaction may start
        await self.push(status)
        if self.server.stopping:
            await self.push(replies.SHUTTING_DOWN.answer())

    # -- AUTH: aiosmtpd parses PLAIN/LOGIN; the password check runs in a thread --

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        # Mechanism names are case-insensitive (RFC 4954 4): printers send "AUTH login".
        mechanism, _, rest = (arg or "").strip().partition(" ")
        await super().smtp_AUTH(f"{mechanism.upper()} {rest}".strip())

    def authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._credentials = auth_data
        return AuthResult(success=False, handled=True)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_credentials(await super().auth_LOGIN(_, args))

    async def _check_credentials(self, parsed: AuthResult) -> AuthResult:
        credentials, self._credentials = self._credentials, None
        if credentials is None:  # the exchange itself failed and was answered
            return parsed
        users = self.server.settings.smtp.users
        user = await asyncio.to_thread(check_user, users, credentials.login, credentials.password)
        if user is None:
            self.server.throttle.failed(self.conn.ip)
            log.warning("session %s: AUTH failed from %s", self.conn.id, self.conn.ip)
            return AuthResult(success=False, handled=False, message=library.status(replies.AUTH_FAILED.answer()))
        self.server.throttle.succeeded(self.conn.ip)
        self.conn.user = user
        self.server.slots.vouch(self)  # it now holds a slot as a trusted client would
        log.info("session %s: authenticated as %s", self.conn.id, user.name)
        return AuthResult(success=True, auth_data=user.name, message=library.status(replies.AUTH_OK.answer()))


@dataclass
class Door:
    """One listener at run time: its settings, its TLS context (reloaded on SIGHUP), its socket."""

    listener: Listener
    context: ssl.SSLContext | None = None
    server: asyncio.Server | None = None
    port: int = 0


class TlsHandshake(asyncio.Protocol):
    """An implicit-TLS connection until its handshake is done; then a :class:`GatewaySMTP` takes it over.

    The handshake is bounded by ``idle_timeout``; one that fails or stalls is
    logged once (with the client's address and the listener) and closed.
    """

    def __init__(self, server: SmtpServer, door: Door, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.door = door
        self.loop = loop
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The slot is taken here, before the handshake (the session takes it over), by the same rules.
        self.transport = transport
        slots = self.server.slots
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else "?"
        trusted = client_network(ip, self.server.settings.smtp.trusted_networks) is not None
        refusal = replies.SHUTTING_DOWN if self.server.stopping else slots.take(self, ip, vouched=trusted)
        if refusal is not None:
            log.warning("listener %s: TLS connection refused, %d connections open (%s from %s)",
                        self.door.listener.name, len(slots), refusal.name, ip)  # fmt: skip
            transport.close()
            return
        library.set_read_size(transport, READ_SIZE)
        self.server.handshakes.add(self)
        self.task = self.loop.create_task(self._handshake(typing.cast(asyncio.Transport, transport), ip))

    async def _handshake(self, transport: asyncio.Transport, ip: str) -> None:
        door, smtp = self.door, self.server.settings.smtp
        session = GatewaySMTP(self.server, door, self.loop)
        assert door.context is not None
        try:
            secure = await self.loop.start_tls(
                transport, session, door.context, server_side=True, ssl_handshake_timeout=smtp.idle_timeout
            )
        except (OSError, TimeoutError, RuntimeError, asyncio.CancelledError) as exc:
            log.warning("listener %s: TLS handshake with %s failed, connection closed: %s", door.listener.name, ip,
                        handshake_problem(exc, smtp.idle_timeout))  # fmt: skip
            transport.close()
            self.server.slots.release(self)
            return
        finally:
            self.server.handshakes.discard(self)
        if secure is None or secure.is_closing():  # pragma: no cover - gone between the handshake and here
            transport.close()
            self.server.slots.release(self)
            return
        self.server.slots.move(self, session)
        session.connection_made(secure)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.close()


def handshake_problem(exc: BaseException, timeout: float) -> str:
    """Why a TLS handshake failed, in a few words for the log."""
    if isinstance(exc, asyncio.CancelledError):
        return "the gateway is stopping"
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc.__class__.__name__} (the client's TLS version or ciphers, or not TLS at all)"
    text = str(exc)
    if "longer than" in text or isinstance(exc, TimeoutError):
        return f"no handshake within {timeout:g} s (smtp.idle_timeout)"
    return text or type(exc).__name__


class SmtpServer:
    """The listeners: ``start()`` returns once all are bound (``ports`` are then real); ``stop()`` is idempotent.

    ``port`` is the first listener's port; ``port_of(name)`` any listener's.
    """

    def __init__(self, settings: Settings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler  # decides every MAIL, RCPT and DATA; its examiner is started by whoever made it
        self.throttle = handler.throttle
        self.doors = [Door(listener) for listener in settings.smtp.effective_listeners()]
        self.sessions: set[GatewaySMTP] = set()
        self.handshakes: set[TlsHandshake] = set()
        smtp = settings.smtp
        # Held by every session, and by each implicit-TLS handshake before its session.
        self.slots = Slots(smtp.max_connections, smtp.reserved_connections, smtp.max_connections_per_address)
        self.stopping = False
        # Sees every reply of the table sent (the metrics count refusals by reply name).
        self.on_reply: Callable[[Answer], None] = lambda answer: None
        self._started = False
        self._all_closed = asyncio.Event()

    @property
    def port(self) -> int:
        """The first listener's port (0 until started)."""
        return self.doors[0].port

    @property
    def ports(self) -> dict[str, int]:
        """Each listener's real port, by name."""
        return {door.listener.name: door.port for door in self.doors}

    def port_of(self, name: str) -> int:
        return self.ports[name]

    @property
    def listening(self) -> bool:
        """Whether new connections are taken right now (for /healthz): every listener serves."""
        return (
            self._started and not self.stopping
            and all(d.server is not None and d.server.is_serving() for d in self.doors)
        )  # fmt: skip

    def admit(self, session: GatewaySMTP) -> Reply | None:
        """A slot for a new session (None), or the reply that refuses it (its ``{client}`` to fill in)."""
        if self.stopping:
            self.slots.release(session)  # the slot of its handshake, if it had one
            return replies.TOO_MANY_CONNECTIONS
        if session not in self.slots:  # an implicit-TLS session has the slot of its handshake already
            refusal = self.slots.take(session, session.conn.ip, vouched=session.conn.network is not None)
            if refusal is not None:
                return refusal
        self.sessions.add(session)
        self._all_closed.clear()
        return None

    def release(self, session: GatewaySMTP) -> None:
        self.sessions.discard(session)
        self.slots.release(session)
        if not self.sessions:
            self._all_closed.set()

    def capped(self) -> list[str]:
        """Addresses held at ``smtp.max_connections_per_address`` now (for /healthz)."""
        return self.slots.capped()

    def _load_contexts(self) -> list[ssl.SSLContext | None]:
        return [tls.server_context(d.listener) if d.listener.tls != "none" else None for d in self.doors]

    def reload_certificates(self) -> bool:
        """SIGHUP: read every listener's certificate and key again; new handshakes present them.

        Blocking for a moment (small files). When one does not load, every listener
        keeps the one it has and the error is logged; returns whether they were replaced.
        """
        try:
            contexts = self._load_contexts()
        except (OSError, ssl.SSLError) as exc:
            log.error("SIGHUP: TLS certificates not reloaded, the running ones stay: %s", exc)
            return False
        for door, context in zip(self.doors, contexts, strict=True):
            door.context = context
        names = [d.listener.name for d in self.doors if d.context is not None]
        if names:
            log.info("SIGHUP: TLS certificates reloaded for %s", ", ".join(names))
        return True

    async def start(self) -> None:
        contexts = await asyncio.to_thread(self._load_contexts)
        loop = asyncio.get_running_loop()
        try:
            for door, context in zip(self.doors, contexts, strict=True):
                door.context = context
                await self._open(door, loop)
        except BaseException:
            for door in self.doors:
                if door.server is not None:
                    door.server.close()
            raise
        self._started = True

    async def _open(self, door: Door, loop: asyncio.AbstractEventLoop) -> None:
        listener = door.listener
        factory: Callable[[], asyncio.BaseProtocol]
        if listener.tls == "implicit":
            factory = lambda: TlsHandshake(self, door, loop)  # noqa: E731
        else:
            factory = lambda: GatewaySMTP(self, door, loop)  # noqa: E731
        door.server = await loop.create_server(factory, listener.listen.host, listener.listen.port,
                                               reuse_address=True)  # fmt: skip
        door.port = door.server.sockets[0].getsockname()[1]
        if listener.legacy_tls:
            log.warning(tls.legacy_warning(listener))
        log.info("SMTP listening: %s (port %d)", tls.describe(listener), door.port)

    async def stop(self) -> None:
        """Stop accepting; sessions in DATA get ``shutdown_grace_seconds`` to finish."""
        if not self._started or self.stopping:
            return
        self.stopping = True
        for door in self.doors:
            assert door.server is not None
            door.server.close()
        for handshake in list(self.handshakes):
            handshake.close()
        for session in list(self.sessions):
            if not session.in_data:
                session.hang_up(replies.SHUTTING_DOWN)
        grace = self.settings.smtp.shutdown_grace_seconds
        deadline = asyncio.get_running_loop().time() + grace
        if self.sessions:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                log.warning("SMTP stop: %d sessions still busy after %.0f s, closing them", len(self.sessions), grace)
        for session in list(self.sessions):
            session.hang_up(replies.SHUTTING_DOWN)
        if self.handler.inflight:  # spooling continues without its client; let it commit
            remaining = max(0.1, deadline - asyncio.get_running_loop().time())
            await asyncio.wait(set(self.handler.inflight), timeout=remaining)
        for door in self.doors:
            assert door.server is not None
            await door.server.wait_closed()
        log.info("SMTP stopped")

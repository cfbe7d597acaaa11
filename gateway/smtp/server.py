"""The SMTP front door: the aiosmtpd server, its limits and its replies.

In: TCP connections on ``smtp.listen``, and the :class:`~gateway.smtp.intake.Handler`
the daemon built for them. Out: messages spooled by that handler (which
decides every MAIL, RCPT and DATA), and
one reply from :mod:`gateway.replies` for every command; each one pushed in
the session also goes to ``SmtpServer.on_reply`` as its
:class:`~gateway.replies.Answer` (the metrics count refusals by name). This
module owns what happens around those decisions:

- 421 4.7.0 past ``max_connections`` (at connect), past ``max_errors`` refused
  commands, past ``max_commands`` uses of one command; 421 4.4.2 after
  ``idle_timeout`` of silence; 421 4.3.2 on shutdown;
- lines up to ``max_line_length`` (legacy mailers send base64 on one line),
  SIZE, 8BITMIME, PIPELINING, STARTTLS when a certificate is set, AUTH
  PLAIN/LOGIN after TLS (538 5.7.11 before, unless the client's trusted network
  allows plaintext AUTH); 535 5.7.8 for bad credentials;
- 451 4.3.0 for any unexpected error: the client never sees the exception,
  the log has it with the session id;
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
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from gateway import replies
from gateway.replies import Answer, Hello, Reply
from gateway.settings import Settings
from gateway.smtp import library
from gateway.smtp.access import check_user, client_network
from gateway.smtp.data import read_data
from gateway.smtp.intake import Connection, FaxEnvelope, Handler
from gateway.smtp.recipients import split_path
from gateway.store import new_id

log = logging.getLogger("gateway.smtp")

_NULL_SENDER = re.compile(r"FROM:\s*<>(?:\s+(?P<params>.*))?", re.IGNORECASE)

# Bytes read from a client's socket per wake-up.
READ_SIZE = 64 * 1024


class GatewaySMTP(library.Protocol):
    """One client connection: aiosmtpd's protocol with the gateway's limits."""

    def __init__(self, server: SmtpServer, loop: asyncio.AbstractEventLoop) -> None:
        settings = server.settings.smtp
        self.server = server
        self.conn = Connection(id=new_id(), tls_possible=server.tls_context is not None)
        self.errors = 0
        self.in_data = False
        self._refused = False
        self._hook_running = False
        self._credentials: LoginPassword | None = None
        # Read by SMTP.__init__ for the StreamReader limit: the longest line.
        self.line_length_limit = settings.max_line_length
        super().__init__(
            server.handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,  # to read non-ASCII addresses and refuse them precisely
            hostname=settings.hostname,
            ident="fax-gateway ESMTP",
            tls_context=server.tls_context,
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
        if not after_starttls and not self.server.admit(self):
            self._refused = True
            log.warning("session %s: refused, %d connections open", self.conn.id, len(self.server.sessions))
            typing.cast(asyncio.WriteTransport, transport).write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode())
            transport.close()
            return
        super().connection_made(transport)
        # asyncio reads up to 256 KiB per wake-up of a socket; with many sessions sending
        # at once, smaller reads keep each turn of the event loop short.
        library.set_read_size(transport, READ_SIZE)
        if after_starttls:
            self.conn.user = None  # RFC 3207 4.2: forget everything learned before TLS
            return
        peer = transport.get_extra_info("peername")
        self.conn.ip = str(peer[0]) if isinstance(peer, tuple) else ""
        self.conn.network = client_network(self.conn.ip, self.server.settings.smtp.trusted_networks)
        if self.conn.network is not None and self.conn.network.plaintext_auth:
            self.allow_auth_without_tls()
            self.conn.tls_possible = True
        log.info("session %s: connection from %s", self.conn.id, self.conn.ip)

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
        if not self._hook_running:
            self.restart_idle_timer()  # idle means silent, also in the middle of DATA
        super().data_received(data)

    def idle_timed_out(self) -> None:
        if self.transport is None or self._hook_running:
            return
        log.info("session %s: idle for %.0f s, closing", self.conn.id, self.idle_seconds)
        self.hang_up(replies.IDLE_TIMEOUT)

    def hang_up(self, reply: Reply) -> None:
        """Say ``reply`` and close, from outside the session's own task."""
        if self.transport is not None:
            typing.cast(asyncio.WriteTransport, self.transport).write(f"{reply.answer()}\r\n".encode())
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
                self.restart_idle_timer()

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
        elif status.refused:
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
        log.error("session %s: unexpected error: 451", self.conn.id, exc_info=error)
        return library.status(replies.ERROR.answer())

    # -- commands -------------------------------------------------------------

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
        try:
            data = await read_data(self.reader, max_size=smtp.max_message_size, max_line=smtp.max_line_length)
        except asyncio.CancelledError:
            log.info("session %s: connection lost during DATA", self.conn.id)
            self.writer.close()
            raise
        finally:
            self.in_data = False
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
        log.info("session %s: authenticated as %s", self.conn.id, user.name)
        return AuthResult(success=True, auth_data=user.name, message=library.status(replies.AUTH_OK.answer()))


class SmtpServer:
    """The listener: ``start()`` returns once bound (``port`` is then real); ``stop()`` is idempotent."""

    def __init__(self, settings: Settings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler  # decides every MAIL, RCPT and DATA; its examiner is started by whoever made it
        self.throttle = handler.throttle
        self.tls_context: ssl.SSLContext | None = None
        self.sessions: set[GatewaySMTP] = set()
        self.port = 0
        self.stopping = False
        # Sees every reply of the table sent (the metrics count refusals by reply name).
        self.on_reply: Callable[[Answer], None] = lambda answer: None
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()

    @property
    def listening(self) -> bool:
        """Whether new connections are taken right now (for /healthz)."""
        return self._server is not None and self._server.is_serving() and not self.stopping

    def admit(self, session: GatewaySMTP) -> bool:
        if self.stopping or len(self.sessions) >= self.settings.smtp.max_connections:
            return False
        self.sessions.add(session)
        self._all_closed.clear()
        return True

    def release(self, session: GatewaySMTP) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._all_closed.set()

    def _load_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.smtp.tls_cert, self.settings.smtp.tls_key)
        return context

    async def start(self) -> None:
        smtp = self.settings.smtp
        if smtp.tls_cert:
            self.tls_context = await asyncio.to_thread(self._load_tls)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GatewaySMTP(self, loop), smtp.listen.host, smtp.listen.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMTP listening on %s port %d", smtp.listen.host, self.port)

    async def stop(self) -> None:
        """Stop accepting; sessions in DATA get ``shutdown_grace_seconds`` to finish."""
        if self._server is None or self.stopping:
            return
        self.stopping = True
        self._server.close()
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
        await self._server.wait_closed()
        log.info("SMTP stopped")

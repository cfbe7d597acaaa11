"""A real SMTP sink (aiosmtpd) on loopback, standing in for the outbound relay.

It records every message it accepts, lets a test await "n messages
received", can be taken down (nothing listens: connection refused) and
brought back on the same port, can refuse chosen recipients with a 5xx or a
4xx or answer 4xx to every recipient, can drop a connection once after its
k-th mail, and can require AUTH and offer STARTTLS.

A test asks for the ``sink`` fixture (a plugin of ``tests/conftest.py``: never imported).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_user: str
    tls: bool

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class Sink:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.refused: set[str] = set()  # recipients answered 550 5.1.1
        self.tempfail = False  # every recipient answered 451 4.3.0
        self.deferred: set[str] = set()  # recipients answered 451 4.2.0
        self.drop_after = 0  # when set, the next connection to carry that many mails is closed after the last 250
        self._carried: dict[int, int] = {}  # mails per connection (by id of its SMTP instance)
        self.users: dict[str, str] = {}  # AUTH required when set
        self.tls_context: ssl.SSLContext | None = None
        self.port = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._changed = asyncio.Event()

    # aiosmtpd handler hooks
    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:  # fmt: skip
        if self.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:  # fmt: skip
        if self.tempfail:
            return "451 4.3.0 Try again later"
        if address.lower() in self.refused:
            return "550 5.1.1 No such user here"
        if address.lower() in self.deferred:
            return "451 4.2.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        auth = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else ""
        self.messages.append(
            Received(
                str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content, auth, session.ssl is not None
            )  # fmt: skip
        )
        self._changed.set()
        carried = self._carried[id(server)] = self._carried.get(id(server), 0) + 1
        if self.drop_after and carried >= self.drop_after and server.transport is not None:
            self.drop_after = 0  # once: the 250 is written first, then the connection closes
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 2.0.0 OK: queued"

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(auth_data, LoginPassword) and self.users.get(auth_data.login.decode()) == \
            auth_data.password.decode()  # fmt: skip
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _factory(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {}
        if self.users:
            # AUTH is enforced by refusing unauthenticated MAIL (aiosmtpd warns about auth_required without TLS).
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.tls_context is not None)
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        return SMTP(self, hostname="relay.test", ident="test relay", **kwargs)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def down(self) -> None:
        """Stop listening: the relay is unreachable (connection refused)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def up(self) -> None:
        """Listen again, on the same port."""
        await self.start()

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``n`` messages have been received."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    await s.start()
    try:
        yield s
    finally:
        await s.down()

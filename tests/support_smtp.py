"""SMTP test support: a real SmtpServer on loopback, real mails with a real PDF, a raw client.

``smtp_gateway`` starts :class:`gateway.smtp.SmtpServer` on 127.0.0.1 port 0
over a real spool and job store, with its document examiner (worker processes
unless the settings say ``documents.processes = 0``; the fsync, the clock and
the receipt callback can be swapped); :class:`Raw` speaks SMTP over a plain socket for
input a client library refuses to send.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import ipaddress
import os
import re
import smtplib
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import Policy
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from gateway.replies import Reply, all_replies
from gateway.smtp.intake import Handler
from gateway.smtp.server import SmtpServer
from gateway.spool import FAX_NAME, RAW_NAME, Spool
from gateway.store import AsyncStore, Job, Store
from tests.support_clock import FakeClock
from tests.support_docs import pdf

TIMEOUT = 10.0


def fax_mail(
    sender: str = "alice@example.com",
    to: str = "0145678900@fax.local",
    *,
    message_id: str | None = None,
    attach: bool = True,
    body: str = "Please fax this.",
    pages: int = 1,
    subject: str = "Invoice",
    reply_to: str = "",
    date: str = "",
    policy: Policy | None = None,
) -> bytes:
    """A mail from ``sender`` (the From header) with a ``pages``-page PDF attached, as bytes for DATA.

    Reply-To and Date only when given; ``policy`` serialises it (the message's own, LF line ends, by default).
    """
    msg = EmailMessage()
    msg["From"] = sender
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["To"] = to
    msg["Subject"] = subject
    if date:
        msg["Date"] = date
    msg["Message-ID"] = message_id or make_msgid(domain="example.com")
    msg.set_content(body)
    if attach:
        msg.add_attachment(pdf(pages), maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes(policy=policy)


@dataclass
class Harness:
    server: SmtpServer
    store: AsyncStore
    spool: Spool
    spooled: list[int] = field(default_factory=list)
    receipts: list[tuple[str, bytes]] = field(default_factory=list)
    said: list[str] = field(default_factory=list)  # every reply line the server sent

    @property
    def port(self) -> int:
        return self.server.port

    async def jobs(self) -> list[Job]:
        return await self.store.run(lambda s: s.list_jobs())

    async def run(self, fn: Callable[[Store], Any]) -> Any:
        return await self.store.run(fn)


Starter = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def smtp_gateway(make_settings: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Starter]:
    """``await smtp_gateway(table, fsync=..., clock=..., receipts=True)`` -> a started Harness."""
    started: list[Harness] = []

    async def start(
        table: dict[str, Any] | None = None,
        *,
        fsync: Callable[[int], None] = os.fsync,
        clock: Callable[[], float] | None = None,
        receipts: bool = False,
        receipt_error: Exception | None = None,
    ) -> Harness:
        settings = make_settings(table)
        spool = Spool(settings.spool.directory, fsync=fsync)
        await asyncio.to_thread(spool.create)
        clock = clock or FakeClock()
        store = AsyncStore(spool.db_path, clock=clock)
        await store.open()
        harness: Harness

        async def on_receipt_mail(job_id: str, raw: bytes) -> None:
            if receipt_error is not None:
                raise receipt_error
            harness.receipts.append((job_id, raw))

        handler = Handler(settings, store, spool, on_spooled=lambda: harness.spooled.append(1), clock=clock,
                          on_receipt_mail=on_receipt_mail if receipts else None)  # fmt: skip
        server = SmtpServer(settings, handler)
        harness = Harness(server, store, spool)
        server.on_reply = lambda answer: harness.said.append(str(answer))
        try:
            await server.handler.examiner.start()  # the daemon's order: examiner, then SMTP
            await server.start()
        except BaseException:
            await server.handler.examiner.stop()
            await store.close()
            raise
        started.append(harness)
        return harness

    try:
        yield start
    finally:
        for h in started:
            await h.server.stop()
            await h.server.handler.examiner.stop()
            await h.store.close()
    for h in started:
        stray = [line for line in h.said if not from_the_table(line, h.server.settings.smtp.hostname)]
        assert not stray, f"replies that are not in gateway.replies: {stray}"


def _pattern(reply: Reply) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", ".*", re.escape(str(reply))), re.S)


_TABLE = [_pattern(reply) for reply in all_replies().values()]


def from_the_table(line: str, hostname: str) -> bool:
    """Whether a reply line is an entry of the reply table (or a line of the EHLO/HELO answer)."""
    if line.startswith("250-") or line in ("250 HELP", f"250 {hostname}"):
        return True
    return any(p.fullmatch(line) for p in _TABLE)


class Raw:
    """SMTP over a plain socket: send exactly these bytes, read the replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, port: int, *, greet: bool = True, tls: ssl.SSLContext | None = None, source: str = "127.0.0.1"
    ) -> Raw:
        """Connect from ``source`` (another loopback address: 127.0.0.2 ...), ``tls``: implicit TLS, handshake
        first; and read the greeting."""
        hostname = "localhost" if tls is not None else None
        opening = asyncio.open_connection("127.0.0.1", port, limit=2**22, ssl=tls, server_hostname=hostname,
                                          local_addr=(source, 0))  # fmt: skip
        reader, writer = await asyncio.wait_for(opening, TIMEOUT)
        raw = cls(reader, writer)
        if greet:
            assert (await raw.reply()).startswith("220")
        return raw

    async def starttls(self, context: ssl.SSLContext) -> None:
        """EHLO, STARTTLS and the handshake (the client then says EHLO again)."""
        assert "250-STARTTLS" in await self.cmd("EHLO mfp")
        assert await self.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        await asyncio.wait_for(self.writer.start_tls(context, server_hostname="localhost"), TIMEOUT)

    def peer_certificate(self) -> bytes:
        """The server's certificate (DER) on this TLS connection."""
        sslobj = self.writer.get_extra_info("ssl_object")
        assert sslobj is not None, "not a TLS connection"
        der: bytes = sslobj.getpeercert(binary_form=True)
        return der

    async def reply(self) -> str:
        """One whole reply (all its lines, joined by newlines); '' if the server closed."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            if not line:
                return "\n".join(lines)
            text = line.decode("ascii").rstrip("\r\n")
            lines.append(text)
            if text[3:4] != "-":
                return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str) -> str:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """Whether the server closes the connection (reads to EOF, bounded)."""
        rest = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def transaction(raw: Raw, sender: str, recipients: list[str], message: bytes) -> list[str]:
    """EHLO, MAIL, RCPT..., DATA; returns every reply after EHLO."""
    out = [await raw.cmd(f"MAIL FROM:<{sender}>")]
    out += [await raw.cmd(f"RCPT TO:<{r}>") for r in recipients]
    out.append(await raw.cmd("DATA"))
    if out[-1].startswith("354"):
        body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n"))
        await raw.send(body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
        out.append(await raw.reply())
    return out


def make_cert(directory: Path, stem: str = "cert") -> tuple[str, str]:
    """A self-signed certificate for localhost / 127.0.0.1, made now (``stem``.pem and its key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_name = "key.pem" if stem == "cert" else f"{stem}-key.pem"
    cert_path, key_path = directory / f"{stem}.pem", directory / key_name
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def client_tls(cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert)
    return context


def tls10_client(cert: str) -> ssl.SSLContext:
    """What an old printer speaks: TLS 1.0 and nothing else."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_verify_locations(cert)
    return context


# -- AUTH users ------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@functools.cache
def _hash() -> str:
    from gateway import passwords

    return passwords.hash_password(PASSWORD)


def users() -> list[dict[str, Any]]:
    """``smtp.users``: "scanner" and "printer", both with :data:`PASSWORD`, any sender."""
    return [{"name": "scanner", "password_hash": _hash()}, {"name": "printer", "password_hash": _hash()}]


def b64(text: str | bytes) -> str:
    """Base64 of ``text``, as an AUTH line carries it."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


# -- listeners -------------------------------------------------------------------

LISTENER_KINDS = ("none", "starttls", "implicit")


@dataclass
class Door:
    """One listener kind for a test: the settings that open it and a client that comes in through it."""

    kind: str
    cert: str
    key: str

    def table(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Settings with this one listener (port 0), merged with ``extra``."""
        from tests.support_settings import deep_merge

        smtp = {"tls_cert": self.cert, "tls_key": self.key,
                "listeners": [{"listen": "127.0.0.1:0", "tls": self.kind, "name": self.kind}]}  # fmt: skip
        return deep_merge({"smtp": smtp}, extra or {})

    async def open(self, port: int) -> Raw:
        """A greeted client, over TLS when the listener has it (after STARTTLS: EHLO is due again)."""
        context = client_tls(self.cert)
        raw = await Raw.open(port, tls=context if self.kind == "implicit" else None)
        if self.kind == "starttls":
            await raw.starttls(context)
        return raw


@pytest.fixture(params=LISTENER_KINDS)
def door(request: pytest.FixtureRequest, tmp_path: Path) -> Door:
    """Each listener kind in turn: plain SMTP, STARTTLS, implicit TLS."""
    cert, key = make_cert(tmp_path, "door")
    return Door(str(request.param), cert, key)


# -- one mail through the real server, and what it spooled ----------------------------------

DOCUMENT_TO = "0145678900@fax.local"  # where send() sends


def send(port: int, raw: bytes) -> tuple[int, str]:
    """Send one mail from 127.0.0.1 (a trusted network); the DATA reply as (code, "x.y.z text")."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail("alice@example.com", [DOCUMENT_TO], raw)
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
        # sendmail() keeps no reply text; ask the server's view through the spool instead.
        return 250, ""


async def send_async(port: int, raw: bytes) -> tuple[int, str]:
    return await asyncio.wait_for(asyncio.to_thread(send, port, raw), 60)


async def spooled_fax(harness: Harness) -> tuple[bytes, Any]:
    """The fax document and the message row of the one spooled job (whose folder holds nothing else)."""
    jobs = await harness.jobs()
    assert len(jobs) == 1
    message_id = jobs[0].message_id
    folder = harness.spool.path(message_id, FAX_NAME).parent
    assert sorted(p.name for p in folder.iterdir()) == sorted([FAX_NAME, RAW_NAME])  # names never become paths
    document = await asyncio.to_thread(harness.spool.read, message_id, FAX_NAME)
    row = await harness.run(lambda s: s.message(message_id))
    return document, row

"""``fax-gateway demo``: the whole gateway on this machine, with nothing to configure.

In: a working directory (default ``./fax-gateway-demo``) and two ports. Out: a
running gateway whose spool and job store are in the directory, whose
documents are served by its own HTTP listener (local storage), whose provider
is the simulator (in-process, on a loopback port: no real fax is ever sent),
and whose receipts go to a local mailbox: an SMTP sink in-process that writes
each mail it gets to ``DIR/mailbox/*.eml``. A banner says all this and gives
ready commands (swaks and a Python one-liner) that send ``DIR/test-fax.pdf``.

For scripts and tests one line is machine-readable::

    demo ready: smtp=127.0.0.1:PORT http=127.0.0.1:PORT mailbox=DIR/mailbox
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import shlex
import socket
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.daemon import logs
from gateway.daemon import run as daemon
from gateway.daemon.app import Gateway
from gateway.settings import LogSettings, Settings, from_mapping

log = logging.getLogger("gateway.demo")

FAX_DOMAIN = "fax.local"
TEST_NUMBER = "0145678900"
TEST_SENDER = "you@example.com"


class Mailbox:
    """A local SMTP sink standing in for the mail relay: every mail becomes a file in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.count = 0
        self._server: asyncio.AbstractServer | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode()
        self.count += 1
        name = f"{self.count:04d}-{'-'.join(r.split('@')[0] for r in envelope.rcpt_tos)[:40]}.eml"
        await asyncio.to_thread(self._write, name, data)
        log.info("mailbox: %s from %s to %s", name, envelope.mail_from, ", ".join(envelope.rcpt_tos))
        return "250 2.0.0 OK: delivered to the demo mailbox"

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.directory / name)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="mailbox.demo", ident="fax-gateway demo mailbox"), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()


def free_port() -> int:
    """A loopback port nobody listens on now (``--smtp-port 0``): the demo prints what it got."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_settings(directory: Path, smtp_port: int, http_port: int, relay_port: int) -> Settings:
    return from_mapping(
        {
            "smtp": {"listen": f"127.0.0.1:{smtp_port}", "hostname": "fax-gateway.demo", "fax_domains": [FAX_DOMAIN]},
            "spool": {"directory": str(directory / "spool"), "min_free_bytes": 10 * 1024 * 1024},
            "storage": {"backend": "local"},
            "provider": {"simulator": True},
            "http": {"listen": f"127.0.0.1:{http_port}", "public_url": f"http://127.0.0.1:{http_port}"},
            "notify": {"relay": f"127.0.0.1:{relay_port}", "from_address": "fax-gateway@localhost"},
        },
        env={},
    )


def sample_pdf() -> bytes:
    """A one-page A4 document that says what it is."""
    import img2pdf
    from PIL import Image, ImageDraw

    page = Image.new("L", (1240, 1754), 255)  # A4 at 150 dpi
    draw = ImageDraw.Draw(page)
    lines = ["fax-gateway demo", "", "This is a test fax.", "No real fax is sent: the provider is a simulator."]
    for i, line in enumerate(lines):
        draw.text((120, 160 + 60 * i), line, fill=0, font_size=40)
    buf = io.BytesIO()
    page.save(buf, format="PNG", dpi=(150, 150))
    result: bytes = img2pdf.convert(buf.getvalue())
    return result


def banner(gateway: Gateway, directory: Path, mailbox: Path, pdf: Path) -> str:
    smtp, http = gateway.smtp.port, gateway.http.port
    rcpt = f"{TEST_NUMBER}@{FAX_DOMAIN}"
    swaks = (
        f"swaks --server 127.0.0.1:{smtp} --from {TEST_SENDER} --to {rcpt} --header 'Subject: Test fax'"
        f" --attach-type application/pdf --attach @{shlex.quote(str(pdf))}"
    )
    one_liner = (
        'import smtplib, email.message as m; e = m.EmailMessage(); '
        f'e["From"] = "{TEST_SENDER}"; e["To"] = "{rcpt}"; e["Subject"] = "Test fax"; '
        'e.set_content("Please fax the attached document."); '
        f'e.add_attachment(open({json.dumps(str(pdf))}, "rb").read(), maintype="application", subtype="pdf", '
        'filename="test-fax.pdf"); '
        f'print(smtplib.SMTP("127.0.0.1", {smtp}).send_message(e) or "sent")'
    )
    spool = shlex.quote(str(directory / "spool"))
    return "\n".join([
        "",
        "=" * 78,
        "  fax-gateway demo: NO REAL FAX IS SENT. The provider is a simulator on this machine.",
        "=" * 78,
        f"  SMTP     127.0.0.1:{smtp}   (send mail to <number>@{FAX_DOMAIN}, e.g. {rcpt})",
        f"  HTTP     http://127.0.0.1:{http}/healthz   and   /metrics",
        f"  Receipts land in {mailbox}/ (one .eml file per mail)",
        "",
        "  Send a test fax (a test document is at the path below):",
        f"    {swaks}",
        "  or, without swaks:",
        f"    python3 -c {shlex.quote(one_liner)}",
        "",
        "  Then follow it:",
        f"    fax-gateway jobs --spool {spool}",
        f"    fax-gateway show --spool {spool} JOB",
        "",
        "  Stop with Ctrl-C. Everything lives in " + str(directory),
        "=" * 78,
        f"demo ready: smtp=127.0.0.1:{smtp} http=127.0.0.1:{http} mailbox={mailbox}",
    ])


async def run(directory: Path, smtp_port: int, http_port: int, handler: logs.LogHandler | None = None) -> None:
    mailbox = Mailbox(directory / "mailbox")
    await mailbox.start()
    try:
        settings = demo_settings(directory, smtp_port or free_port(), http_port or free_port(), mailbox.port)
        pdf = directory / "test-fax.pdf"
        if not pdf.exists():
            await asyncio.to_thread(pdf.write_bytes, sample_pdf())

        def ready(gateway: Gateway) -> None:
            print(banner(gateway, directory, mailbox.directory, pdf), flush=True)

        await daemon.run(settings, handler=handler, on_ready=ready)
    finally:
        await mailbox.stop()


def main(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    handler = logs.setup(LogSettings(level="info"))
    # The demo's own chatter (SMTP sessions) stays out of the way of the banner.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        asyncio.run(run(directory, args.smtp_port, args.http_port, handler))
    except OSError as exc:
        print(f"fax-gateway demo: {exc} (is another demo running? try --smtp-port 0 --http-port 0)", file=sys.stderr)
        return 1
    return 0


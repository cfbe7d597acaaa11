"""Gateways of one cluster in this process: one PostgreSQL database and one S3 bucket, each its own spool.

``cluster`` (a plugin of ``tests/conftest.py``: never imported) gives a
:class:`Cluster` over the test's private PostgreSQL database (``postgres_dsn``)
and moto's S3 (``s3``): ``cluster.settings(name, table)`` are the settings of
one instance (``[store] backend = "postgresql"``, the shared bucket, its own
spool directory and loopback ports), ``await cluster.start(name, table)`` a
started :class:`~gateway.daemon.app.Gateway` on them; every gateway started is
stopped at the end. ``mail_to`` mails a one-page PDF with smtplib and returns the
job ids of the ``250``.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.app import Gateway
from gateway.settings import Settings
from tests.support_net import free_port
from tests.support_s3 import S3
from tests.support_settings import SettingsFactory, deep_merge
from tests.support_smtp import fax_mail


class Cluster:
    def __init__(self, make_settings: SettingsFactory, tmp_path: Path, s3: S3, dsn: str) -> None:
        self.make_settings = make_settings
        self.tmp_path = tmp_path
        self.s3 = s3
        self.dsn = dsn
        self.gateways: list[Gateway] = []

    def settings(self, name: str, table: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
        port = free_port()
        base = deep_merge(self.s3.table(), {
            "store": {"backend": "postgresql"},
            "spool": {"directory": str(self.tmp_path / name / "spool")},
            "http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
        })  # fmt: skip
        return self.make_settings(deep_merge(base, table or {}), {"FAX_GATEWAY_STORE_DSN": self.dsn, **(env or {})})

    async def start(self, name: str, table: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                    **kwargs: Any) -> Gateway:  # fmt: skip
        gw = Gateway(self.settings(name, table, env), **kwargs)
        await gw.start()
        self.gateways.append(gw)
        return gw


def mail_to(port: int, to: str = "0145678900@fax.local", *, sender: str = "alice@example.com",
         raw: bytes | None = None) -> tuple[int, str]:  # fmt: skip
    """One mail over SMTP (blocking: run it in a thread); the DATA reply's code and text, or the first refusal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("scanner.example.com")
        code, reply = client.mail(sender)
        if code == 250:
            code, reply = client.rcpt(to)
        if code != 250:
            return code, reply.decode()
        code, reply = client.data(raw if raw is not None else fax_mail(sender=sender, to=to))
    return code, reply.decode()


def queued(reply: tuple[int, str]) -> list[str]:
    """The job ids of a ``250 ... queued as`` reply."""
    code, text = reply
    match = re.search(r"queued as ([0-9a-f ]+)", text)
    assert code == 250 and match, reply
    return match.group(1).split()


@pytest.fixture
async def cluster(make_settings: SettingsFactory, tmp_path: Path, s3: S3, postgres_dsn: str) -> AsyncIterator[Cluster]:
    """Gateways sharing a PostgreSQL database and an S3 bucket; all stopped at the end."""
    c = Cluster(make_settings, tmp_path, s3, postgres_dsn)
    try:
        yield c
    finally:
        for gw in reversed(c.gateways):
            await gw.stop()

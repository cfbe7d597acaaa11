"""The provider simulator on loopback, and a tiny document server, for any test that needs them.

``tests/conftest.py`` loads this module as a plugin: any test can ask for the
fixtures ``simulator``, ``sim_factory`` and ``documents``, and import the
helpers (``from tests.support_simulator import SIM_PASSWORD, provider_table``).
``provider_table(sim)`` and ``provider_env()`` give the settings that point
the gateway at the simulator; the password is a canary
with ``+&=%`` in it, so encoding mistakes and leaks both show.

The canary is checked once more after the whole run (``canary_sweep``): no log
record emitted during the run, and no file left under the run's temporary
directory (every test spool and store, every daemon log file), holds it in any
encoding, nor a presigned URL's signature.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from gateway.delivery.simulator import ProviderSimulator

SIM_EMAIL = "account@gateway.test"
# A canary: it must never appear in a log, a record, a spool file or a mail.
SIM_PASSWORD = "Canary-Pw+7&x=1%zQ"

SimFactory = Callable[..., Coroutine[Any, Any, ProviderSimulator]]

# The canary as it would leak: plain, URL-encoded in a path or a query.
CANARY_FORMS = (SIM_PASSWORD, quote(SIM_PASSWORD, safe=""), quote_plus(SIM_PASSWORD))
# A presigned URL's signature (SigV4: 64 hex digits); redacted, it reads ``X-Amz-Signature=********``.
SIGNATURE = re.compile(r"X-Amz-Signature(=|%3D)[0-9a-f]{64}", re.IGNORECASE)


class _CanaryLog(logging.Handler):
    """Keeps every log record of the run (with its traceback) that carries the canary,
    and every gateway record that carries a presigned signature."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        signed = record.name.startswith("gateway") and SIGNATURE.search(text)
        if signed or any(form in text for form in CANARY_FORMS):
            self.leaks.append(text)


def files_holding_secrets(root: Path) -> list[Path]:
    """Files under ``root`` holding the canary password or a presigned signature."""
    forms = [form.encode() for form in CANARY_FORMS]
    signature = re.compile(SIGNATURE.pattern.encode(), re.IGNORECASE)
    found = []
    for path in root.rglob("*"):
        try:
            data = path.read_bytes() if path.is_file() else b""
        except OSError:
            continue  # gone meanwhile (a test's own clean-up)
        if signature.search(data) or any(form in data for form in forms):
            found.append(path)
    return found


@pytest.fixture(scope="session", autouse=True)
def canary_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run: the canary password (and any presigned signature) is in no log record,
    no spool, no store, no log file."""
    handler = _CanaryLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    leaked_files = files_holding_secrets(tmp_path_factory.getbasetemp())
    assert not handler.leaks and not leaked_files, f"secrets leaked: {handler.leaks[:5]} {leaked_files[:5]}"


def provider_table(sim: ProviderSimulator, **extra: Any) -> dict[str, Any]:
    """Settings (TOML shape) that point the provider client at ``sim``."""
    return {"provider": {"url": sim.url, "email": SIM_EMAIL, **extra}}


def provider_env(password: str = SIM_PASSWORD) -> dict[str, str]:
    return {"FAX_GATEWAY_PROVIDER_PASSWORD": password}


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators with any constructor keywords; all are stopped at the end."""
    started: list[ProviderSimulator] = []

    async def factory(**kwargs: Any) -> ProviderSimulator:
        kwargs.setdefault("email", SIM_EMAIL)
        kwargs.setdefault("password", SIM_PASSWORD)
        sim = ProviderSimulator("127.0.0.1", 0, **kwargs)
        await sim.start()
        started.append(sim)
        return sim

    try:
        yield factory
    finally:
        for sim in started:
            await sim.stop()


@pytest.fixture
async def simulator(sim_factory: SimFactory) -> ProviderSimulator:
    """A simulator with the test account, no callback URL."""
    return await sim_factory()


class DocumentServer:
    """Serves ``docs[path] = (bytes, content_type)`` over HTTP on loopback; counts downloads."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[bytes, str]] = {}
        self.hits: list[str] = []
        self.base = ""
        self._runner: web.AppRunner | None = None

    def add(self, path: str, data: bytes, content_type: str = "application/pdf") -> str:
        """Serve ``data`` at ``path``; return its full URL."""
        self.docs[path] = (data, content_type)
        return f"{self.base}{path}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.raw_path)
        if request.path == "/redirect":
            raise web.HTTPFound(self.base + request.query.get("to", "/"))
        if request.path not in self.docs:
            raise web.HTTPNotFound()
        data, ctype = self.docs[request.path]
        return web.Response(body=data, content_type=ctype)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def documents() -> AsyncIterator[DocumentServer]:
    server = DocumentServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()

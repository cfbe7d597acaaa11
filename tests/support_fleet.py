"""Several ``fax-gateway serve`` processes on one PostgreSQL database and one S3 bucket, behind a balancer.

``fleet`` (a plugin of ``tests/conftest.py``: never imported) gives a :class:`Fleet`:
the test's private PostgreSQL database (``postgres_dsn``), moto's S3 (``s3``), the
outbound relay (``sink``), the provider simulator calling its receipts back to a
:class:`Balancer`, and ``fleet.add(name)`` an instance (:class:`Member`) with its own
config, spool, loopback ports and ``[cluster] instance``. ``await member.start()``
returns once the process said ``READY=1``; ``member.kill()`` is SIGKILL, ``pause()`` and
``resume()`` SIGSTOP and SIGCONT. Each member's log (every run of it, one after the
other) is in its directory; :meth:`Fleet.logs` gives their ends for a failure report.

The balancer stands in for the one in front of the HTTP listeners: each connection it
takes goes to a live member chosen at random, another one if that connection is refused; a member
paused with SIGSTOP is left out, as a balancer's health check would leave it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.simulator import ProviderSimulator
from gateway.settings import Secret
from gateway.store import PostgreSQL, Store
from tests.support_net import free_port
from tests.support_s3 import BUCKET, S3, S3_ENV, pipe
from tests.support_simulator import SIM_EMAIL, SIM_PASSWORD, SimFactory
from tests.support_sink import Sink

ROOT = Path(__file__).resolve().parent.parent
CALLBACK_SECRET = "fleet-callback-secret-0123"
READY_SECONDS = 60.0


class Balancer:
    """A TCP balancer on 127.0.0.1: each connection to a random port of ``backends()``, the next on refusal."""

    def __init__(self, backends: Callable[[], list[int]]) -> None:
        self.backends = backends
        self.port = 0
        self.connections = 0
        self.refused = 0  # connections to a member that was down, tried again on another
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            ports = self.backends()
            random.shuffle(ports)
            for port in ports:
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    self.refused += 1
                    continue
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
                return
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)


class Member:
    """One ``fax-gateway serve`` process of the fleet, started again as often as the test likes."""

    def __init__(self, fleet: Fleet, name: str, extra: dict[str, dict[str, Any]]) -> None:
        self.name = name
        self.dir = fleet.tmp_path / name
        self.dir.mkdir(parents=True)
        self.smtp_port, self.http_port = free_port(), free_port()
        self.config = self.dir / "gateway.toml"
        self.log_path = self.dir / "gateway.log"
        self.config.write_text(fleet.config_text(self, extra))
        self.env = fleet.env
        self.runs = 0
        self.ready = False  # said READY=1 in this run
        self.paused = False  # stopped by SIGSTOP: the balancer's health check takes it out
        self.proc: asyncio.subprocess.Process | None = None
        # AF_UNIX paths are short (108 bytes): keep the socket out of the deep pytest directory.
        self._sock_dir = tempfile.mkdtemp(prefix="fgw-", dir="/tmp")
        self._notify_path = os.path.join(self._sock_dir, "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(self._notify_path)

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start the process and return once it said ``READY=1`` (fails with its log if it exits first)."""
        self._notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self._notify.recv(4096):  # nothing a previous run said counts
                pass
        self._notify.setblocking(True)
        self._notify.settimeout(READY_SECONDS)
        self.ready = False
        self.runs += 1
        env = {**self.env, "NOTIFY_SOCKET": self._notify_path}
        with self.log_path.open("ab") as log:
            log.write(f"---- {self.name}: run {self.runs}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(self.config),
                cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        message = asyncio.ensure_future(asyncio.to_thread(self._notify.recv, 4096))
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({message, exited}, timeout=READY_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if message not in done or b"READY=1" not in message.result():
            raise AssertionError(f"{self.name} not ready (exit {self.proc.returncode}):\n{self.log()[-4000:]}")
        self.ready = True

    async def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        assert self.proc is not None
        self.ready = False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), READY_SECONDS)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def close(self) -> None:
        if self.up:
            assert self.proc is not None
            self.resume()
            await self.kill()
        self._notify.close()
        for name in os.listdir(self._sock_dir):
            os.unlink(os.path.join(self._sock_dir, name))
        os.rmdir(self._sock_dir)


# Settings every member runs with (TOML shape); a test's own ``extra`` is merged over them.
FLEET_SETTINGS: dict[str, dict[str, Any]] = {
    "store": {"backend": "postgresql"},
    "quotas": {"per_sender_hourly": 0, "global_hourly": 0},
    "documents": {"processes": 0},
    "provider": {"email": SIM_EMAIL, "connect_timeout": 1.0, "total_timeout": 3.0},
    "delivery": {"poll_seconds": 0.5, "lease_seconds": 6.0, "ambiguous_grace_seconds": 2.0,
                 "ambiguous_action": "resubmit", "min_backoff_seconds": 0.5, "max_backoff_seconds": 2.0},
    "notify": {"from_address": "fax-gateway@gateway.test", "delay_notice_seconds": 0, "min_backoff_seconds": 0.5,
               "max_backoff_seconds": 2.0},
    "log": {"format": "plain"},
}  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Fleet:
    def __init__(self, tmp_path: Path, dsn: str, s3: S3, sim: ProviderSimulator, sink: Sink) -> None:
        self.tmp_path, self.dsn, self.s3, self.sim, self.sink = tmp_path, dsn, s3, sim, sink
        self.members: list[Member] = []
        self.balancer = Balancer(lambda: [m.http_port for m in self.members if m.up and not m.paused])
        base = {k: v for k, v in os.environ.items() if not k.startswith("FAX_GATEWAY_")}
        self.env = base | S3_ENV | {
            "FAX_GATEWAY_STORE_DSN": dsn, "FAX_GATEWAY_PROVIDER_PASSWORD": SIM_PASSWORD,
            "FAX_GATEWAY_CALLBACK_SECRET": CALLBACK_SECRET, "PYTHONUNBUFFERED": "1",
        }  # fmt: skip

    def add(self, name: str, extra: dict[str, dict[str, Any]] | None = None) -> Member:
        member = Member(self, name, extra or {})
        self.members.append(member)
        return member

    def config_text(self, member: Member, extra: dict[str, dict[str, Any]]) -> str:
        own: dict[str, dict[str, Any]] = {
            "smtp": {"listen": f"127.0.0.1:{member.smtp_port}", "hostname": "fax-gateway.test",
                     "shutdown_grace_seconds": 2.0},
            "spool": {"directory": str(member.dir / "spool"), "min_free_bytes": 0},
            # The provider calls receipts back through the balancer, as it would a real site's public address.
            "http": {"listen": f"127.0.0.1:{member.http_port}", "public_url": f"http://127.0.0.1:{self.balancer.port}"},
            "storage": {"backend": "s3", "bucket": BUCKET, "region": "eu-west-3", "endpoint_url": self.s3.endpoint,
                        "timeout_seconds": 2.0},
            "provider": {"url": self.sim.url},
            "notify": {"relay": f"127.0.0.1:{self.sink.port}"},
            "cluster": {"instance": member.name},
        }  # fmt: skip
        sections: dict[str, dict[str, Any]] = {}
        for layer in (FLEET_SETTINGS, own, extra):
            for section, values in layer.items():
                sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        return "\n".join(lines) + "\n"

    def store(self) -> Store:
        """A connection of the test's own to the fleet's store (close it)."""
        return Store(PostgreSQL(Secret(self.dsn)))

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"==== {m.name}\n{m.log()[-tail:]}" for m in self.members)


@pytest.fixture
async def fleet(tmp_path: Path, postgres_dsn: str, s3: S3, sim_factory: SimFactory, sink: Sink) -> AsyncIterator[Fleet]:
    """Gateway processes sharing one database and bucket, receipts called back through a balancer;
    every process still running is killed at the end."""
    sim = await sim_factory(callback_tries=10)
    f = Fleet(tmp_path, postgres_dsn, s3, sim, sink)
    await f.balancer.start()
    sim.callback_url = f"http://127.0.0.1:{f.balancer.port}/receipt/{CALLBACK_SECRET}"
    try:
        yield f
    finally:
        for member in f.members:
            await member.close()
        await f.balancer.stop()

"""The daemon as a real subprocess: a config on free loopback ports, readiness, logs, the store."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.spool import Spool
from gateway.store import Job, Store
from tests.support_net import free_port

WAIT = 60.0


async def poll_until(
    predicate: Callable[[], Any], what: str, timeout: float = WAIT, *, context: Callable[[], str] = str
) -> Any:
    """Wait for a condition only another process can make true (its files, its store).

    No event crosses the process boundary, so this looks again every 0.1 s, off the
    event loop, and gives up after ``timeout`` naming what it waited for.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(predicate)
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{context()[-4000:]}")


class Daemon:
    """``fax-gateway serve`` in a subprocess, with a systemd-style notification socket."""

    def __init__(self, tmp_path: Path, extra_toml: str = "", env: dict[str, str] | None = None) -> None:
        self.smtp_port, self.http_port = free_port(), free_port()
        self.spool = tmp_path / "spool"
        self.config = tmp_path / "gateway.toml"
        self.stderr_path = tmp_path / "stderr.log"
        self.env = env or {}
        self.write_config(extra_toml)
        # AF_UNIX paths are short (108 bytes): keep the socket out of the deep pytest directory.
        self._sock_dir = tempfile.mkdtemp(prefix="fgw-", dir="/tmp")
        self.notify_path = os.path.join(self._sock_dir, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(WAIT)
        self.proc: asyncio.subprocess.Process | None = None

    def write_config(self, extra_toml: str = "", log_format: str = "plain") -> None:
        self.config.write_text(
            f"""
[smtp]
listen = "127.0.0.1:{self.smtp_port}"
hostname = "fax-gateway.test"
shutdown_grace_seconds = 10.0
[spool]
directory = "{self.spool}"
min_free_bytes = 0
[http]
listen = "127.0.0.1:{self.http_port}"
public_url = "http://127.0.0.1:{self.http_port}"
[notify]
from_address = "fax-gateway@gateway.test"
[log]
format = "{log_format}"
{extra_toml}
"""
        )

    async def start(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAX_GATEWAY_")}
        env |= self.env | {"NOTIFY_SOCKET": self.notify_path}
        with open(self.stderr_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(self.config), *args,
                stdout=asyncio.subprocess.DEVNULL, stderr=err, env=env,
            )  # fmt: skip

    async def ready(self) -> str:
        """The first notification (READY=1) or the process's exit, whichever comes first."""
        assert self.proc is not None
        message = asyncio.ensure_future(asyncio.to_thread(self.notify.recv, 4096))
        exited = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({message, exited}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if message in done:
            exited.cancel()
            return message.result().decode()
        exited.cancel()
        raise AssertionError(f"daemon not ready (exit {self.proc.returncode}):\n{self.stderr()}")

    async def next_notification(self) -> str:
        return (await asyncio.to_thread(self.notify.recv, 4096)).decode()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), 2 * WAIT)
        except TimeoutError:
            raise AssertionError(f"the daemon did not exit:\n{self.stderr()[-6000:]}") from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    async def until(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Wait for a condition only the daemon can make true; a timeout shows its log."""
        return await poll_until(predicate, what, timeout, context=self.stderr)

    def jobs(self) -> list[Job]:
        store = Store(Spool(self.spool).db_path)
        try:
            return store.list_jobs(limit=100_000)
        finally:
            store.close()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.notify.close()
        for name in os.listdir(self._sock_dir):
            os.unlink(os.path.join(self._sock_dir, name))
        os.rmdir(self._sock_dir)

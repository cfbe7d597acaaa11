"""A real S3 endpoint on loopback (moto's server) behind a switchable TCP relay.

A test asks for the ``s3`` fixture (a plugin of ``tests/conftest.py``: never
imported) and imports helpers such as ``S3_ENV`` by name. boto3 talks to
``s3.endpoint`` (the relay); the relay forwards to moto, or plays a broken S3:
``s3.relay.mode = "refuse"`` (every connection closed at once: S3 down),
``"hang"`` (connections accepted and never answered: a black hole that freezes
an upload) or ``"error"`` (every request answered with the S3 error in
``s3.relay.error``, e.g. ``(503, "SlowDown")`` or ``(403, "RequestTimeTooSkewed")``).
Fake credentials are set for the test only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal

import boto3
import pytest
from moto.server import ThreadedMotoServer

BUCKET = "fax-documents"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "eu-west-3",
}

Mode = Literal["forward", "refuse", "hang", "error"]


class Relay:
    """A TCP relay on 127.0.0.1 with its own thread and loop, switchable at any time."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode: Mode = "forward"
        self.error = (500, "InternalError")  # status and S3 error code answered in "error" mode
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="s3-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._hung: list[asyncio.StreamWriter] = []
        self._seen = threading.Condition()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("S3 relay did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def wait_connections(self, n: int, timeout: float = 20.0) -> None:
        """Block until ``n`` connections have come in (run it in a thread); AssertionError after ``timeout``."""
        with self._seen:
            assert self._seen.wait_for(lambda: self.connections >= n, timeout), f"{self.connections} connections"

    def drop_hung(self) -> None:
        """Close the connections held in "hang" mode: the client sees the connection closed."""

        def close() -> None:
            for writer in self._hung:
                writer.close()
            self._hung.clear()

        self._loop.call_soon_threadsafe(close)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for writer in self._hung:
                writer.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._seen:
            self.connections += 1
            self._seen.notify_all()
        mode = self.mode
        if mode == "refuse":
            writer.close()
            return
        if mode == "hang":
            self._hung.append(writer)
            return
        if mode == "error":
            await _answer_error(reader, writer, *self.error)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def _answer_error(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, code: str) -> None:
    """Read one request's head and answer it with an S3 error document; then close."""
    with contextlib.suppress(Exception):
        await reader.readuntil(b"\r\n\r\n")
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{code}</Message></Error>").encode()  # fmt: skip
        head = (f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
        writer.write(head + body)
        await writer.drain()
    writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class S3:
    def __init__(self, moto_port: int, relay: Relay) -> None:
        self.moto_port = moto_port
        self.relay = relay
        self.endpoint = f"http://127.0.0.1:{relay.port}"
        # Direct to moto, for assertions that must not depend on the relay.
        self.client: Any = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="eu-west-3")

    def table(self, **extra: Any) -> dict[str, Any]:
        """Storage settings (TOML shape) for the gateway."""
        return {"storage": {"backend": "s3", "bucket": BUCKET, "endpoint_url": self.endpoint, "region": "eu-west-3",
                            "timeout_seconds": 1.0, **extra}}  # fmt: skip

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=BUCKET)
        return [o["Key"] for o in listing.get("Contents", [])]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """moto's S3 server on loopback with an empty bucket, reached through a relay."""
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    # One access-log line per S3 request from moto's server thread: noise in every failure report.
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    moto_port = server.get_host_and_port()[1]
    relay = Relay(moto_port)
    relay.start()
    try:
        # moto keeps its state per process: start every test from an empty server.
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{moto_port}/moto-api/reset", method="POST"))
        s3 = S3(moto_port, relay)
        s3.client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        yield s3
        s3.client.close()
    finally:
        relay.stop()
        server.stop()

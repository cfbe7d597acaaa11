"""Loopback networking for the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for a config that must name its port before it starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

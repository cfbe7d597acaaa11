"""What gateway/daemon/http.py takes from aiohttp beyond its public API is still there.

The listener answers requests aiohttp cannot parse with a fixed body (aiohttp's own quotes the
request line, and the receipt callback's path holds the secret). For that it replaces aiohttp's
connection handler, through names aiohttp does not document; pyproject.toml bounds aiohttp to the
releases this test ran on. A new release that changes them fails here, naming the one
(tests/test_http_errors.py checks the answers themselves).
"""

from __future__ import annotations

import importlib.metadata
import inspect

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

VERSION = importlib.metadata.version("aiohttp")


def test_the_connection_handlers_error_hook_keeps_its_signature() -> None:
    params = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"], f"aiohttp {VERSION}: {params}"


async def test_the_server_parts_the_listener_rebuilds_are_there() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server), f"aiohttp {VERSION}: AppRunner._make_server"
    runner = web.AppRunner(web.Application(), handle_signals=False)
    await runner.setup()
    try:
        server = await runner._make_server()
        missing = [name for name in ("_loop", "_kwargs", "request_handler", "request_factory",
                                     "handler_cancellation") if not hasattr(server, name)]  # fmt: skip
        assert not missing, f"aiohttp {VERSION}: web.Server has no {', '.join(missing)}"
        assert isinstance(server._kwargs, dict)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert getattr(site, "_server", None) is not None, f"aiohttp {VERSION}: TCPSite._server"
    finally:
        await runner.cleanup()

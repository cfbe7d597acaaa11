"""The HTTP listener: one aiohttp server for the receipt callback, health,
metrics and locally stored documents.

In: the routes the stages add before ``start()``, and requests on
``http.listen``. Out: their answers; ``start()`` returns once the socket is
bound (``port`` is then the real port, also with port 0).

A request aiohttp cannot parse (a request line or header over 8,190 bytes,
a bad method, version, target, header line or chunk, non-HTTP bytes) gets a
short fixed body such as ``bad request``: aiohttp's own error text quotes the
request line, and the callback's path holds the secret. Nothing of the request
reaches the log either, only the source address and the status.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.settings import Settings
from gateway.text import clean

log = logging.getLogger("gateway.http")


def error_body(status: int) -> str:
    """The fixed body of an error answer aiohttp makes itself: its status in words."""
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    return f"{phrase}\n"


class _QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, whose own error answers quote nothing of the request."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        # aiohttp's version logs the exception (its text quotes the request line) and answers with it.
        log.warning("HTTP: answered %d to a request from %s that could not be handled", status, clean(request.remote))
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already started; the connection is closed")
        resp = web.Response(status=status, text=error_body(status))
        resp.force_close()
        return resp


class _QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _QuietServer(
            made.request_handler, request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation, loop=asyncio.get_running_loop(), **made._kwargs,
        )  # fmt: skip


class HttpServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = web.Application(client_max_size=64 * 1024)
        self.port = 0
        self._runner: web.AppRunner | None = None

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        self.app.add_routes(routes)

    async def start(self) -> None:
        self._runner = _Runner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        listen = self.settings.http.listen
        site = web.TCPSite(self._runner, listen.host, listen.port, reuse_address=True)
        await site.start()
        server = site._server  # the bound socket tells the real port (port 0 in tests)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else listen.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

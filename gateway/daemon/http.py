"""The HTTP listener: one aiohttp server for the receipt callback, health,
metrics and locally stored documents.

Stages add their routes before ``start()``; ``start()`` returns once the
socket is bound (``port`` is then the real port, also with port 0).
"""

from __future__ import annotations

from aiohttp import web

from gateway.settings import Settings


class HttpServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = web.Application(client_max_size=64 * 1024)
        self.port = 0
        self._runner: web.AppRunner | None = None

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        self.app.add_routes(routes)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
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

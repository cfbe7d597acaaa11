"""Health and metrics over HTTP: ``GET /healthz`` and ``GET /metrics``.

In: the gateway's parts (SMTP listener, store, metrics). Out:

- ``/healthz``: JSON. ``smtp`` (listening), ``store`` (a real write
  transaction, rolled back), the last ``provider`` and ``storage`` results, and
  the jobs waiting for a person (held, ambiguous, quarantined). HTTP 200 when
  SMTP listens and the store is writable (``status`` is ``ok``, or
  ``degraded`` when the last provider or storage call failed or jobs wait for
  a person); 503 ``failing`` otherwise.
- ``/metrics``: Prometheus text format from the gateway's own registry; the
  job-state gauge is refreshed from the store on each scrape.

Both answer only to ``http.status_networks`` (loopback by default): the
listener also faces the provider, and job counts are nobody else's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.daemon.metrics import CONTENT_TYPE, Metrics, Result, snapshot
from gateway.networks import Networks
from gateway.settings import Settings
from gateway.store import AsyncStore, State, Store

log = logging.getLogger("gateway.health")

_WAITING = (State.HELD, State.AMBIGUOUS, State.QUARANTINED)


def _result(r: Result | None) -> dict[str, Any] | None:
    return None if r is None else {"ok": r.ok, "detail": r.detail, "at": r.at}


def _store_state(s: Store) -> tuple[bool, dict[str, int]]:
    return s.writable(), s.count_by_state()


class Health:
    def __init__(
        self, settings: Settings, store: AsyncStore, metrics: Metrics, smtp_listening: Callable[[], bool]
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.smtp_listening = smtp_listening
        self._networks = Networks(settings.http.status_networks)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/metrics", self.scrape)]

    def _allowed(self, request: web.Request) -> bool:
        return self._networks.allows(request.remote)

    async def _counts(self) -> tuple[bool, dict[str, int], str]:
        try:
            writable, counts = await self.store.run(_store_state)
        except Exception as exc:  # a store that cannot answer is the finding, not a crash
            return False, {}, f"{type(exc).__name__}: {exc}"
        return writable, counts, "writable" if writable else "not writable"

    async def healthz(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            raise web.HTTPNotFound()
        body = await self.report()
        return web.json_response(body, status=503 if body["status"] == "failing" else 200)

    async def report(self) -> dict[str, Any]:
        """What /healthz answers (the web console's front page shows it too)."""
        smtp_ok = self.smtp_listening()
        store_ok, counts, store_detail = await self._counts()
        waiting = {str(state): counts.get(state, 0) for state in _WAITING}
        last = [self.metrics.last_provider, self.metrics.last_storage]
        if not (smtp_ok and store_ok):
            status = "failing"
        elif any(r is not None and not r.ok for r in last) or any(waiting.values()):
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "smtp": {"ok": smtp_ok},
            "store": {"ok": store_ok, "detail": store_detail},
            "provider": _result(self.metrics.last_provider),
            "storage": _result(self.metrics.last_storage),
            "waiting": waiting,
        }

    async def scrape(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            raise web.HTTPNotFound()
        submitted_mark, final_mark = self.metrics.marks()
        try:
            snap = await self.store.run(lambda s: snapshot(s, submitted_mark, final_mark))
        except Exception:  # the store-derived families keep their last values
            log.exception("metrics: cannot read the store")
        else:
            self.metrics.update(snap)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

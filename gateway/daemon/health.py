"""Health and metrics over HTTP: ``GET /healthz`` and ``GET /metrics``.

In: the gateway's parts (SMTP listener and its sessions, spool, store,
metrics). Out:

- ``/healthz``: JSON that says what a client gets now. ``smtp`` (listening),
  ``connections`` (sessions open against ``smtp.max_connections``: when all
  slots are taken a new client gets 421; ``capped``, when there are any: the
  addresses held at ``smtp.max_connections_per_address``, whose next
  connection gets 421), ``spool`` (free space against
  ``spool.min_free_bytes``: below it MAIL gets 452), ``store`` (whether it is
  reachable, and a real write: a row written to a probe table and deleted,
  committed, within :data:`STORE_SECONDS`, on the store's thread; for
  PostgreSQL its detail names the server: host, port and database), ``replies`` (the 4xx
  replies of the last five minutes that were the gateway's own fault, such as
  451 4.3.0, 452 4.3.1 or 421 4.3.2, against the mails taken), the last
  ``provider`` and ``storage`` results, and the jobs waiting for a person
  (held, ambiguous, quarantined). HTTP 503 ``failing`` when SMTP does not
  listen, every connection slot is taken, the spool is below its minimum, the
  store cannot be written, or at least half of the recent mails (three or
  more) were refused by the gateway's own fault; otherwise 200, ``degraded``
  when the last provider or storage call failed, jobs wait for a person, nine
  slots in ten are taken, or any own-fault refusal came recently; else ``ok``.
- ``/metrics``: Prometheus text format from the gateway's own registry; the
  families read from the store are refreshed on each scrape (with the
  PostgreSQL store they are the whole cluster's; the others this instance's:
  each family's help says which).

Both answer only to ``http.status_networks`` (loopback by default): the
listener also faces the provider, and job counts are nobody else's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.daemon.metrics import CONTENT_TYPE, Metrics, Result, snapshot
from gateway.networks import Networks
from gateway.settings import Settings
from gateway.store import AsyncStore, State, Store
from gateway.text import clean

log = logging.getLogger("gateway.health")

_WAITING = (State.HELD, State.AMBIGUOUS, State.QUARANTINED)
# Own-fault refusals among the recent mails that make the gateway "failing": this share, at least this many.
_FAILING_RATE = 0.5
_FAILING_MIN = 3
# Seconds the store's probe may take: past them the store counts as unreachable (its thread may be stuck
# on a lost PostgreSQL server; the answer does not wait for it).
STORE_SECONDS = 5.0
# Connection slots taken that make it "degraded".
_BUSY_SLOTS = 0.9


def _result(r: Result | None) -> dict[str, Any] | None:
    return None if r is None else {"ok": r.ok, "detail": r.detail, "at": r.at}


def _store_state(s: Store) -> tuple[bool, dict[str, int]]:
    return s.writable(), s.count_by_state()


class Health:
    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        metrics: Metrics,
        smtp_listening: Callable[[], bool],
        *,
        smtp_sessions: Callable[[], int] = lambda: 0,
        smtp_capped: Callable[[], list[str]] = lambda: [],
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.smtp_listening = smtp_listening
        self.smtp_sessions = smtp_sessions  # sessions open now (the SMTP server knows them)
        self.smtp_capped = smtp_capped  # addresses at their connection cap now
        self.free_bytes = free_bytes  # free bytes in the spool's file system (None: not checked)
        self._networks = Networks(settings.http.status_networks)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/metrics", self.scrape)]

    def _allowed(self, request: web.Request) -> bool:
        return self._networks.allows(request.remote)

    async def _counts(self) -> tuple[bool, dict[str, int], str]:
        server = self.store.server
        where = f"{server}: " if server else ""  # PostgreSQL: which server (SQLite: the file beside the spool)
        try:
            writable, counts = await asyncio.wait_for(self.store.run(_store_state), STORE_SECONDS)
        except TimeoutError:
            return False, {}, f"{where}the job store did not answer within {STORE_SECONDS:g} s"
        except Exception as exc:  # a store that cannot answer is the finding, not a crash
            why = clean(" ".join(str(exc).split()), 300) or type(exc).__name__
            return False, {}, f"{where}the job store did not answer: {why}"
        return writable, counts, where + ("a probe row was written and deleted" if writable else "a write failed")

    async def _spool(self) -> dict[str, Any]:
        minimum = self.settings.spool.min_free_bytes
        if self.free_bytes is None:
            return {"ok": True, "detail": "not checked"}
        try:
            free = await asyncio.to_thread(self.free_bytes)
        except OSError as exc:
            return {"ok": False, "detail": f"free space unknown: {exc.strerror or exc}"}
        ok = not minimum or free >= minimum
        detail = f"{free} bytes free" + ("" if ok else f", below spool.min_free_bytes ({minimum}): MAIL gets 452")
        return {"ok": ok, "free_bytes": free, "min_free_bytes": minimum, "detail": detail}

    def _connections(self) -> tuple[dict[str, Any], bool]:
        """The connection slots, and whether nine in ten are taken."""
        limit, open_ = self.settings.smtp.max_connections, self.smtp_sessions()
        ok = open_ < limit
        detail = f"{open_} of {limit} open" + ("" if ok else ": new clients get 421")
        body: dict[str, Any] = {"ok": ok, "open": open_, "max": limit, "detail": detail}
        capped = self.smtp_capped()
        if capped:
            per_address = self.settings.smtp.max_connections_per_address
            body["capped"] = capped
            body["detail"] += f"; {', '.join(capped)} at smtp.max_connections_per_address ({per_address})"
        return body, open_ >= _BUSY_SLOTS * limit

    def _replies(self) -> tuple[dict[str, Any], bool]:
        """The recent own-fault refusals, and whether there was any."""
        recent = self.metrics.recent_own_refusals()
        ok = not (recent.own_refusals >= _FAILING_MIN and recent.rate >= _FAILING_RATE)
        body = {"ok": ok, "own_refusals": recent.own_refusals, "taken": recent.taken, "seconds": recent.seconds}
        return body, recent.own_refusals > 0

    async def healthz(self, request: web.Request) -> web.Response:
        if not self._allowed(request):
            raise web.HTTPNotFound()
        body = await self.report()
        return web.json_response(body, status=503 if body["status"] == "failing" else 200)

    async def report(self) -> dict[str, Any]:
        """What /healthz answers (the web console's front page shows it too)."""
        smtp_ok = self.smtp_listening()
        store_ok, counts, store_detail = await self._counts()
        spool = await self._spool()
        connections, busy = self._connections()
        replies, refused_lately = self._replies()
        waiting = {str(state): counts.get(state, 0) for state in _WAITING}
        last = [self.metrics.last_provider, self.metrics.last_storage]
        if not (smtp_ok and store_ok and spool["ok"] and connections["ok"] and replies["ok"]):
            status = "failing"
        elif any(r is not None and not r.ok for r in last) or any(waiting.values()) or busy or refused_lately:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "smtp": {"ok": smtp_ok},
            "connections": connections,
            "spool": spool,
            "store": {"ok": store_ok, "detail": store_detail},
            "replies": replies,
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

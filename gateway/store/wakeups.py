"""Wake-ups across gateways: the store's ``LISTEN`` on its own PostgreSQL connection, in a thread.

In: where the store is, and what to call on the daemon's event loop with what has work
(:data:`~gateway.store.base.WAKE_JOBS`, ``WAKE_NOTICES``, ``WAKE_RECEIPTS``, or :data:`WAKE_ALL`).
Out: that call, soon after any gateway on the same database committed work for the stage
(:meth:`Connection.announce <gateway.store.base.Connection.announce>`: a ``NOTIFY`` that goes out
with the commit), so an idle worker or notifier on any instance takes it at once instead of at its
next poll (``delivery.poll_seconds`` stays the fallback).

The connection is its own (autocommit, TCP keepalives), read by a thread that waits at most
:data:`_TICK` seconds at a time for a notification, so a stop is seen within that. A lost
connection is opened again, waiting twice as long after each failure (up to :data:`_RETRY_MAX`);
once back, every stage is woken (:data:`WAKE_ALL`): what was announced meanwhile was missed. Its
failures are logged with where the store is, never the connection string. SQLite: nothing to listen
to (one machine: the stages wake each other directly), :meth:`Wakeups.start` does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from gateway.redact import redact
from gateway.store.base import WAKE_CHANNEL, Location, PostgreSQL

log = logging.getLogger("gateway.store")

WAKE_ALL = "all"
_TICK = 0.5
_RETRY_MIN, _RETRY_MAX = 0.5, 30.0
_CONNECT_TIMEOUT = 10


class Wakeups:
    def __init__(self, where: Location, on_wake: Callable[[str], None]) -> None:
        self.where = where
        self.on_wake = on_wake
        self.connects = 0  # how many times the LISTEN was (re)established
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start listening (PostgreSQL only); returns once the first ``LISTEN`` is in place, or after the
        connect timeout (the thread keeps trying: polling covers the gap)."""
        if not isinstance(self.where, PostgreSQL):
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, args=(self.where,), name="store wake-ups", daemon=True)
        self._thread.start()
        await self.listening(_CONNECT_TIMEOUT + 1.0)

    async def listening(self, timeout: float) -> bool:
        """Whether the ``LISTEN`` is in place, waiting for it at most ``timeout`` seconds."""
        return await asyncio.to_thread(self._listening.wait, timeout)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join, _TICK + _CONNECT_TIMEOUT + 1.0)

    def _deliver(self, what: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.on_wake, what)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _main(self, where: PostgreSQL) -> None:
        import psycopg  # local: loaded on PostgreSQL only

        delay = _RETRY_MIN
        while not self._stop.is_set():
            try:
                self._listen(where)
                delay = _RETRY_MIN  # it was up: the next failure starts the backoff again
            except psycopg.Error as exc:
                self._listening.clear()
                if self._stop.is_set():
                    return
                log.warning("store wake-ups: %s: %s; listening again in %.1f s (polling meanwhile)", where,
                            _words(where, exc), delay)  # fmt: skip
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX)

    def _listen(self, where: PostgreSQL) -> None:
        import psycopg

        with psycopg.connect(where.dsn.reveal(), autocommit=True, connect_timeout=_CONNECT_TIMEOUT, keepalives=1,
                             keepalives_idle=30, keepalives_interval=10, keepalives_count=3) as conn:  # fmt: skip
            conn.execute(f"LISTEN {WAKE_CHANNEL}")
            self.connects += 1
            self._listening.set()
            if self.connects > 1:
                log.info("store wake-ups: listening again on %s", where)
                self._deliver(WAKE_ALL)  # what was announced while the connection was down was missed
            while not self._stop.is_set():
                for notify in conn.notifies(timeout=_TICK):
                    self._deliver(notify.payload)


def _words(where: PostgreSQL, exc: Exception) -> str:
    """An error in one line, the connection string and its password masked."""
    import psycopg.conninfo

    dsn = where.dsn.reveal()
    password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    return " ".join(redact(str(exc), [dsn, *([str(password)] if password else [])]).split()) or type(exc).__name__

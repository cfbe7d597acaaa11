"""The gateways that share one database: each instance's name, kept alive by a heartbeat.

In: the instance's name (``cluster.instance``), a token of its own run, and its
heartbeats. Out: the ``instances`` rows, one per name: a second gateway that
starts under the name of one still alive is refused (:meth:`Instances.register_instance`
returns the live row), and :meth:`Instances.live_instances` tells whether
another one watched the store while this one was down. Only the worker of a
shared store (PostgreSQL) registers: on SQLite the spool's lock already keeps a
second daemon out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.store.base import Connection


@dataclass(frozen=True)
class Instance:
    """One ``instances`` row: a gateway's name, its run's token, where it runs and when it was last alive."""

    id: str
    token: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float


class Instances(Connection):
    """The ``instances`` table."""

    def _instance(self, instance: str) -> Instance | None:
        row = self.db.execute(
            "SELECT id, token, host, pid, started_at, heartbeat_at FROM instances WHERE id = ?"
            + self.dialect.for_update,
            (instance,),
        ).fetchone()
        return None if row is None else Instance(*row)

    def register_instance(
        self, instance: str, token: str, host: str, pid: int, *, alive_since: float,
        stale: Callable[[Instance], bool] = lambda row: False,
    ) -> Instance | None:  # fmt: skip
        """Take the name ``instance`` for this run (``token``); None when it is ours now.

        The row of another run is taken over when its last heartbeat is older than ``alive_since``, or
        ``stale`` says that run is surely over (the same host, its process gone); else it is returned
        and nothing changes: a gateway alive under that name.
        """
        now = self.clock()
        with self.transaction() as db:
            row = self._instance(instance)
            if row is not None and row.token != token and row.heartbeat_at >= alive_since and not stale(row):
                return row
            db.execute(
                "INSERT INTO instances (id, token, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET token = excluded.token, host = excluded.host, pid = excluded.pid,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                (instance, token, host, pid, now, now),
            )
        return None

    def instance_heartbeat(self, instance: str, token: str) -> bool:
        """This run is alive; False when the name is no longer its own (another run took it over)."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE instances SET heartbeat_at = ? WHERE id = ? AND token = ?", (self.clock(), instance, token)
            )
        return cur.rowcount == 1

    def unregister_instance(self, instance: str, token: str) -> None:
        """This run stops: its name is free at once."""
        with self.transaction() as db:
            db.execute("DELETE FROM instances WHERE id = ? AND token = ?", (instance, token))

    def live_instances(self, alive_since: float) -> list[str]:
        """The names of the instances whose last heartbeat came at ``alive_since`` or later."""
        rows = self.db.execute("SELECT id FROM instances WHERE heartbeat_at >= ? ORDER BY id", (alive_since,))
        return [str(r[0]) for r in rows]

"""The store's connection: one SQLite file, its pragmas, its schema and its transactions.

In: the path of the database file (beside the spool files) and a clock. Out:
an open connection in WAL mode with ``synchronous=FULL`` (a commit that
returned is on disk) and the schema migrated (:mod:`gateway.store.schema`).
The daemon and the CLI open the same file; WAL lets them run together, and
``BEGIN IMMEDIATE`` makes one writer at a time across processes.

The query methods live in the modules beside this one (jobs, receipts,
outbox, reports), each a layer over :class:`Connection`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.store import schema


class Connection:
    """Synchronous access to the store file. One instance per thread."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        try:
            self.migrate()
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def migrate(self) -> None:
        with self.transaction() as db:
            schema.migrate(db, self.path)

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time across processes."""
        if self.db.in_transaction:  # nested: join the outer transaction
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def writable(self) -> bool:
        """A real write, committed: a row written to the ``probe`` table and deleted, in one transaction.

        A lock alone (``BEGIN IMMEDIATE``, then ``ROLLBACK``) writes nothing: a full
        disk or a read-only file system would still look fine.
        """
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO probe (at) VALUES (?)", (self.clock(),))
                db.execute("DELETE FROM probe")
        except sqlite3.Error:
            return False
        return True

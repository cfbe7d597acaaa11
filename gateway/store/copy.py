"""Moving a site's store: a SQLite job store copied into an empty PostgreSQL one, and what a store holds.

In: the SQLite file of a spool (opened as it is, never migrated: its schema
version must be this code's) and an open PostgreSQL :class:`Connection` (its
schema migrated when it was opened). Out: every row of every table copied in
one PostgreSQL transaction, ids kept, each identity column's sequence set past
the highest copied id, and the count of rows per table, read back from the
target inside that transaction.

The copy is generic: the tables and their columns are read from the two
catalogues (they must match, which they do at the same schema version), and
the tables are filled in the order their foreign keys need, each through
:meth:`Connection.insert_rows`. It copies rows verbatim and decides nothing
about them, so it is the one writer of every table besides the table's own
module (the ``notifications`` table's is :mod:`gateway.store.outbox`;
tests/test_layout.py names this exception). The SQLite file is held with
``BEGIN IMMEDIATE`` from :meth:`SQLiteSource.open` to its close, so the rows
read are one snapshot and no writer changes them meanwhile; the target tables
are locked against writers for the whole copy, and refused when they hold any
row. This is the one module that speaks to both engines at once, so it names
their catalogues (``sqlite_master``, ``information_schema``) itself.

What a moved site's instances must find in the bucket (the cluster layout of
:mod:`gateway.spool.objects`) is read here too: :meth:`SQLiteSource.open_messages`,
the messages a job or a notice still needs, and :meth:`SQLiteSource.waiting_parts`,
the kept parts of split mails not whole yet.

:func:`describe` says what a store is without changing it (check-config):
reachable or not, and its schema version against this code's.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg.conninfo

from gateway.store.base import Connection, Database, Location, PostgreSQL, stored_schema_version
from gateway.store.outbox import NoticeState
from gateway.store.schema import SCHEMA_VERSION, StoreError
from gateway.store.states import FINAL_STATES

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Rows read from SQLite at a time.
_BATCH = 500
# A notice in these states is still to be sent: the notifier may read its message's document.
_UNSENT = (NoticeState.NEW, NoticeState.PENDING)


@dataclass(frozen=True)
class OpenMessage:
    """A message the moved site still needs (a job not final, or a notice not sent), and its document's upload
    as the store records it."""

    message_id: str
    upload_key: str
    uploaded_at: float
    object_deleted_at: float
    open_job: bool  # a job of it is not final (else only a notice is still to be sent)

    @property
    def stored(self) -> bool:
        """Recorded as uploaded and not removed since: the worker uses the key as it is."""
        return bool(self.upload_key) and self.uploaded_at > 0 and not self.object_deleted_at


def _checked(name: str) -> str:
    if not _NAME.match(name):
        raise StoreError(f"unexpected table or column name {name!r}")
    return name


class SQLiteSource:
    """A SQLite job store read as it is: no migration, one snapshot, writers kept out until :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        try:
            self.version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if self.version == SCHEMA_VERSION:
                self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")  # read only: nothing to keep
        self._db.close()

    def tables(self) -> list[str]:
        """The tables, each after those its foreign keys name."""
        names = [str(r[0]) for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )]  # fmt: skip
        needs = {n: {str(r[2]) for r in self._db.execute(f"PRAGMA foreign_key_list({_checked(n)})")} for n in names}
        ordered: list[str] = []
        while len(ordered) < len(names):
            ready = [n for n in names if n not in ordered and needs[n] <= {*ordered, n}]
            if not ready:
                raise StoreError(f"{self.path}: the foreign keys of {sorted(set(names) - set(ordered))} form a loop")
            ordered += ready
        return ordered

    def columns(self, table: str) -> list[str]:
        return [_checked(str(r[1])) for r in self._db.execute(f"PRAGMA table_info({_checked(table)})")]

    def count(self, table: str) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {_checked(table)}").fetchone()[0])

    def rows(self, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
        cursor = self._db.execute(f"SELECT {', '.join(columns)} FROM {_checked(table)} ORDER BY rowid")
        while batch := cursor.fetchmany(_BATCH):
            yield from batch

    def count_open_jobs(self) -> dict[str, int]:
        """The jobs not in a final state, by state."""
        marks = ", ".join("?" for _ in FINAL_STATES)
        rows = self._db.execute(
            f"SELECT state, COUNT(*) FROM jobs WHERE state NOT IN ({marks}) GROUP BY state ORDER BY state",
            [str(s) for s in FINAL_STATES],
        )
        return {str(state): int(n) for state, n in rows}

    def open_messages(self) -> list[OpenMessage]:
        """The messages that have a job not in a final state, or a job with a notice not sent yet."""
        finals, unsent = ", ".join("?" for _ in FINAL_STATES), ", ".join("?" for _ in _UNSENT)
        open_job = f"EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id AND j.state NOT IN ({finals}))"
        rows = self._db.execute(
            f"SELECT m.id, m.upload_key, m.uploaded_at, m.object_deleted_at, {open_job} FROM messages m"
            f" WHERE {open_job} OR EXISTS (SELECT 1 FROM jobs j JOIN notifications n ON n.job_id = j.id"
            f" WHERE j.message_id = m.id AND n.state IN ({unsent})) ORDER BY m.id",
            [*(str(s) for s in FINAL_STATES), *(str(s) for s in FINAL_STATES), *(str(s) for s in _UNSENT)],
        )
        return [OpenMessage(str(r[0]), str(r[1]), float(r[2]), float(r[3]), bool(r[4])) for r in rows]

    def waiting_parts(self) -> list[str]:
        """The spool ids of the kept parts of split mails still waiting for others (their sets not done)."""
        rows = self._db.execute(
            "SELECT spool_id FROM partial_parts WHERE done_at = 0 AND spool_id != '' ORDER BY spool_id"
        )
        return [str(r[0]) for r in rows]


def _postgres(target: Connection) -> Database:
    if not target.shared:
        raise StoreError(f"{target.where}: not a PostgreSQL store")
    return target.db


def _count(db: Database, table: str) -> int:
    row = db.execute(f"SELECT COUNT(*) FROM {_checked(table)}").fetchone()
    return int(row[0]) if row is not None else 0


def _pg_tables(db: Database) -> dict[str, list[str]]:
    rows = db.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " AND c.table_name != 'schema_version' ORDER BY c.table_name, c.ordinal_position"
    )
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(str(table), []).append(str(column))
    return tables


def target_rows(target: Connection) -> dict[str, int]:
    """The rows each table of a PostgreSQL store holds (only the non-empty tables)."""
    db = _postgres(target)
    counts = {t: _count(db, t) for t in _pg_tables(db)}
    return {t: n for t, n in counts.items() if n}


def _identity_columns(db: Database) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY table_name"
    )
    return [(_checked(str(t)), _checked(str(c))) for t, c in rows]


def copy_rows(
    source: SQLiteSource, target: Connection, *, changes: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None
) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target`` in one transaction; the rows per table.

    ``changes``: per table, per value of its first column (the primary key of
    ``messages``), the columns to write differently from the source (the upload
    of a document done on the way). Raises :class:`StoreError` when the target
    holds a row, or when the two schemas differ; nothing is written then.
    """
    _postgres(target)
    tables = source.tables()
    wanted = {t: source.columns(t) for t in tables}
    with target.transaction() as db:
        have = _pg_tables(db)
        if set(have) != set(wanted) or any(set(have[t]) != set(wanted[t]) for t in tables):
            raise StoreError(f"{target.where}: its tables differ from those of {source.path}")
        # No instance writes while the rows go in, and none wrote before (checked under the lock).
        db.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE ROW EXCLUSIVE MODE")
        for table in tables:
            if db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                raise StoreError(f"{target.where}: table {table} is not empty")
        for table in tables:
            columns = wanted[table]
            edits = (changes or {}).get(table, {})

            def edited(rows: Iterator[tuple[Any, ...]], columns: list[str] = columns,
                       edits: Mapping[str, Mapping[str, Any]] = edits) -> Iterator[tuple[Any, ...]]:  # fmt: skip
                for row in rows:
                    edit = edits.get(row[0])
                    yield tuple(edit.get(n, v) for n, v in zip(columns, row, strict=True)) if edit else row

            target.insert_rows(table, columns, edited(source.rows(table, columns)))
        for table, column in _identity_columns(db):
            db.execute(
                f"SELECT setval(pg_get_serial_sequence(?, ?), COALESCE(MAX({column}), 0) + 1, false) FROM {table}",
                (table, column),
            )
        counts = {t: _count(db, t) for t in tables}
        expected = {t: source.count(t) for t in tables}
        if counts != expected:
            raise StoreError(f"{target.where}: the rows copied ({counts}) are not those read ({expected})")
    return counts


def hidden(where: PostgreSQL) -> list[str]:
    """What no text may show of a PostgreSQL store's connection string: all of it, and its password."""
    dsn = where.dsn.reveal()
    password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    return [dsn, *([str(password)] if password else [])]


def describe(where: Location) -> str:
    """What the store at ``where`` is, without changing it; :class:`StoreError` when it cannot be used.

    A store with no tables yet, or an older schema, is fine: the daemon creates
    or migrates it at start. A newer schema, or a PostgreSQL server that does not
    answer, is not (the error never holds the connection string).
    """
    if isinstance(where, PostgreSQL):
        version = stored_schema_version(where)
    else:
        path = Path(where)
        if not path.exists():
            return f"{path}: no job store yet; the daemon creates it at start"
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    if version > SCHEMA_VERSION:
        raise StoreError(f"{where}: schema version {version} is newer than this fax-gateway knows ({SCHEMA_VERSION})")
    if version == 0:
        return f"{where} answers, no tables yet: the daemon creates them at start"
    if version < SCHEMA_VERSION:
        return f"{where} answers, schema version {version}: the daemon migrates it to {SCHEMA_VERSION} at start"
    return f"{where} answers, schema version {version} (current)"

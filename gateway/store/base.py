"""The store's connection: SQLite or PostgreSQL, their small differences, the schema and the transactions.

In: where the store is: the path of a SQLite file (beside the spool files), or
:class:`PostgreSQL` (a connection string, a secret), and a clock. Out: an open
connection with the schema migrated (:mod:`gateway.store.schema`) and
:meth:`Connection.transaction`; ``self.db`` runs the queries of the modules
beside this one (jobs, receipts, outbox, reports, links) on either backend.
For migrate-store (:mod:`gateway.store.copy`) alone: :meth:`Connection.insert_rows`,
a table's rows inserted in bulk as they are, and :func:`stored_schema_version`,
a PostgreSQL store's version read without creating or migrating anything.

The queries are written once, in the SQL both engines speak: ``?`` placeholders
(turned into psycopg's ``%s`` here), ``INSERT ... ON CONFLICT DO NOTHING``,
``RETURNING``. What differs lives in this module and nowhere else:

- SQLite: one file in WAL mode with ``synchronous=FULL`` (a commit that returned
  is on disk); the daemon and the CLI open the same file, and ``BEGIN IMMEDIATE``
  makes one writer at a time across processes. The schema version is
  ``PRAGMA user_version``.
- PostgreSQL: one psycopg connection per :class:`Connection` (the store is used
  from one thread, so a pool would hold connections nobody uses), autocommit
  outside :meth:`Connection.transaction`, which is one ``BEGIN ... COMMIT``
  (READ COMMITTED: a claim, ``UPDATE ... WHERE state IN (...)``, is atomic, and
  the reads that look for work skip rows another instance holds locked,
  :attr:`Dialect.skip_locked`). The schema version is the ``schema_version``
  table, and migrations run under ``pg_advisory_xact_lock`` so that two
  instances starting together apply each one once. A lost connection (the
  server restarted, the network cut) fails the call that found it with
  :class:`~gateway.store.schema.StoreUnavailable`; the next call connects again.

The connection string never reaches an error: a failure to connect is
:class:`~gateway.store.schema.StoreUnreachable` (a ``StoreError``) naming host, port and database, the DSN and its
password masked.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.redact import redact
from gateway.settings import Secret, StoreSettings
from gateway.store import schema
from gateway.store.schema import StoreUnavailable, StoreUnreachable

if TYPE_CHECKING:  # psycopg is loaded on PostgreSQL only: a SQLite gateway never imports it
    import psycopg
    import psycopg.rows


class Cursor(Protocol):
    """What the queries use of a cursor, on either backend."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...


@dataclass(frozen=True)
class PostgreSQL:
    """Where a PostgreSQL store is: its connection string (libpq form or a URL), never printed."""

    dsn: Secret = field(repr=False)

    def __str__(self) -> str:
        import psycopg.conninfo

        info = psycopg.conninfo.conninfo_to_dict(self.dsn.reveal())
        port = f" port {info['port']}" if info.get("port") else ""
        return f"PostgreSQL database {info.get('dbname', '')!r} on {info.get('host', 'localhost')!r}{port}"


Location = str | Path | PostgreSQL

def database_errors() -> tuple[type[Exception], ...]:
    """Any error either backend raises (a lost connection, a full disk, a locked file), for ``except``.

    psycopg's errors are among them once psycopg is loaded; until then (always, on SQLite) none of
    them can be raised, and the store does not load psycopg to name them.
    """
    pg = sys.modules.get("psycopg")
    return (sqlite3.Error, StoreUnavailable) if pg is None else (sqlite3.Error, pg.Error, StoreUnavailable)


def unreachable_errors() -> tuple[type[Exception], ...]:
    """The PostgreSQL server gone or unreachable (the connection lost or closed, a connection refused): a
    store shared over the network can be down while the gateway runs, a SQLite file beside the spool cannot."""
    pg = sys.modules.get("psycopg")
    return (StoreUnavailable,) if pg is None else (pg.OperationalError, pg.InterfaceError, StoreUnavailable)


# The channel a commit that makes work due is announced on (PostgreSQL NOTIFY; gateway.store.wakeups listens),
# and what it says: which stage has work.
WAKE_CHANNEL = "fax_gateway_wake"
WAKE_JOBS, WAKE_NOTICES, WAKE_RECEIPTS = "jobs", "notices", "receipts"

# The key of the advisory lock the migrations run under (any constant the gateway alone uses).
_MIGRATION_LOCK = 0x6661782D67770001
# A table or column name a statement is built with (Connection.insert_rows).
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Rows sent in one executemany (insert_rows; pipeline mode on PostgreSQL).
_BATCH = 500


def location(settings: StoreSettings, sqlite_path: Path) -> Location:
    """Where ``[store]`` says the store is: ``sqlite_path`` (in the spool), or the PostgreSQL database."""
    return PostgreSQL(settings.dsn) if settings.backend == "postgresql" else sqlite_path


@dataclass(frozen=True)
class Dialect:
    """What the SQL of the two engines does not share."""

    name: str
    # The column types the schema names as {word} (schema.MIGRATIONS).
    types: Mapping[str, str]
    # After a query that looks for work to claim: rows another transaction holds are passed over
    # (skip_locked: the jobs of a query on ``jobs j``; skip_locked_rows: a query on one table).
    skip_locked: str
    skip_locked_rows: str
    # After a query that reads a row to change it: it is locked until the transaction ends.
    for_update: str

    def render(self, ddl: str) -> str:
        for word, sql in self.types.items():
            ddl = ddl.replace("{" + word + "}", sql)
        return ddl


SQLITE = Dialect(
    "sqlite",
    {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "rowid": "INTEGER PRIMARY KEY", "real": "REAL",
     "blob": "BLOB", "empty_blob": "x''"},
    skip_locked="", skip_locked_rows="", for_update="",
)  # fmt: skip
_IDENTITY = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
POSTGRES = Dialect(
    "postgresql",
    {"serial": _IDENTITY, "rowid": _IDENTITY, "real": "DOUBLE PRECISION", "blob": "BYTEA", "empty_blob": "''::bytea"},
    skip_locked=" FOR UPDATE OF j SKIP LOCKED",
    skip_locked_rows=" FOR UPDATE SKIP LOCKED",
    for_update=" FOR UPDATE",
)


class PgRow:
    """A PostgreSQL row that reads like :class:`sqlite3.Row`: by index, by name, ``keys()``, unpacking."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


# A row of either backend: by index, by name, keys(), unpacking.
Row = sqlite3.Row | PgRow


def _pg_rows(cursor: psycopg.Cursor[Any]) -> psycopg.rows.RowMaker[PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: PgRow(index, values)


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """A query's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgDatabase:
    """psycopg behind the calls the queries make of a :class:`sqlite3.Connection`."""

    def __init__(self, owner: Connection) -> None:
        self.owner = owner

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self.owner._pg_execute(_pg_sql(sql), parameters)


def _hidden(where: PostgreSQL) -> list[str]:
    """What an error must never show of ``where``: the connection string, and its password."""
    import psycopg.conninfo

    dsn = where.dsn.reveal()
    try:
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    return [dsn, *([str(password)] if password else [])]


def _connect_postgres(where: PostgreSQL) -> psycopg.Connection[PgRow]:
    import psycopg  # local: only a PostgreSQL store loads it

    try:
        return psycopg.connect(where.dsn.reveal(), autocommit=True, row_factory=_pg_rows, connect_timeout=10)
    except psycopg.Error as exc:
        why = " ".join(redact(str(exc), _hidden(where)).split())  # one line: libpq adds a tab-indented hint
        raise StoreUnreachable(f"{where}: cannot connect: {why}") from None


def stored_schema_version(where: PostgreSQL) -> int:
    """The schema version of the PostgreSQL store at ``where`` (0: no tables yet), nothing created or migrated:
    for check-config, which must not change a store. Raises StoreUnreachable as opening it would."""
    with _connect_postgres(where) as conn:
        found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        row = conn.execute("SELECT version FROM schema_version").fetchone() if found and found[0] else None
    return int(row[0]) if row is not None else 0


def lock_key(what: str) -> int:
    """The advisory lock key of ``what`` (a signed 64-bit number from its SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"fax-gateway\0{what}".encode()).digest()[:8], "big", signed=True)


class Connection:
    """Synchronous access to the store. One instance per thread."""

    def __init__(self, where: Location, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.where = where
        self._pg: psycopg.Connection[PgRow] | None = None
        self._sqlite: sqlite3.Connection | None = None
        self.db: Database
        if isinstance(where, PostgreSQL):
            self.dialect = POSTGRES
            self._pg = _connect_postgres(where)
            self.db = _PgDatabase(self)
        else:
            self.dialect = SQLITE
            self.path = Path(where)
            self._sqlite = self.db = sqlite3.connect(
                self.path, isolation_level=None, timeout=10.0, check_same_thread=False
            )
            self._sqlite.row_factory = sqlite3.Row
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=FULL")
            self._sqlite.execute("PRAGMA foreign_keys=ON")
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    @property
    def shared(self) -> bool:
        """Whether other gateways may use this store too (PostgreSQL), or this one alone (SQLite)."""
        return self._pg is not None

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()

    def migrate(self) -> None:
        with self.transaction() as db:
            if self._pg is not None:  # one instance at a time: the others wait, then find the work done
                db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                if db.execute("SELECT version FROM schema_version").fetchone() is None:
                    db.execute("INSERT INTO schema_version (version) VALUES (0)")
            schema.migrate(db, str(self.where), self.dialect, self._read_version, self._write_version)

    def _read_version(self) -> int:
        if self._pg is not None:
            return int(self.db.execute("SELECT version FROM schema_version").fetchone()[0])
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _write_version(self, version: int) -> None:
        if self._pg is not None:
            self.db.execute("UPDATE schema_version SET version = ?", (version,))
        else:
            self.db.execute(f"PRAGMA user_version = {int(version)}")

    @property
    def schema_version(self) -> int:
        return self._read_version()

    # -- PostgreSQL: a lost connection ---------------------------------------------------

    def _pg_ready(self) -> psycopg.Connection[PgRow]:
        """The connection, connected again first if it was lost (never inside a transaction)."""
        assert self._pg is not None and isinstance(self.where, PostgreSQL)
        if self._pg.broken or self._pg.closed:
            self._pg.close()
            self._pg = _connect_postgres(self.where)
        return self._pg

    def _pg_in_transaction(self) -> bool:
        import psycopg.pq

        pg = self._pg
        return pg is not None and not (pg.broken or pg.closed) and (
            pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        )

    def _lost(self, exc: psycopg.Error) -> StoreUnavailable:
        assert isinstance(self.where, PostgreSQL)
        why = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, _hidden(self.where))
        return StoreUnavailable(f"{self.where}: the connection was lost ({why}); the next call connects again")

    def _pg_execute(self, sql: str, parameters: Sequence[Any]) -> Cursor:
        import psycopg

        conn = self._pg if self._pg_in_transaction() else self._pg_ready()
        assert conn is not None
        try:
            return conn.execute(sql, parameters)
        except psycopg.OperationalError as exc:
            if conn.broken or conn.closed:
                raise self._lost(exc) from None
            raise

    def serialise(self, what: str) -> None:
        """Inside a transaction: wait until no other transaction on the database holds ``what``, and hold it
        until this one ends (``pg_advisory_xact_lock``). On SQLite every write transaction is one at a time
        already: nothing to do."""
        if self._pg is not None:
            self.db.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(what),))

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One transaction (joined when one is open): BEGIN IMMEDIATE on SQLite, BEGIN on PostgreSQL."""
        if self._pg is not None:
            import psycopg

            if self._pg_in_transaction():
                yield self.db
                return
            conn = self._pg_ready()
            try:
                with conn.transaction():
                    yield self.db
            except psycopg.OperationalError as exc:  # BEGIN, COMMIT or ROLLBACK on a connection that went away
                if conn.broken or conn.closed:
                    raise self._lost(exc) from None
                raise
            return
        assert self._sqlite is not None
        if self._sqlite.in_transaction:  # nested: join the outer transaction
            yield self.db
            return
        self._sqlite.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self._sqlite.execute("ROLLBACK")
            raise
        self._sqlite.execute("COMMIT")

    def insert_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Insert ``rows`` (values in ``columns``' order) into ``table`` as they are, in batches; how many.

        The bulk copy of :mod:`gateway.store.copy`, which moves every table's rows verbatim into an
        empty store (migrate-store) and decides nothing about them. Every other write goes through the
        named method of the table's own module (tests/test_layout.py lets no other module call this).
        In one transaction (the caller's, when one is open).
        """
        for name in (table, *columns):
            if not _NAME.match(name):
                raise schema.StoreError(f"unexpected table or column name {name!r}")
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        count = 0
        with self.transaction():
            batch: list[Sequence[Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= _BATCH:
                    count += self._insert_batch(sql, batch)
                    batch = []
            if batch:
                count += self._insert_batch(sql, batch)
        return count

    def _insert_batch(self, sql: str, batch: list[Sequence[Any]]) -> int:
        if self._pg is not None:
            with self._pg.cursor() as cursor:
                cursor.executemany(_pg_sql(sql), batch)
        else:
            assert self._sqlite is not None
            self._sqlite.executemany(sql, batch)
        return len(batch)

    def announce(self, what: str) -> None:
        """Tell every gateway on the same database that ``what`` (:data:`WAKE_JOBS` ...) has work now.

        A ``NOTIFY``: inside a transaction it goes out with the commit (and not at all with a rollback),
        outside one at once. SQLite: nothing (one machine: the stages wake each other directly).
        """
        if self._pg is not None:
            self.db.execute("SELECT pg_notify(?, ?)", (WAKE_CHANNEL, what))

    def writable(self) -> bool:
        """A real write, committed: a row written to the ``probe`` table and deleted, in one transaction.

        A lock alone (``BEGIN IMMEDIATE``, then ``ROLLBACK``) writes nothing: a full
        disk or a read-only file system would still look fine.
        """
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO probe (at) VALUES (?)", (self.clock(),))
                db.execute("DELETE FROM probe")
        except database_errors():
            return False
        return True

"""A private PostgreSQL server for the store's tests, and the store fixtures that run on both backends.

In: Debian's PostgreSQL programs (``initdb``, ``pg_ctl``: on the PATH or in
``/usr/lib/postgresql/*/bin``; missing, a test fails under ``CI=true`` and is
skipped elsewhere). Out: ``postgres_server``, one server per test session on a
free loopback port, its data in a temporary directory owned by an unprivileged
user when the tests run as root (PostgreSQL refuses root), password auth only,
stopped and removed at the end (a test may stop it and start it again: :meth:`PostgresServer.stop`,
:meth:`PostgresServer.start`); ``postgres_dsn``, a fresh empty database per
test (``CREATE DATABASE``: cheap, and nothing one test leaves reaches another);
``store_location``, parametrised: the SQLite file in ``tmp_path``, then a
PostgreSQL database, so that every test that opens its store from it runs on both.
"""

from __future__ import annotations

import itertools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from gateway.settings import Secret
from gateway.store import Location, PostgreSQL
from tests.support_net import free_port
from tests.support_tools import need_program

_PG_BIN = "/usr/lib/postgresql/*/bin"
# What the server is given to start and answer (pg_ctl -w waits for it, within this).
START_SECONDS = 60


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    # How to stop and start it again (:meth:`stop`, :meth:`start`): pg_ctl, the data directory, the log,
    # the server's options and the user it runs as (None: this one).
    pg_ctl: str = ""
    data: Path = Path()
    log: Path = Path()
    options: str = ""
    owner: str | None = None

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m fast``: every connection is cut), waiting until it is down."""
        subprocess.run(_as_unprivileged([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"],
                                        self.owner), check=True, capture_output=True, timeout=60)  # fmt: skip

    def start(self) -> None:
        """Start it again on the same port, waiting until it answers."""
        subprocess.run(
            _as_unprivileged([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "-t",
                              str(START_SECONDS), "start"], self.owner),
            check=True, capture_output=True, timeout=START_SECONDS + 10,
        )  # fmt: skip

    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={dbname}"
                " connect_timeout=10")  # fmt: skip

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(), autocommit=True)


def _as_unprivileged(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    initdb = need_program("initdb", "postgresql", also_in=_PG_BIN)
    pg_ctl = need_program("pg_ctl", "postgresql", also_in=_PG_BIN)
    owner = None
    if os.geteuid() == 0:
        owner = "nobody"
        need_program("runuser", "util-linux")
    # Not under pytest's own temporary root: as root that is mode 0700, closed to the server's user.
    base = Path(tempfile.mkdtemp(prefix="fgw-pg-", dir="/tmp"))
    data, pwfile, log = base / "data", base / "pw", base / "server.log"
    host, port = "127.0.0.1", free_port()
    # Loopback TCP only, no Unix socket; durability off: the tests' databases are thrown away.
    options = (f"-c listen_addresses={host} -p {port} -c unix_socket_directories=''"
               " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")  # fmt: skip
    server = PostgresServer(host, port, "gateway_test", secrets.token_hex(12), pg_ctl, data, log, options, owner)
    pwfile.write_text(server.password + "\n")
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run(
            _as_unprivileged([initdb, "-D", str(data), "-U", server.user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                              "-E", "UTF8", "--locale=C", "--no-sync"], owner),
            check=True, capture_output=True, timeout=START_SECONDS,
        )  # fmt: skip
        server.start()
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace") + (log.read_text() if log.exists() else "")
        shutil.rmtree(base, ignore_errors=True)
        raise AssertionError(f"the test PostgreSQL server did not start:\n{detail[-4000:]}") from None
    try:
        yield server
    finally:
        subprocess.run(_as_unprivileged([pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], owner),
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


_DATABASES = itertools.count(1)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The connection string of a new, empty database on the session's server, dropped after the test."""
    name = f"gw_test_{os.getpid()}_{next(_DATABASES)}"
    with postgres_server.admin() as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    try:
        yield postgres_server.dsn(name)
    finally:
        with postgres_server.admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """Where a test's store is: the SQLite file in ``tmp_path``, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite3"
    return PostgreSQL(Secret(request.getfixturevalue("postgres_dsn")))

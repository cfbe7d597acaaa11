"""The cluster's database: a private PostgreSQL server on a loopback port, started and stopped by the benchmark.

Debian's programs (``initdb``, ``pg_ctl``, ``createdb``, ``dropdb``: on the
PATH or in ``/usr/lib/postgresql/*/bin``). The data directory lives under the
scratch directory, owned by ``nobody`` when the benchmark runs as root
(PostgreSQL refuses root), as the tests' server does (tests/support_postgres.py).
It listens on 127.0.0.1 only (no Unix socket), password authentication only,
with PostgreSQL's own durability settings (``fsync``, ``synchronous_commit``
on: a commit that returned is on disk, as SQLite's ``synchronous=FULL``).
Each drain gets a database of its own (:meth:`PostgresReference.create`),
dropped after it. The password is random and only ever passed in the
environment (``PGPASSWORD``, ``FAX_GATEWAY_STORE_DSN``), never on a command line.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

from harness import BenchError, cpu_seconds, free_port

USER = "faxgw_bench"
START_SECONDS = 60


def program(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), "")
    if not found:
        raise BenchError(f"{name} not found: install Debian's postgresql package")
    return found


def available() -> bool:
    try:
        program("initdb")
    except BenchError:
        return False
    return True


class PostgresReference:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data, self.log = root / "data", root / "server.log"
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.owner = "nobody" if os.geteuid() == 0 else None
        self._n = 0

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.owner, "--", *argv] if self.owner else argv

    def _run(self, argv: list[str], *, timeout: float = START_SECONDS) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise BenchError(f"{Path(argv[0]).name} failed: {detail[-1] if detail else done.returncode} "
                             f"(see {self.log})")  # fmt: skip

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.owner:
            entry = pwd.getpwnam(self.owner)
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run([program("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                   "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"])  # fmt: skip
        pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._run([program("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t",
                   str(START_SECONDS), "start"], timeout=START_SECONDS + 10)  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([program("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"])

    def _client(self, name: str) -> list[str]:
        return [program(name), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER]

    def create(self) -> str:
        """A new, empty database; its connection string (a secret: for the environment only)."""
        self._n += 1
        name = f"faxgw_bench_{self._n}"
        self._run([*self._client("createdb"), name])
        return f"host=127.0.0.1 port={self.port} user={USER} password={self.password} dbname={name}"

    def drop(self, dsn: str) -> None:
        name = dsn.rsplit("dbname=", 1)[1]
        self._run([*self._client("dropdb"), "--force", name])

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> float:
        """CPU seconds used so far by the server: the postmaster, its background processes and the live
        backends (each gateway's connections live as long as the gateway does)."""
        return cpu_seconds(self.pid())

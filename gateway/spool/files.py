"""The spool directory: the files of accepted messages, written durably.

In: a message id and the files of that message (raw mail, fax document).
Out: a directory ``messages/<id>/`` that exists only once every file in it and
the directory entry itself are on disk. Files are written under ``tmp/``,
fsync'd, the directory fsync'd, then renamed into ``messages/`` and the parent
fsync'd: a later stage never sees a half-written message (Postfix's and
Mailman's write-then-rename discipline). The SQLite row that makes the
message a job is committed only after this returns.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

RAW_NAME = "message.eml"
FAX_NAME = "fax.pdf"


class SpoolLockedError(RuntimeError):
    """Another daemon holds the spool."""


class Spool:
    # Whether the accepted files are where every gateway of a cluster reads them (gateway.spool.objects).
    shared = False

    def __init__(self, directory: str | os.PathLike[str], *, fsync: Callable[[int], None] = os.fsync) -> None:
        self.root = Path(directory)
        self.tmp = self.root / "tmp"
        self.messages = self.root / "messages"
        self._fsync = fsync
        self._lock_fd: int | None = None

    def create(self) -> None:
        for d in (self.root, self.tmp, self.messages):
            d.mkdir(mode=0o750, parents=True, exist_ok=True)

    @property
    def db_path(self) -> Path:
        return self.root / "jobs.sqlite3"

    def lock(self) -> None:
        """Take the daemon lock; it dies with the process (flock), so kill -9 leaves none."""
        fd = os.open(self.root / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            which = f" (pid {holder})" if holder.isdigit() else ""
            raise SpoolLockedError(f"{self.root}: another fax-gateway daemon{which} is using this spool") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def write(self, message_id: str, files: Mapping[str, bytes]) -> Path:
        """Write ``files`` as ``messages/<message_id>/`` durably; blocking."""
        work = self.tmp / message_id
        final = self.messages / message_id
        renamed = False
        try:
            work.mkdir(mode=0o750)
            for name, data in files.items():
                fd = os.open(work / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    self._fsync(fd)
                finally:
                    os.close(fd)
            self._fsync_dir(work)
            os.rename(work, final)
            renamed = True
            self._fsync_dir(self.messages)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if renamed:  # never another message's directory
                shutil.rmtree(final, ignore_errors=True)
            raise
        return final

    def keep(self, message_id: str, files: Mapping[str, bytes]) -> str:
        """Write an accepted message's ``files`` durably (blocking); the object key of its fax document
        when it is already stored where the provider fetches it, else ``""`` (here: the worker uploads it)."""
        self.write(message_id, files)
        return ""

    def close(self) -> None:
        """Let go of what :meth:`create` opened (here: nothing)."""

    def path(self, message_id: str, name: str) -> Path:
        return self.messages / message_id / name

    def read(self, message_id: str, name: str) -> bytes:
        return self.path(message_id, name).read_bytes()

    def remove(self, message_id: str) -> None:
        self._remove_directory(message_id)

    def _remove_directory(self, message_id: str) -> None:
        shutil.rmtree(self.messages / message_id, ignore_errors=True)

    def clean_tmp(self) -> int:
        """Remove leftovers of writes that never finished (a crash mid-write)."""
        count = 0
        for entry in self.tmp.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
            count += 1
        return count

    def remove_unrecorded(self, recorded: Callable[[Collection[str]], set[str]]) -> list[str]:
        """Remove message directories the store has no row for; blocking, only at start-up.

        They are left by a crash between the rename and the commit: their
        client never got a 250, so nothing was promised for them.
        """
        ids = self.message_ids()
        stray = sorted(ids - recorded(ids))
        for message_id in stray:
            self._remove_directory(message_id)
        return stray

    def message_ids(self) -> set[str]:
        return {p.name for p in self.messages.iterdir() if p.is_dir()}

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

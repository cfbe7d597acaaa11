"""The spool's guards: one daemon per spool (real processes, a real kill -9), the store's schema versions."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway.daemon.app import Gateway
from gateway.spool import FAX_NAME, RAW_NAME, Spool
from gateway.store import NewMessage, Store
from gateway.store import schema as store_mod
from tests.support_proc import Daemon
from tests.support_settings import SettingsFactory
from tests.support_smtp import fax_mail

SIMULATOR = "[provider]\nsimulator = true\n"


@pytest.fixture
async def two_daemons(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Daemon]]:
    """Two daemons with their own ports and config files, on one spool."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Daemon(tmp_path / "a", SIMULATOR)
    second = Daemon(tmp_path / "b")
    second.spool = first.spool
    second.write_config(SIMULATOR)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_a_second_daemon_on_the_spool_refuses_to_start_and_a_kill_9_leaves_no_lock(
    two_daemons: tuple[Daemon, Daemon],
) -> None:
    first, second = two_daemons
    await first.start()
    assert await first.ready() == "READY=1"

    await second.start()
    assert await second.wait() == 1
    assert first.proc is not None
    assert f"another fax-gateway daemon (pid {first.proc.pid}) is using this spool" in second.stderr()
    assert "Traceback" not in second.stderr()

    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    assert (first.spool / "daemon.lock").exists()  # the file stays; the lock died with the process

    await second.start()
    assert await second.ready() == "READY=1"
    errors, reply = await aiosmtplib.send(
        fax_mail(), sender="alice@example.com", recipients=["0145678900@fax.local"],
        hostname="127.0.0.1", port=second.smtp_port, timeout=30,
    )  # fmt: skip
    assert errors == {}
    (job_id,) = re.findall(r"queued as ([0-9a-f]{16})$", reply)
    assert [j.id for j in second.jobs()] == [job_id]
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0


async def test_a_store_from_a_newer_version_stops_the_daemon_with_a_clear_message(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, SIMULATOR)
    try:
        spool = Spool(daemon.spool)
        spool.create()
        Store(spool.db_path).close()
        with sqlite3.connect(spool.db_path) as db:
            db.execute("PRAGMA user_version = 99")
        await daemon.start()
        assert await daemon.wait() == 1
        err = daemon.stderr()
        assert f"{spool.db_path}: schema version 99 is newer than this fax-gateway knows (2)" in err
        assert "Traceback" not in err
    finally:
        await daemon.close()


def _message(message_id: str) -> NewMessage:
    return NewMessage(
        id=message_id, envelope_from="alice@example.com", header_from="", reply_to="", message_id_header="",
        subject="", date_header="", client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=1, doc_bytes=1,
    )  # fmt: skip


def test_an_older_store_is_migrated_and_keeps_its_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobs.sqlite3"
    old = Store(path)
    assert old.schema_version == store_mod.SCHEMA_VERSION
    old.add_message(_message("m1"), [("j1", "+33145678900", "")], "accepted")
    old.close()

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, "ALTER TABLE jobs ADD COLUMN note TEXT"])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(store_mod.MIGRATIONS))
    new = Store(path)
    try:
        assert new.schema_version == store_mod.SCHEMA_VERSION
        row = new.db.execute("SELECT number, state, note FROM jobs WHERE id = 'j1'").fetchone()
        assert tuple(row) == ("+33145678900", "queued", None)
    finally:
        new.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobs.sqlite3"
    Store(path).close()
    version = store_mod.SCHEMA_VERSION
    broken = "ALTER TABLE jobs ADD COLUMN note TEXT; ALTER TABLE no_such_table ADD COLUMN x TEXT"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", version + 1)
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    monkeypatch.undo()
    again = Store(path)
    try:
        assert again.schema_version == version
        assert "note" not in {r["name"] for r in again.db.execute("PRAGMA table_info(jobs)")}
    finally:
        again.close()


def test_spooled_files_and_their_directories_are_fsynced_before_they_appear(tmp_path: Path) -> None:
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.fsync(fd)

    spool = Spool(tmp_path / "spool", fsync=fsync)
    spool.create()
    final = spool.write("m1", {RAW_NAME: b"raw", FAX_NAME: b"%PDF"})
    work = spool.tmp / "m1"
    assert synced == [str(work / RAW_NAME), str(work / FAX_NAME), str(work), str(spool.messages)]
    assert final == spool.messages / "m1" and spool.read("m1", FAX_NAME) == b"%PDF"
    assert list(spool.tmp.iterdir()) == []


def test_a_failed_write_leaves_nothing_and_never_touches_another_message(tmp_path: Path) -> None:
    calls: list[int] = []

    def fsync_fails_last(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:  # the spool directory, after the rename
            raise OSError(errno.EIO, "I/O error")

    spool = Spool(tmp_path / "spool", fsync=fsync_fails_last)
    spool.create()
    with pytest.raises(OSError):
        spool.write("m1", {RAW_NAME: b"raw"})
    assert spool.message_ids() == set() and list(spool.tmp.iterdir()) == []

    calls.clear()
    calls.extend([0, 0, 0])  # from now on fsync succeeds
    spool.write("m2", {RAW_NAME: b"first"})
    with pytest.raises(OSError):
        spool.write("m2", {RAW_NAME: b"second"})
    assert spool.read("m2", RAW_NAME) == b"first"
    assert list(spool.tmp.iterdir()) == []


async def test_start_up_removes_messages_written_but_never_committed(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    spool = Spool(settings.spool.directory)
    spool.create()
    spool.write("recorded", {RAW_NAME: b"raw"})
    spool.write("stray", {RAW_NAME: b"raw"})  # a crash came before its commit
    store = Store(spool.db_path)
    store.add_message(_message("recorded"), [("j1", "+33145678900", "")], "accepted")
    store.close()
    gateway = Gateway(settings)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        await gateway.start()
    try:
        assert spool.message_ids() == {"recorded"}
        assert "spool: removed message stray, written but never committed" in caplog.text
    finally:
        await gateway.stop()

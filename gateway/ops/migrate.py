"""``fax-gateway migrate-store``: a site's SQLite job store moved to PostgreSQL, its open files to S3.

In: the settings file the gateways will run with (``store.backend =
"postgresql"``, S3 storage, ``spool.directory`` the spool of the SQLite site)
and ``FAX_GATEWAY_STORE_DSN`` in the environment (never on the command line).
Out: the PostgreSQL database migrated to this code's schema and holding every
row of the SQLite store, ids kept (:mod:`gateway.store.copy`, one transaction);
a count of rows per table; exit status 0, or 1 with the reason and what to do.

It refuses, before writing anything: while a daemon holds the spool (the spool
lock; it keeps the lock itself until done, so none starts meanwhile), when
the SQLite schema is not this code's, and when the database holds any row.

With several gateways nothing the store still needs may live on one machine:
the files of every message with a job not final or a notice not sent yet, and
of every kept part of a split mail not whole yet, are put in the bucket as
cluster intake puts them (:class:`~gateway.spool.ObjectSpool`): the raw mail at
``<storage.prefix>mail/<id>/message.eml`` naming its fax document, the document
under the key the store records (or a new one, recorded on the copied row), so
that any instance's worker, notifier and split-mail timer reads them. The
SQLite store is left as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import settings as settings_mod
from gateway.ops.actions import AdminError
from gateway.ops.jobs import UsageError
from gateway.redact import redact, secrets_of
from gateway.spool import FAX_NAME, RAW_NAME, ObjectSpool, Spool, SpoolLockedError, StorageUnavailable
from gateway.store import SCHEMA_VERSION, PostgreSQL, database_errors
from gateway.store.base import Connection
from gateway.store.copy import OpenMessage, SQLiteSource, copy_rows, hidden, target_rows

STOP = "sudo systemctl stop fax-gateway"
START = "sudo systemctl start fax-gateway"
# Messages put in the bucket at once.
UPLOADS = 4


@dataclass
class Documents:
    """What became of the files of the messages the store still needs, and of the waiting split-mail parts."""

    uploaded: int = 0  # fax documents put in the bucket
    mails: int = 0  # raw mails put in the bucket (messages and parts)
    parts: int = 0  # of which parts of split mails
    missing: list[str] = field(default_factory=list)  # not in the spool: the worker quarantines their jobs
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # message id -> columns of its copied row

    def add(self, other: Documents) -> None:
        self.uploaded += other.uploaded
        self.mails += other.mails
        self.parts += other.parts
        self.missing += other.missing
        self.changes.update(other.changes)


def _lock(spool: Spool) -> None:
    """Take the daemon lock; as root, leave the lock file to the spool's owner (the service's user)."""
    lock_file = spool.root / "daemon.lock"
    existed = lock_file.exists()
    try:
        spool.lock()
    except SpoolLockedError as exc:
        raise AdminError(f"{exc}: stop it first ({STOP}), then run migrate-store again") from None
    owner = spool.root.stat()
    if not existed and os.geteuid() == 0 and owner.st_uid != 0:
        os.chown(lock_file, owner.st_uid, owner.st_gid)


def _refusals(source: SQLiteSource, spool: Spool) -> None:
    if source.version < SCHEMA_VERSION:
        raise AdminError(
            f"{source.path} has schema version {source.version}, this fax-gateway's is {SCHEMA_VERSION}: bring"
            f" it up to date first ('fax-gateway jobs --spool {spool.root}' opens it with this version and"
            " migrates it), then run migrate-store again"
        )
    if source.version > SCHEMA_VERSION:
        raise AdminError(
            f"{source.path} has schema version {source.version}, newer than this fax-gateway knows"
            f" ({SCHEMA_VERSION}): run migrate-store of the fax-gateway version that wrote it, or a newer one"
        )


def _put_message(objects: ObjectSpool, spool: Spool, msg: OpenMessage) -> Documents:
    """The message's raw mail and fax document from this spool into the bucket, as cluster intake puts them."""
    done = Documents()
    files = {}
    for name in (RAW_NAME, FAX_NAME):
        try:
            files[name] = spool.read(msg.message_id, name)
        except FileNotFoundError:
            pass
    if FAX_NAME not in files and not msg.stored and msg.open_job:
        done.missing.append(msg.message_id)  # else the bucket may hold it already, under the recorded key
    if not files:
        return done
    # A recorded key is kept (the bucket may not hold it yet: the site stored documents locally).
    key = objects.keep(msg.message_id, files, document=msg.upload_key if msg.stored else "")
    done.uploaded, done.mails = int(FAX_NAME in files), int(RAW_NAME in files)
    if key and not msg.stored:
        done.changes[msg.message_id] = {"upload_key": key, "uploaded_at": time.time(), "object_deleted_at": 0}
    return done


def _put_part(objects: ObjectSpool, spool: Spool, spool_id: str) -> Documents:
    """A kept part of a split mail into the bucket, where any instance's intake finds it to complete its set."""
    try:
        raw = spool.read(spool_id, RAW_NAME)
    except FileNotFoundError:
        return Documents()  # its set is then refused as incomplete, as it would be on this machine
    objects.keep(spool_id, {RAW_NAME: raw})
    return Documents(mails=1, parts=1)


async def _upload(settings: settings_mod.Settings, spool: Spool, messages: list[OpenMessage],
                  parts: list[str]) -> Documents:  # fmt: skip
    """Put the files the store still needs in the bucket; the copied rows record the documents' keys."""
    done = Documents()
    objects = ObjectSpool(spool.root, settings.storage)
    slots = asyncio.Semaphore(UPLOADS)

    async def one(put: Callable[[ObjectSpool, Spool, Any], Documents], what: Any) -> None:
        async with slots:
            done.add(await asyncio.to_thread(put, objects, spool, what))

    try:
        await asyncio.to_thread(objects.create)
        await asyncio.gather(*(one(_put_message, m) for m in messages), *(one(_put_part, p) for p in parts))
    except StorageUnavailable as exc:
        raise AdminError(f"{exc.reason}; nothing was copied: check the storage settings and run it again") from None
    finally:
        await asyncio.to_thread(objects.close)
    return done


def _report(source: Path, target: PostgreSQL, counts: dict[str, int], open_jobs: dict[str, int],
            done: Documents, bucket: str) -> str:  # fmt: skip
    lines = [f"Copied the job store {source} into the {target} (schema version {SCHEMA_VERSION}):"]
    lines += [f"  {table:<16}{n:>9} rows" for table, n in counts.items()]
    if open_jobs:
        lines.append("Jobs not final: " + ", ".join(f"{state} {n}" for state, n in open_jobs.items()))
    if done.uploaded or done.mails:
        parts = f" (of which {done.parts} parts of split mails waiting for others)" if done.parts else ""
        lines.append(f"In bucket {bucket!r}: {done.uploaded} fax documents and {done.mails} mails stored{parts}")
    if done.missing:
        lines.append(f"  not in the spool, so their jobs will be quarantined: {', '.join(sorted(done.missing))}")
    lines.append(f"The SQLite store is left as it was. Next: {START}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    settings = settings_mod.load(args.config)
    if settings.store.backend != "postgresql":
        raise UsageError(
            f"{args.config}: store.backend is {settings.store.backend!r}: migrate-store copies into the PostgreSQL"
            ' store the settings name, so set store.backend = "postgresql" (and FAX_GATEWAY_STORE_DSN) first'
        )
    spool = Spool(settings.spool.directory)
    if not spool.db_path.exists():
        raise UsageError(f"no job store at {spool.db_path}: is spool.directory the old site's spool?")
    target_where = PostgreSQL(settings.store.dsn)
    _lock(spool)
    try:
        counts, open_jobs, done = _move(settings, spool, target_where)
    except database_errors() as exc:  # a lost connection, a locked file: the transaction did not commit
        why = redact(str(exc), [*secrets_of(settings), *hidden(target_where)])
        raise AdminError(f"the copy failed, nothing was written to the {target_where}: {why}") from None
    finally:
        spool.unlock()
    if args.json:
        print(json.dumps({"source": str(spool.db_path), "target": str(target_where), "rows": counts,
                          "open_jobs": open_jobs, "documents_stored": done.uploaded, "mails_stored": done.mails,
                          "parts_stored": done.parts, "documents_missing": sorted(done.missing)},
                         indent=2))  # fmt: skip
    else:
        print(_report(spool.db_path, target_where, counts, open_jobs, done, settings.storage.bucket))
    return 0


def _move(
    settings: settings_mod.Settings, spool: Spool, target_where: PostgreSQL
) -> tuple[dict[str, int], dict[str, int], Documents]:
    """The checks, the uploads and the copy (the spool locked): rows per table, open jobs by state, documents."""
    source = SQLiteSource(spool.db_path)
    try:
        _refusals(source, spool)
        target = Connection(target_where)  # migrated to this code's schema
        try:
            held = target_rows(target)
            if held:
                raise AdminError(
                    f"the {target_where} is not empty ({', '.join(f'{t} {n}' for t, n in held.items())}):"
                    " migrate-store copies into an empty database only; give it a new one"
                )
            open_jobs = source.count_open_jobs()
            done = asyncio.run(_upload(settings, spool, source.open_messages(), source.waiting_parts()))
            counts = copy_rows(source, target, changes={"messages": done.changes})
        finally:
            target.close()
    finally:
        source.close()
    return counts, open_jobs, done

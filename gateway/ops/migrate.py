"""``fax-gateway migrate-store``: a site's SQLite job store moved to PostgreSQL, its open documents to S3.

In: the settings file the gateways will run with (``store.backend =
"postgresql"``, S3 storage, ``spool.directory`` the spool of the SQLite site)
and ``FAX_GATEWAY_STORE_DSN`` in the environment (never on the command line).
Out: the PostgreSQL database migrated to this code's schema and holding every
row of the SQLite store, ids kept (:mod:`gateway.store.copy`, one transaction);
a count of rows per table; exit status 0, or 1 with the reason and what to do.

It refuses, before writing anything: while a daemon holds the spool (the spool
lock; it keeps the lock itself until done, so none starts meanwhile), when
the SQLite schema is not this code's, while split mails wait for parts (their
raw mails are in this spool only), and when the database holds any row.

With several gateways nothing a job still needs may live on one machine: the
document of every message whose job is not final is put in the bucket, as the
worker does (under the key the store records, or a new one recorded on the
copied row), so any instance submits it. The SQLite store is left as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import settings as settings_mod
from gateway.delivery.storage import S3Storage, content_type
from gateway.ops.actions import AdminError
from gateway.ops.jobs import UsageError
from gateway.outcomes import Retry
from gateway.redact import redact, secrets_of
from gateway.spool import FAX_NAME, Spool, SpoolLockedError
from gateway.store import DATABASE_ERRORS, SCHEMA_VERSION, PostgreSQL
from gateway.store.base import Connection
from gateway.store.copy import OpenDocument, SQLiteSource, copy_rows, hidden, target_rows

STOP = "sudo systemctl stop fax-gateway"
START = "sudo systemctl start fax-gateway"
# Documents put in the bucket at once.
UPLOADS = 4


@dataclass
class Documents:
    """What became of the documents of the open jobs' messages."""

    uploaded: int = 0
    missing: list[str] = field(default_factory=list)  # not in the spool: the worker quarantines their jobs
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # message id -> columns of its copied row


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
    waiting = source.count_open_partial_sets()
    if waiting:
        raise AdminError(
            f"{waiting} split mail(s) still wait for parts, whose files are in this spool only: start the service"
            f" again ({START}) until they are faxed or refused (within documents.partial_window_seconds), stop it,"
            " then run migrate-store again"
        )


async def _upload(settings: settings_mod.Settings, spool: Spool, documents: list[OpenDocument]) -> Documents:
    """Put each open document in the bucket; the copied rows record where, as the worker records it."""
    done = Documents()
    storage = S3Storage(settings)
    slots = asyncio.Semaphore(UPLOADS)

    async def one(doc: OpenDocument) -> None:
        async with slots:
            try:
                data = await asyncio.to_thread(spool.read, doc.message_id, FAX_NAME)
            except FileNotFoundError:
                if not doc.stored:  # else the bucket may hold it already, under the recorded key
                    done.missing.append(doc.message_id)
                return
            # A recorded key is kept (the bucket may not hold it: the site stored documents locally).
            key = doc.upload_key if doc.stored else storage.new_key()
            await storage.put(key, data, content_type(data))
            done.uploaded += 1
            if not doc.stored:
                done.changes[doc.message_id] = {"upload_key": key, "uploaded_at": time.time(), "object_deleted_at": 0}

    await storage.start()
    try:
        await asyncio.gather(*(one(doc) for doc in documents))
    except Retry as exc:
        raise AdminError(f"{exc.reason}; nothing was copied: check the storage settings and run it again") from None
    finally:
        await storage.stop()
    return done


def _report(source: Path, target: PostgreSQL, counts: dict[str, int], open_jobs: dict[str, int],
            done: Documents, bucket: str) -> str:  # fmt: skip
    lines = [f"Copied the job store {source} into the {target} (schema version {SCHEMA_VERSION}):"]
    lines += [f"  {table:<16}{n:>9} rows" for table, n in counts.items()]
    if open_jobs:
        lines.append("Jobs not final: " + ", ".join(f"{state} {n}" for state, n in open_jobs.items()))
        lines.append(f"Their documents in bucket {bucket!r}: {done.uploaded} stored")
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
    except DATABASE_ERRORS as exc:  # a lost connection, a locked file: the transaction did not commit
        why = redact(str(exc), [*secrets_of(settings), *hidden(target_where)])
        raise AdminError(f"the copy failed, nothing was written to the {target_where}: {why}") from None
    finally:
        spool.unlock()
    if args.json:
        print(json.dumps({"source": str(spool.db_path), "target": str(target_where), "rows": counts,
                          "open_jobs": open_jobs, "documents_stored": done.uploaded,
                          "documents_missing": sorted(done.missing)}, indent=2))  # fmt: skip
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
            done = asyncio.run(_upload(settings, spool, source.open_documents()))
            counts = copy_rows(source, target, changes={"messages": done.changes})
        finally:
            target.close()
    finally:
        source.close()
    return counts, open_jobs, done

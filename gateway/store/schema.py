"""The store's schema: its tables, as a list of migrations, and the code that applies them.

In: a connection inside the caller's transaction (SQLite or PostgreSQL), the
store's schema version and how to write it. Out: the schema at
:data:`SCHEMA_VERSION`, every migration applied in that one transaction; a store
written by a newer fax-gateway is refused with :class:`StoreError` (never half-read).

One schema for both backends: the few column types the engines spell differently
are written ``{real}``, ``{blob}``, ``{empty_blob}``, ``{serial}`` (an id that
counts up) and ``{rowid}``, and :class:`gateway.store.base.Dialect` spells them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.store.base import Database, Dialect

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        received_at {real} NOT NULL,
        envelope_from TEXT NOT NULL,
        header_from TEXT NOT NULL DEFAULT '',
        reply_to TEXT NOT NULL DEFAULT '',
        message_id_header TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        date_header TEXT NOT NULL DEFAULT '',
        client_addr TEXT NOT NULL DEFAULT '',
        auth_user TEXT NOT NULL DEFAULT '',
        doc_type TEXT NOT NULL DEFAULT '',
        doc_pages INTEGER NOT NULL DEFAULT 0,
        doc_bytes INTEGER NOT NULL DEFAULT 0,
        documents TEXT NOT NULL DEFAULT '[]',
        skipped TEXT NOT NULL DEFAULT '[]',
        upload_key TEXT NOT NULL DEFAULT '',
        uploaded_at {real} NOT NULL DEFAULT 0,
        object_deleted_at {real} NOT NULL DEFAULT 0
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id),
        number TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        next_attempt_at {real} NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        provider_ref TEXT NOT NULL DEFAULT '',
        submitted_at {real} NOT NULL DEFAULT 0,
        final_at {real} NOT NULL DEFAULT 0,
        recoveries INTEGER NOT NULL DEFAULT 0,
        receipt_code TEXT NOT NULL DEFAULT '',
        pages_sent INTEGER NOT NULL DEFAULT 0,
        ar_token TEXT NOT NULL DEFAULT '',
        dedupe_key TEXT NOT NULL DEFAULT '',
        -- held jobs: config | url | credit (what releases them)
        hold_kind TEXT NOT NULL DEFAULT '',
        -- submissions whose outcome was unknown (the second one waits for an operator)
        ambiguities INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state, next_attempt_at);
    CREATE INDEX jobs_dedupe ON jobs(dedupe_key);
    CREATE INDEX jobs_ref ON jobs(provider_ref);
    CREATE INDEX jobs_number ON jobs(number, submitted_at);
    CREATE INDEX jobs_message ON jobs(message_id);
    CREATE INDEX jobs_ar_token ON jobs(ar_token);
    CREATE INDEX messages_sender ON messages(envelope_from, received_at);
    CREATE INDEX messages_received ON messages(received_at);
    CREATE INDEX messages_upload ON messages(upload_key);
    CREATE TABLE events (
        id {serial},
        job_id TEXT NOT NULL,
        at {real} NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_job ON events(job_id, id);
    CREATE TABLE receipts (
        id {serial},
        received_at {real} NOT NULL,
        source TEXT NOT NULL,
        ref_accuse TEXT NOT NULL,
        etat_e TEXT NOT NULL,
        numero TEXT NOT NULL DEFAULT '',
        nb_page INTEGER NOT NULL DEFAULT 0,
        heure TEXT NOT NULL DEFAULT '',
        validated TEXT NOT NULL DEFAULT '',
        job_id TEXT NOT NULL DEFAULT '',
        applied_at {real} NOT NULL DEFAULT 0,
        UNIQUE (ref_accuse, etat_e, heure, nb_page)
    );
    CREATE INDEX receipts_ref ON receipts(ref_accuse);
    CREATE TABLE notifications (
        id {serial},
        job_id TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL,
        recipient TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL UNIQUE,
        detail TEXT NOT NULL DEFAULT '',
        payload {blob} NOT NULL DEFAULT {empty_blob},
        -- a mail that came in to be forwarded as it came (a provider AR copy)
        source {blob} NOT NULL DEFAULT {empty_blob},
        state TEXT NOT NULL DEFAULT 'new',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at {real} NOT NULL,
        next_attempt_at {real} NOT NULL DEFAULT 0,
        sent_at {real} NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
    """,
    # 2: the write probe of /healthz (a row written and deleted), and ambiguous jobs whose grace period
    # the gateway did not watch whole (it was down for part of it: a receipt may have been lost).
    """
    CREATE TABLE probe (
        id {rowid},
        at {real} NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN grace_unwatched INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: what a notice tells, as data a mail in any language can say: the provider's answer code
    # (gateway.answers) that failed or held the job, "" when the notice has no such code.
    """
    ALTER TABLE notifications ADD COLUMN code TEXT NOT NULL DEFAULT '';
    """,
    # 4: the links to the senders' status pages (gateway.store.links): each token only as its SHA-256.
    """
    CREATE TABLE status_links (
        token_hash TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        created_at {real} NOT NULL
    );
    CREATE INDEX status_links_job ON status_links(job_id);
    """,
    # 5: the mails of a split scan (message/partial, RFC 2046 5.2.2) kept until their set is whole
    # (gateway.store.partials): one row per part, its raw mail in the spool under spool_id; numbers are the
    # RCPT fax numbers, space-separated; done_at is when the set was faxed or refused (its rows then only
    # answer resent parts, until the window is over).
    """
    CREATE TABLE partial_parts (
        sender TEXT NOT NULL,
        set_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        total INTEGER NOT NULL DEFAULT 0,
        spool_id TEXT NOT NULL DEFAULT '',
        received_at {real} NOT NULL,
        numbers TEXT NOT NULL DEFAULT '',
        client_addr TEXT NOT NULL DEFAULT '',
        auth_user TEXT NOT NULL DEFAULT '',
        done_at {real} NOT NULL DEFAULT 0,
        PRIMARY KEY (sender, set_id, number)
    );
    CREATE INDEX partial_parts_received ON partial_parts(received_at);
    """,
    # 6: the size of each kept part, so that a split mail is bounded like any other (smtp.max_message_size).
    """
    ALTER TABLE partial_parts ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: several gateways on one database. A job being worked on is leased: the instance that holds it
    # (lease_owner, "" for none), until when (lease_expires_at) and a fencing token that only grows
    # (lease_token: every claim and every take-over adds one; a write carrying an older one is refused).
    # A notice being sent is claimed the same way (claim_owner, claim_expires_at). Each running instance
    # has an ``instances`` row it keeps alive (heartbeat_at), so that two never run under one name; and
    # ``dedupe`` holds the resend key of each accepted fax (sender, Message-ID, number): one row per key,
    # written in the transaction that adds the job, so that two copies taken in at once make one job.
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN lease_expires_at {real} NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_lease ON jobs(state, lease_expires_at);
    ALTER TABLE notifications ADD COLUMN claim_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE notifications ADD COLUMN claim_expires_at {real} NOT NULL DEFAULT 0;
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        host TEXT NOT NULL DEFAULT '',
        pid INTEGER NOT NULL DEFAULT 0,
        started_at {real} NOT NULL,
        heartbeat_at {real} NOT NULL
    );
    CREATE TABLE dedupe (
        dedupe_key TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        created_at {real} NOT NULL
    );
    INSERT INTO dedupe (dedupe_key, job_id, created_at)
        SELECT j.dedupe_key, MIN(j.id), j.created_at FROM jobs j WHERE j.dedupe_key != ''
        AND j.created_at = (SELECT MAX(k.created_at) FROM jobs k WHERE k.dedupe_key = j.dedupe_key)
        GROUP BY j.dedupe_key, j.created_at;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    pass


class StoreUnavailable(StoreError):
    """The database could not be reached for this call (PostgreSQL down, the connection lost).

    The call changed nothing that was not committed before; the next one connects again.
    """


def migrate(
    db: Database, where: str, dialect: Dialect, read_version: Callable[[], int], write_version: Callable[[int], None]
) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, inside the caller's transaction."""
    version = read_version()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where}: schema version {version} is newer than this fax-gateway knows"
            f" ({SCHEMA_VERSION}): run the fax-gateway version that wrote it, or a newer one"
        )
    for n in range(version, SCHEMA_VERSION):
        for statement in dialect.render(MIGRATIONS[n]).split(";"):
            if statement.strip():
                db.execute(statement)
        write_version(n + 1)

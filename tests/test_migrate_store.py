"""``fax-gateway migrate-store``: a SQLite site filled by the store's own code, moved to a real PostgreSQL server.

Every command runs as a real subprocess. After the copy every table holds the
same rows on both sides (the mails and documents of open jobs put in moto's S3
on the way, as cluster intake puts them), the job commands print the same on
both stores, and the refusals leave the database as it was: a daemon holding
the spool, a database with rows, a SQLite schema of another version. A site
taken by a real SQLite gateway and moved is served by a cluster gateway
started afterwards: its open job delivered, the receipt mail attaching the
document, its split mail completed by the part still to come.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.daemon.app import Gateway
from gateway.settings import Secret
from gateway.spool import FAX_NAME, RAW_NAME, Spool
from gateway.store import (
    FINAL_STATES,
    MIGRATIONS,
    SCHEMA_VERSION,
    NewPart,
    NoticeKind,
    PostgreSQL,
    State,
    Store,
    alert,
    new_id,
)
from gateway.store.base import SQLITE
from tests.support_cluster import Cluster, mail_to, queued
from tests.support_docs import pdf
from tests.support_mail import split_mail
from tests.support_net import free_port
from tests.support_ops import add_job
from tests.support_proc import Daemon
from tests.support_s3 import S3
from tests.support_settings import SettingsFactory
from tests.support_simulator import SimFactory, provider_env, provider_table
from tests.support_sink import Sink
from tests.support_smtp import fax_mail

TIMEOUT = 90


@dataclass
class Site:
    """A SQLite site: its spool, a settings file naming the PostgreSQL store and S3, and the jobs by state."""

    spool: Path
    config: Path
    dsn: str
    jobs: dict[State, str]
    uploaded: set[str]  # messages whose document the worker had stored already

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAX_GATEWAY_")}
        return env | {"FAX_GATEWAY_STORE_DSN": self.dsn}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], env=self.env(), capture_output=True,
                              text=True, timeout=TIMEOUT)  # fmt: skip

    def migrate(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("migrate-store", "--config", str(self.config), *extra)

    def pg(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)


def _fill(spool_dir: Path) -> tuple[dict[State, str], set[str]]:
    """One job per state, with what the stages leave beside them: receipts, notices, links, a split mail."""
    spool = Spool(spool_dir)
    spool.create()
    store = Store(spool.db_path)
    uploaded: set[str] = set()
    try:
        jobs = {state: add_job(store, state, sender=f"{state}@example.com") for state in State}
        for n, (state, job_id) in enumerate(jobs.items()):
            job = store.get_job(job_id)
            assert job is not None
            if state not in FINAL_STATES:
                spool.write(job.message_id, {RAW_NAME: b"Subject: fax\r\n\r\nbody\r\n", FAX_NAME: pdf(1)})
                if n % 2:  # as the worker leaves it once the document is in the bucket
                    store.update_message(job.message_id, upload_key=f"fax/{new_id()}.pdf", uploaded_at=store.clock())
                    uploaded.add(job.message_id)
        delivered = jobs[State.DELIVERED]
        store.transition(jobs[State.SUBMITTED], State.SUBMITTED, "accepted", provider_ref="R-7")
        receipt = store.add_receipt(source="callback", ref_accuse="R123", etat_e="0", numero="0145678900",
                                    nb_page=2, heure="2026-01-31 10:00:00", validated="1")  # fmt: skip
        assert receipt is not None
        store.mark_receipt_applied(receipt, delivered)
        store.add_receipt(source="mail", ref_accuse="R999", etat_e="53", numero="0145678901", nb_page=0,
                          heure="2026-01-31 11:00:00", validated="1")  # fmt: skip
        store.queue_notice(delivered, NoticeKind.DELIVERED, "2 pages", recipient="delivered@example.com")
        notice = store.due_notices(store.clock() + 1, 10)[0]
        store.mark_notice_composed(notice.id, "delivered@example.com", b"From: x\r\n\r\n\x00\xff binary")
        store.queue_notice(jobs[State.FAILED], NoticeKind.FAILED, "refused", code="113")
        store.queue_notice("", alert("credit"), "the account needs credit")
        store.queue_ar_mail(delivered, "d1g3st", "AR 0", b"Subject: AR\r\n\r\n\x01\x02")
        store.add_status_link(delivered)
        store.add_partial_part(NewPart("scan@example.com", "set-1", 1, 2, new_id(), ["+33145678900"], size=10))
        store.add_partial_part(NewPart("scan@example.com", "set-1", 2, 2, new_id(), ["+33145678900"], size=12))
        store.finish_partial_set("scan@example.com", "set-1")
    finally:
        store.close()
    return jobs, uploaded


def _write_config(path: Path, spool: Path, s3: S3, backend: str = "postgresql") -> Path:
    storage = "".join(f"{k} = {json.dumps(v)}\n" for k, v in s3.table()["storage"].items())
    path.write_text(f'[spool]\ndirectory = "{spool}"\nmin_free_bytes = 0\n[store]\nbackend = "{backend}"\n'
                    f"[storage]\n{storage}")  # fmt: skip
    return path


@pytest.fixture
def site(tmp_path: Path, postgres_dsn: str, s3: S3) -> Iterator[Site]:
    jobs, uploaded = _fill(tmp_path / "spool")
    yield Site(tmp_path / "spool", _write_config(tmp_path / "cluster.toml", tmp_path / "spool", s3), postgres_dsn,
               jobs, uploaded)  # fmt: skip


def _sqlite_tables(path: Path) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                          " AND name NOT LIKE 'sqlite_%'")]  # fmt: skip
        tables = {}
        for name in names:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({name})")]
            tables[name] = (columns, db.execute(f"SELECT {', '.join(columns)} FROM {name}").fetchall())
        return tables
    finally:
        db.close()


def _pg_rows(site: Site, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    with site.pg() as conn:
        return conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()


def test_every_row_is_copied_and_the_open_documents_stored(site: Site, s3: S3, postgres_dsn: str) -> None:
    done = site.migrate()
    assert done.returncode == 0, done.stderr
    secret = Secret(postgres_dsn)
    password = postgres_dsn.split("password=")[1].split()[0]
    assert secret.reveal() not in done.stdout + done.stderr and password not in done.stdout + done.stderr
    source = _sqlite_tables(Spool(site.spool).db_path)
    assert {"messages", "jobs", "events", "receipts", "notifications", "status_links", "partial_parts",
            "probe"} <= set(source)  # fmt: skip
    open_messages = set()
    store = Store(Spool(site.spool).db_path)
    try:
        for state, job_id in site.jobs.items():
            job = store.get_job(job_id)
            assert job is not None
            if state not in FINAL_STATES:
                open_messages.add(job.message_id)
    finally:
        store.close()
    for table, (columns, rows) in source.items():
        copied = _pg_rows(site, table, columns)
        assert len(copied) == len(rows), table
        assert f"  {table:<16}{len(rows):>9} rows" in done.stdout
        if table != "messages":
            assert sorted(copied, key=repr) == sorted(rows, key=repr), table
    # The messages: the same, but those whose document was only in the spool now name its key in the bucket.
    columns, rows = source["messages"]
    by_id = {r[0]: dict(zip(columns, r, strict=True)) for r in _pg_rows(site, "messages", columns)}
    keys = set(s3.keys())
    for row in rows:
        before, after = dict(zip(columns, row, strict=True)), by_id[row[0]]
        if row[0] in open_messages and row[0] not in site.uploaded:
            assert after["upload_key"].startswith("fax/") and after["upload_key"] in keys and after["uploaded_at"] > 0
            before = before | {"upload_key": after["upload_key"], "uploaded_at": after["uploaded_at"]}
        elif row[0] in open_messages:
            assert before["upload_key"] in keys  # the recorded key, in the bucket now
        assert after == before
    # Each open message as cluster intake leaves it: its raw mail naming its document, the document.
    documents = {by_id[m]["upload_key"] for m in open_messages}
    assert keys == documents | {f"fax/mail/{m}/message.eml" for m in open_messages}
    for m in open_messages:
        head = s3.client.head_object(Bucket="fax-documents", Key=f"fax/mail/{m}/message.eml")
        assert head["Metadata"] == {"fax-document": by_id[m]["upload_key"]}
        body = s3.client.get_object(Bucket="fax-documents", Key=by_id[m]["upload_key"])["Body"].read()
        assert body.startswith(b"%PDF-")
    assert f"{len(open_messages)} fax documents and {len(open_messages)} mails stored" in done.stdout, done.stdout
    # The ids go on from the copied ones.
    target = Store(PostgreSQL(Secret(site.dsn)))
    try:
        top = max(r[0] for r in source["events"][1])
        target.add_event(site.jobs[State.QUEUED], "test", "after the move")
        assert [r["id"] for r in target.db.execute("SELECT id FROM events WHERE kind = 'test'")] == [top + 1]
        assert target.schema_version == SCHEMA_VERSION
    finally:
        target.close()


def _normal(text: str) -> str:
    """The job commands' output without the upload keys the move recorded (the rest must be the same)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("  upload ")
                     and '"upload_key"' not in line and '"uploaded_at"' not in line)  # fmt: skip


@pytest.mark.timeout(600)  # about 90 commands, each a process start: slow on a busy machine
def test_the_job_commands_say_the_same_on_both_stores(site: Site) -> None:
    assert site.migrate().returncode == 0
    on_sqlite, on_pg = ("--spool", str(site.spool)), ("--config", str(site.config))

    def both(*args: str, normal: bool = False) -> str:
        a, b = site.run(*args[:1], *on_sqlite, *args[1:]), site.run(*args[:1], *on_pg, *args[1:])
        assert (a.returncode, a.stderr) == (b.returncode, b.stderr), args
        if normal:
            assert _normal(a.stdout) == _normal(b.stdout), args
        else:
            assert a.stdout == b.stdout, args
        return a.stdout

    listed = json.loads(both("jobs", "--json", normal=True))
    assert {j["id"] for j in listed} == set(site.jobs.values())
    both("jobs", normal=True)
    both("jobs", "--json", "--state", "held,failed", "--sender", "held@", normal=True)
    for job_id in site.jobs.values():
        both("show", job_id, normal=True)
    assert "code 0 via callback" in both("show", site.jobs[State.DELIVERED])
    both("show", "0000000000000000")
    # The actions, each on both stores in turn: the same answers, the same states, the same timelines.
    for state in State:
        both("retry", site.jobs[state])
        both("cancel", site.jobs[state])
    both("release")
    both("resolve", "--sent", site.jobs[State.AMBIGUOUS])
    both("resolve", "--not-sent", site.jobs[State.QUEUED])
    states = {j["id"]: j["state"] for j in json.loads(site.run("jobs", *on_sqlite, "--json").stdout)}
    assert states == {j["id"]: j["state"] for j in json.loads(site.run("jobs", *on_pg, "--json").stdout)}
    assert states[site.jobs[State.FAILED]] == "cancelled" and states[site.jobs[State.DELIVERED]] == "delivered"
    for job_id in site.jobs.values():
        a = json.loads(site.run("show", *on_sqlite, "--json", job_id).stdout)["timeline"]
        b = json.loads(site.run("show", *on_pg, "--json", job_id).stdout)["timeline"]
        assert [(e["kind"], e["detail"]) for e in a] == [(e["kind"], e["detail"]) for e in b]


async def test_refused_while_a_daemon_holds_the_spool(tmp_path: Path, postgres_dsn: str, s3: S3) -> None:
    daemon = Daemon(tmp_path, "[provider]\nsimulator = true\n")
    Spool(daemon.spool).create()
    config = _write_config(tmp_path / "cluster.toml", daemon.spool, s3)
    site = Site(daemon.spool, config, postgres_dsn, {}, set())
    await daemon.start()
    try:
        await daemon.ready()
        done = site.migrate()
        assert done.returncode == 1, done.stderr
        assert "another fax-gateway daemon" in done.stderr and "sudo systemctl stop fax-gateway" in done.stderr
    finally:
        await daemon.close()
    with site.pg() as conn:  # nothing was written, not even the schema
        assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)


def test_refused_when_the_database_holds_rows(site: Site) -> None:
    assert site.migrate().returncode == 0
    again = site.migrate("--json")
    assert again.returncode == 1
    assert "is not empty (events " in again.stderr and "copies into an empty database only" in again.stderr
    assert json.loads(again.stdout)["exit_status"] == 1
    assert site.dsn not in again.stdout + again.stderr
    with site.pg() as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (len(State),)


def test_an_older_sqlite_store_is_brought_up_to_date_first(tmp_path: Path, postgres_dsn: str, s3: S3) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    db = sqlite3.connect(spool.db_path, isolation_level=None)
    for migration in MIGRATIONS[:-1]:
        db.executescript(SQLITE.render(migration))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    db.close()
    site = Site(spool.root, _write_config(tmp_path / "cluster.toml", spool.root, s3), postgres_dsn, {}, set())
    done = site.migrate()
    assert done.returncode == 1 and f"schema version {SCHEMA_VERSION - 1}" in done.stderr
    assert f"'fax-gateway jobs --spool {spool.root}'" in done.stderr
    assert site.run("jobs", "--spool", str(spool.root)).returncode == 0  # as the refusal says
    done = site.migrate("--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"]["jobs"] == 0

    db = sqlite3.connect(spool.db_path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    done = site.migrate()
    assert done.returncode == 1 and "newer than this fax-gateway knows" in done.stderr


def test_a_settings_file_on_sqlite_is_a_usage_error(site: Site, s3: S3, tmp_path: Path) -> None:
    config = _write_config(tmp_path / "single.toml", site.spool, s3, backend="sqlite")
    done = site.run("migrate-store", "--config", str(config))
    assert done.returncode == 2 and 'set store.backend = "postgresql"' in done.stderr


def test_send_spools_into_the_postgresql_store(site: Site) -> None:
    assert site.migrate().returncode == 0
    document = site.spool.parent / "letter.pdf"
    document.write_bytes(pdf(1))
    done = site.run("send", "--config", str(site.config), "--to", "01 45 67 89 00", "--from", "ops@example.com",
                    "--json", str(document))  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["jobs"][0]
    listed = json.loads(site.run("jobs", "--config", str(site.config), "--json", "--sender", "ops@").stdout)
    assert [(j["id"], j["state"], j["number"]) for j in listed] == [(job_id, "queued", "+33145678900")]
    assert site.run("show", "--spool", str(site.spool), job_id).returncode == 1  # not in the SQLite store


def test_a_database_that_does_not_answer_is_named_without_its_password(site: Site) -> None:
    password = site.dsn.split("password=")[1].split()[0]
    site.dsn = site.dsn.replace(f"password={password}", "password=not-the-right-one-42")
    done = site.migrate()
    assert done.returncode == 1 and "cannot connect" in done.stderr and "PostgreSQL database 'gw_test_" in done.stderr
    assert "not-the-right-one-42" not in done.stdout + done.stderr and site.dsn not in done.stdout + done.stderr


SECRET = "moved-site-callback-secret-01"
PART_KEPT = re.compile(r"250 2\.0\.0 OK: part 1 of 2 of message scan-7@printer\.example\.com kept")


async def test_a_moved_site_is_served_by_a_cluster_gateway(
    tmp_path: Path, make_settings: SettingsFactory, cluster: Cluster, sim_factory: SimFactory, sink: Sink, s3: S3,
    postgres_dsn: str,
) -> None:  # fmt: skip
    # The SQLite site: a mail and the first part of a split scan, taken by a real gateway with delivery paused
    # and documents stored locally, so that its files are in its spool only.
    old = Gateway(make_settings({"delivery": {"paused": True}}))
    await old.start()
    try:
        [job_id] = queued(await asyncio.to_thread(mail_to, old.smtp.port, to="0145678900@fax.local"))
        scan = fax_mail("alice@example.com", "0145678901@fax.local", message_id="<scan-7@printer.example.com>",
                        subject="Scan from the copier")  # fmt: skip
        parts = split_mail(scan, 2, set_id="scan-7@printer.example.com", to="0145678901@fax.local")
        code, text = await asyncio.to_thread(mail_to, old.smtp.port, to="0145678901@fax.local", raw=parts[0])
        assert code == 250 and PART_KEPT.match(f"{code} {text}"), text
    finally:
        await old.stop()
    site = Site(tmp_path / "spool", _write_config(tmp_path / "cluster.toml", tmp_path / "spool", s3), postgres_dsn,
                {}, set())  # fmt: skip
    done = site.migrate()
    assert done.returncode == 0, done.stderr
    assert "1 fax documents and 2 mails stored (of which 1 parts of split mails waiting for others)" in done.stdout
    # A cluster gateway started afterwards, on no file of the old spool: it delivers the open job, and the
    # receipt mail it sends attaches the document read from the bucket.
    sim = await sim_factory()
    port = free_port()
    sim.callback_url = f"http://127.0.0.1:{port}/receipt/{SECRET}"
    table = {**provider_table(sim), "storage": {"keep_days": 1},
             "http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
             "notify": {"relay": f"127.0.0.1:{sink.port}", "attach_document": True}}  # fmt: skip
    gw = await cluster.start("b", table, {**provider_env(), "FAX_GATEWAY_CALLBACK_SECRET": SECRET})
    [request] = await sim.wait_requests(1, timeout=30)
    assert request.params["ref"] == job_id
    [got] = await sink.wait_for(1, timeout=30)
    [attachment] = list(got.message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf" and attachment.get_content().startswith(b"%PDF-")
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.state == State.DELIVERED
    # The split scan waited through the move: its second part, sent to the cluster gateway, makes it whole.
    [whole_id] = queued(await asyncio.to_thread(mail_to, gw.smtp.port, to="0145678901@fax.local", raw=parts[1]))
    requests = await sim.wait_requests(2, timeout=30)
    assert [r.params["ref"] for r in requests] == [job_id, whole_id]
    assert requests[1].params["fax"].endswith("145678901")

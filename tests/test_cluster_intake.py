"""Intake in a cluster (the PostgreSQL store): the mail and its fax document are in S3, and the job
committed, before the 250; S3 or PostgreSQL unavailable is a precise 451 and nothing is kept."""

from __future__ import annotations

import asyncio
import email.policy
import logging
from email.message import EmailMessage

import psycopg
import pytest

from gateway.spool import FAX_NAME, RAW_NAME, ObjectSpool
from gateway.store import State
from tests.support_cluster import Cluster, mail_to, queued
from tests.support_mail import split_mail
from tests.support_s3 import BUCKET
from tests.support_settings import deep_merge
from tests.support_simulator import SimFactory, provider_env, provider_table
from tests.support_smtp import fax_mail

PAUSED = {"delivery": {"paused": True}}


async def test_the_250_comes_once_the_mail_and_document_are_in_s3_and_the_job_committed(cluster: Cluster) -> None:
    gw = await cluster.start("a", PAUSED)
    raw = fax_mail()
    [job_id] = queued(await asyncio.to_thread(mail_to, gw.smtp.port, raw=raw))
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.state == State.QUEUED
    message = await gw.store.run(lambda s: s.message(job.message_id))
    assert message is not None and message["uploaded_at"] > 0 and message["upload_key"] == job.upload_key
    assert isinstance(gw.spool, ObjectSpool)
    raw_key = gw.spool.raw_key(job.message_id)
    assert sorted(cluster.s3.keys()) == sorted([job.upload_key, raw_key])
    assert job.upload_key.startswith("fax/") and job.message_id not in job.upload_key  # its URL leads nowhere else
    document = cluster.s3.client.get_object(Bucket=BUCKET, Key=job.upload_key)
    assert document["ContentType"] == "application/pdf" and document["ContentDisposition"] == "attachment"
    assert document["Body"].read().startswith(b"%PDF-")
    stored = cluster.s3.client.get_object(Bucket=BUCKET, Key=raw_key)["Body"].read()
    assert stored.replace(b"\r\n", b"\n").rstrip() == raw.replace(b"\r\n", b"\n").rstrip()
    # Another instance reads both knowing the message id alone; this one's directory holds nothing accepted.
    other = ObjectSpool(cluster.tmp_path / "b" / "spool", gw.settings.storage)
    await asyncio.to_thread(other.create)
    try:
        assert (await asyncio.to_thread(other.read, job.message_id, FAX_NAME)).startswith(b"%PDF-")
        assert await asyncio.to_thread(other.read, job.message_id, RAW_NAME) == stored
    finally:
        other.close()
    assert list(gw.spool.messages.iterdir()) == []


async def test_the_worker_finds_the_document_stored_and_the_sweep_removes_both_objects(
    cluster: Cluster, sim_factory: SimFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await sim_factory()
    gw = await cluster.start("a", provider_table(sim), provider_env())
    caplog.set_level(logging.INFO, "gateway")
    [job_id] = queued(await asyncio.to_thread(mail_to, gw.smtp.port))
    await asyncio.wait_for(gw.worker.drain(), 30)
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.state == State.SUBMITTED and len(sim.requests) == 1
    assert not [r for r in caplog.records if "document stored" in r.getMessage()]  # no second upload
    assert job.upload_key in cluster.s3.keys()
    await gw.store.run(lambda s: s.transition(job_id, State.DELIVERED, "receipt", expect=[State.SUBMITTED]))
    await asyncio.wait_for(gw.worker.drain(), 30)
    assert cluster.s3.keys() == []


def _word_file_mail() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "copier@example.com", "0145678900@fax.local", "Scan"
    msg.set_content("Scanned document attached.\n")
    msg.add_attachment(b"PK\x03\x04" + b"\x00" * 200, maintype="application", subtype="octet-stream",
                       filename="scan.docx")  # fmt: skip
    return msg.as_bytes(policy=email.policy.SMTP)


async def test_a_refusal_by_mail_is_kept_in_s3(cluster: Cluster) -> None:
    trusted = {"smtp": {"trusted_networks": [{"cidr": "127.0.0.0/8", "refusals": "mail"}]}}
    gw = await cluster.start("a", deep_merge(PAUSED, trusted))
    code, text = await asyncio.to_thread(mail_to, gw.smtp.port, sender="copier@example.com", raw=_word_file_mail())
    assert code == 250 and "reason goes by mail" in text, text
    [job] = await gw.store.run(lambda s: s.list_jobs())
    assert job.state == State.FAILED
    assert isinstance(gw.spool, ObjectSpool)
    assert cluster.s3.keys() == [gw.spool.raw_key(job.message_id)]
    assert list(gw.spool.messages.iterdir()) == []


async def test_split_mail_parts_are_kept_in_s3_and_the_whole_is_put_together_from_there(cluster: Cluster) -> None:
    gw = await cluster.start("a", PAUSED)
    assert isinstance(gw.spool, ObjectSpool)
    whole = fax_mail(message_id="<scan-42@printer.example.com>", pages=2, policy=email.policy.SMTP)
    parts = split_mail(whole, 2)
    code, text = await asyncio.to_thread(mail_to, gw.smtp.port, raw=parts[0])
    assert code == 250 and "part 1 of 2" in text, text
    [kept] = await gw.store.run(lambda s: s.partial_set("alice@example.com", "scan-42@printer.example.com"))
    assert cluster.s3.keys() == [gw.spool.raw_key(kept.spool_id)]
    assert list(gw.spool.messages.iterdir()) == []
    [job_id] = queued(await asyncio.to_thread(mail_to, gw.smtp.port, raw=parts[1]))
    job = await gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.state == State.QUEUED
    # The parts' objects are gone; the whole's mail and document are there.
    assert sorted(cluster.s3.keys()) == sorted([job.upload_key, gw.spool.raw_key(job.message_id)])


async def test_s3_down_answers_451_storage_unavailable_and_nothing_is_committed(cluster: Cluster) -> None:
    gw = await cluster.start("a", PAUSED)
    cluster.s3.relay.mode = "refuse"
    code, text = await asyncio.to_thread(mail_to, gw.smtp.port)
    assert (code, text) == (451, "4.3.0 The document storage is unavailable, please try again later")
    assert await gw.store.run(lambda s: s.list_jobs()) == []
    assert await gw.store.run(lambda s: s.count_messages()) == 0
    cluster.s3.relay.mode = "forward"
    assert cluster.s3.keys() == []
    queued(await asyncio.to_thread(mail_to, gw.smtp.port))  # back: the same mail is taken


async def test_an_s3_error_after_the_first_object_leaves_nothing(cluster: Cluster) -> None:
    gw = await cluster.start("a", PAUSED)
    cluster.s3.relay.mode = "error"
    cluster.s3.relay.error = (503, "SlowDown")
    code, _ = await asyncio.to_thread(mail_to, gw.smtp.port)
    assert code == 451
    cluster.s3.relay.mode = "forward"
    assert cluster.s3.keys() == [] and await gw.store.run(lambda s: s.count_messages()) == 0


def _cut_off(dsn: str) -> None:
    """PostgreSQL lost: the gateway's connections ended, and no new one let in."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {info['dbname']} ALLOW_CONNECTIONS false")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (info["dbname"],))


def _let_in(dsn: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {info['dbname']} ALLOW_CONNECTIONS true")


@pytest.mark.parametrize("at", ["rcpt", "commit"])
async def test_postgresql_lost_answers_451_store_unavailable_without_the_dsn(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, at: str
) -> None:
    """At RCPT the quotas ask the store; with none, and no Message-ID to look up, the first store call is the
    commit, after the mail and its document were put in S3: they are removed again."""
    quotas = {"quotas": {"per_sender_hourly": 0, "global_hourly": 0}} if at == "commit" else {}
    gw = await cluster.start("a", deep_merge(PAUSED, quotas))
    queued(await asyncio.to_thread(mail_to, gw.smtp.port))
    keys = cluster.s3.keys()
    raw = b"".join(line for line in fax_mail().splitlines(keepends=True) if not line.startswith(b"Message-ID:"))
    await asyncio.to_thread(_cut_off, cluster.dsn)
    try:
        code, text = await asyncio.to_thread(mail_to, gw.smtp.port, raw=raw)
    finally:
        await asyncio.to_thread(_let_in, cluster.dsn)
    assert (code, text) == (451, "4.3.0 The job store is unavailable, please try again later")
    password = psycopg.conninfo.conninfo_to_dict(cluster.dsn)["password"]
    assert password not in caplog.text and cluster.dsn not in caplog.text
    assert "the job store is unavailable" in caplog.text
    assert cluster.s3.keys() == keys  # nothing of the refused mail is left in S3


async def test_receipt_addresses_answer_451_store_unavailable_when_postgresql_is_lost(cluster: Cluster) -> None:
    gw = await cluster.start("a", {**PAUSED, "provider": {"accuse_email": "gateway"}})
    await asyncio.to_thread(_cut_off, cluster.dsn)
    try:

        def rcpt() -> tuple[int, bytes]:
            import smtplib

            with smtplib.SMTP("127.0.0.1", gw.smtp.port, timeout=30) as client:
                client.ehlo("provider.example.net")
                client.mail("ar@provider.example.net")
                return client.rcpt(f"ar-{'0' * 32}@{gw.settings.provider.receipts_domain}")

        code, text = await asyncio.to_thread(rcpt)
    finally:
        await asyncio.to_thread(_let_in, cluster.dsn)
    assert (code, text.decode()) == (451, "4.3.0 The job store is unavailable, please try again later")


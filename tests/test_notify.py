"""The notifier against a real SMTP sink: what the sender gets, when, and only once."""

from __future__ import annotations

import dataclasses
import re
import ssl
import subprocess
from typing import Any

import pytest

from gateway.notify.compose import message_id_header
from gateway.receipts.callback import record_ar_mail
from gateway.settings import Secret
from gateway.store import State
from tests.support_receipts import ReceiptRig, RigFactory, rig_env, rig_table
from tests.support_settings import SettingsFactory
from tests.support_sink import Sink


async def notice_rows(rig: ReceiptRig) -> list[dict[str, Any]]:
    return await rig.rows("SELECT kind, state, recipient, attempts, last_error FROM notifications ORDER BY id")


async def test_a_delivered_receipt_mail_says_it_all(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    job = await rig.add_job(ref="R1", subject="Invoice 42")
    await rig.receipt("R1", "0", 3, heure="14:32")
    assert await rig.notifier.drain() == 1
    (got,) = await sink.wait_for(1)
    msg = got.message
    assert got.rcpt_tos == ["alice@example.com"] and got.mail_from == "fax-gateway@gateway.test"
    assert msg["Subject"] == "Fax to +33 1 45 67 89 00 delivered, 3 pages"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == msg["References"] == "<orig-1@example.com>"
    assert msg["Message-ID"] == message_id_header(f"{job.id}.delivered", "fax-gateway@gateway.test")
    assert (msg["X-Fax-Status"], msg["X-Fax-Job"], msg["X-Fax-Number"]) == ("delivered", job.id, "+33145678900")
    assert (msg["X-Fax-Pages"], msg["X-Fax-Code"], msg["X-Fax-Received"]) == ("3", "0", "14:32")
    body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    for words in ("Status: delivered", "Fax number: +33 1 45 67 89 00", "Pages: 3", "Received at: 14:32",
                  f"Job: {job.id}", 'Your mail: "Invoice 42"',
                  "Sent on: Monday 30 November 2026, 09:00 CET (UTC+01:00)",
                  "Provider code: 0 (received)", "What to do: Nothing"):  # fmt: skip
        assert words in body
    assert not msg.is_multipart()  # the document is not attached by default
    assert (await notice_rows(rig))[0]["state"] == "sent"
    assert "notice sent" in await rig.events(job.id)


async def test_a_failure_in_french_with_the_document_attached(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(language="fr", attach_document=True)
    job = await rig.add_job(ref="R2", document=b"%PDF-1.4 the fax\n")
    await rig.receipt("R2", "31064", 0)
    await rig.notifier.drain()
    msg = (await sink.wait_for(1))[0].message
    assert msg["Subject"] == "Fax vers +33 1 45 67 89 00 non remis : occupé"
    assert (msg["X-Fax-Status"], msg["X-Fax-Code"], msg["X-Fax-Category"]) == ("failed", "31064", "busy")
    body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    for words in (
        "État : non remis (occupé)",
        "Numéro de fax : +33 1 45 67 89 00",
        "Pages : 3 dans le document",
        "Tentative à : 14:32",
        f"Tâche : {job.id}",
        'Votre message : "Invoice 42"',
        "Envoyé le : lundi 30 novembre 2026 à 09:00 CET (UTC+01:00)",
        "Code fournisseur : 31064 (occupé)",
        "Que faire : La ligne était occupée. Renvoyez le message",
    ):
        assert words in body
    assert (msg["X-Fax-Pages"], msg["X-Fax-Pages-Sent"]) == ("3", "0")
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_content() == b"%PDF-1.4 the fax\n" and attachment.get_filename() == f"fax-{job.id}.pdf"


async def test_a_worker_failure_and_a_no_credit_delay_are_told(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    failed = await rig.add_job(state=State.FAILED)
    late = await rig.add_job(state=State.HELD, number="+33298765432")
    await rig.store.run(lambda s: s.queue_notice(failed.id, "failed", "the provider refused the number (107)"))
    await rig.store.run(lambda s: s.queue_notice(late.id, "delayed", "the fax account has no credit"))
    assert await rig.notifier.drain() == 2
    subjects = {m.message["X-Fax-Job"]: m.message["Subject"] for m in await sink.wait_for(2)}
    assert subjects[failed.id] == "Fax to +33 1 45 67 89 00 not delivered: the provider refused the number (107)"
    assert subjects[late.id] == "Fax to +33 2 98 76 54 32 delayed: the fax account has no credit"
    reasons = {m.message["X-Fax-Status"]: m.message["X-Fax-Reason"] for m in sink.messages}
    assert reasons == {"failed": "the provider refused the number (107)", "delayed": "the fax account has no credit"}


async def test_no_control_character_reaches_a_header_of_the_mail(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    job = await rig.add_job(subject="Invoice\x85 42\u2028Bcc: evil@example.com",
                            message_id_header="<orig-2@example.com>\r\nBcc: evil@example.com")  # fmt: skip
    detail = "the provider refused it\r\nBcc: evil@example.com\x85\x1b[31m"
    await rig.store.run(lambda s: s.queue_notice(job.id, "failed", detail))
    assert await rig.notifier.drain() == 1
    (got,) = await sink.wait_for(1)
    assert got.rcpt_tos == ["alice@example.com"]
    head = got.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert "\nBcc:" not in head and "In-Reply-To" not in head
    for name, value in got.message.items():
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", str(value)), name
    assert got.message["X-Fax-Reason"] == "the provider refused it??Bcc: evil@example.com??[31m"
    body = got.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert 'Your mail: "Invoice? 42?Bcc: evil@example.com"' in body


async def test_relay_down_then_up_the_notice_arrives_once(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(min_backoff_seconds=60, max_backoff_seconds=600)
    job = await rig.add_job(ref="R3")
    await rig.receipt("R3", "0", 1)
    await sink.down()
    assert await rig.notifier.drain() == 0
    assert await rig.notifier.drain() == 0  # not due yet: no second try at once
    (row,) = await notice_rows(rig)
    assert (row["state"], row["attempts"]) == ("pending", 1) and "Connect" in row["last_error"]
    rig.clock.advance(61)
    assert await rig.notifier.drain() == 0
    assert (await notice_rows(rig))[0]["attempts"] == 2  # the next wait doubled
    rig.clock.advance(61)
    assert await rig.notifier.drain() == 0
    await sink.up()
    rig.clock.advance(120)
    assert await rig.notifier.drain() == 1
    rig.clock.advance(3600)
    assert await rig.notifier.drain() == 0
    assert len(await sink.wait_for(1)) == 1
    assert sink.messages[0].message["X-Fax-Job"] == job.id
    assert (await notice_rows(rig))[0]["state"] == "sent"


async def test_a_temporary_refusal_is_retried_and_a_permanent_one_recorded(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    await rig.add_job(ref="R4", envelope_from="gone@example.com", header_from="gone@example.com")
    await rig.receipt("R4", "0", 1)
    sink.tempfail = True
    await rig.notifier.drain()
    assert (await notice_rows(rig))[0]["state"] == "pending"
    sink.tempfail = False
    sink.refused.add("gone@example.com")
    rig.clock.advance(3600)
    await rig.notifier.drain()
    (row,) = await notice_rows(rig)
    assert row["state"] == "failed" and "550 5.1.1" in row["last_error"]
    connections = sink.connections
    rig.clock.advance(86400)
    assert await rig.notifier.drain() == 0
    assert sink.connections == connections and sink.messages == []


async def test_a_notice_is_given_up_after_max_retry_seconds(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(max_retry_seconds=7200, max_backoff_seconds=600)
    await rig.add_job(ref="R5")
    await rig.receipt("R5", "0", 1)
    await sink.down()
    for _ in range(20):
        await rig.notifier.drain()
        rig.clock.advance(600)
    (row,) = await notice_rows(rig)
    assert row["state"] == "failed" and row["last_error"].startswith("relay unreachable")


@pytest.mark.parametrize(
    ("order", "fields", "expected"),
    [
        (["reply-to", "from", "envelope"], {"reply_to": "Team <team@example.com>"}, "team@example.com"),
        (["reply-to", "from", "envelope"], {}, "alice@example.com"),
        (["envelope"], {"reply_to": "team@example.com"}, "scanner@example.com"),
        (["from", "envelope"], {"header_from": "MAILER-DAEMON@example.com"}, "scanner@example.com"),
        (["from", "envelope"], {"header_from": "0145678900@fax.local"}, "scanner@example.com"),
        (["envelope", "from"], {"envelope_from": ""}, "alice@example.com"),
    ],
)
async def test_who_the_sender_is(make_rig: RigFactory, sink: Sink, order: list[str], fields: dict[str, str],
                                 expected: str) -> None:  # fmt: skip
    rig = await make_rig(recipient_order=order)
    job_fields = {"envelope_from": "scanner@example.com", "header_from": "Alice <alice@example.com>", **fields}
    await rig.add_job(ref="R6", **job_fields)
    await rig.receipt("R6", "0", 1)
    await rig.notifier.drain()
    assert (await sink.wait_for(1))[0].rcpt_tos == [expected]


async def test_a_scanner_address_is_mapped_to_its_team(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(recipient_order=["envelope"], sender_map={"Scanner-3@example.com": "accounts@example.com"})
    await rig.add_job(ref="R7", envelope_from="scanner-3@example.com")
    await rig.receipt("R7", "0", 1)
    await rig.notifier.drain()
    assert (await sink.wait_for(1))[0].rcpt_tos == ["accounts@example.com"]


async def test_no_usable_sender_skips_the_notice(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    await rig.add_job(ref="R8", envelope_from="", header_from="mailer-daemon@example.com", reply_to="<>")
    await rig.receipt("R8", "31064", 0)
    assert await rig.notifier.drain() == 0
    (row,) = await notice_rows(rig)
    assert row["state"] == "skipped" and "no usable sender" in row["last_error"]
    assert sink.connections == 0


async def test_receipts_limited_to_failures(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(receipts="failures")
    await rig.add_job(ref="R9")
    await rig.add_job(ref="R10")
    await rig.receipt("R9", "0", 1)
    await rig.receipt("R10", "31083", 0)
    assert await rig.notifier.drain() == 1
    assert [m.message["X-Fax-Status"] for m in await sink.wait_for(1)] == ["failed"]
    assert [r["state"] for r in await notice_rows(rig)] == ["skipped", "sent"]


async def test_the_accepted_notice(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(accepted_notice=True)
    job = await rig.add_job(state=State.QUEUED)
    assert await rig.notifier.drain() == 1
    assert await rig.notifier.drain() == 0
    msg = (await sink.wait_for(1))[0].message
    assert msg["Subject"] == "Fax to +33 1 45 67 89 00 accepted" and msg["X-Fax-Job"] == job.id


async def test_admin_alerts_are_rate_limited_and_grouped(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig(admin_address="ops@example.com", admin_alert_interval_seconds=900)
    a = await rig.add_job(state=State.HELD)
    b = await rig.add_job(state=State.AMBIGUOUS)
    await rig.store.run(lambda s: s.queue_notice(a.id, "alert:config", "credentials refused (103)"))
    assert await rig.notifier.drain() == 1
    await rig.store.run(lambda s: s.queue_notice(b.id, "alert:ambiguous", "timeout"))
    await rig.store.run(lambda s: s.queue_notice(a.id, "alert:url", "url refused (105)"))
    assert await rig.notifier.drain() == 0  # within the interval: they wait
    rig.clock.advance(901)
    assert await rig.notifier.drain() == 1
    first, second = await sink.wait_for(2)
    assert first.rcpt_tos == ["ops@example.com"] and first.message["Subject"] == "fax-gateway alert: config"
    assert second.message["Subject"] == "fax-gateway alert: ambiguous, url (2 alerts)"
    text = second.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert b.id in text and "url refused (105)" in text


async def test_a_provider_receipt_mail_is_forwarded_as_it_came(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    job = await rig.add_job(ref="R11")
    raw = b"From: ar@123-fax.net\r\nSubject: Accuse de reception\r\n\r\nFax bien recu.\r\n"
    assert await rig.store.run(lambda s: record_ar_mail(s, job.id, raw))
    assert not await rig.store.run(lambda s: record_ar_mail(s, job.id, raw))  # the same mail twice: once
    assert await rig.notifier.drain() == 1
    msg = (await sink.wait_for(1))[0].message
    assert msg["X-Fax-Status"] == "receipt" and msg["Subject"] == "Fax to +33 1 45 67 89 00: receipt from the provider"
    (attached,) = list(msg.iter_attachments())
    assert attached.get_content_type() == "message/rfc822"
    assert attached.get_content()["Subject"] == "Accuse de reception"
    assert "receipt mail received" in await rig.events(job.id)


@pytest.fixture(scope="session")
def relay_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (made with openssl)."""
    where = tmp_path_factory.mktemp("relay-tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("starttls", [True, False])
async def test_starttls_and_auth_at_the_relay(make_settings: SettingsFactory, sink: Sink,
                                              relay_cert: tuple[str, str], starttls: bool) -> None:  # fmt: skip
    cert, key = relay_cert
    if starttls:
        sink.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sink.tls_context.load_cert_chain(cert, key)
    sink.users = {"gateway": "relay-Pw-9"}
    notify = {"relay_starttls": starttls, "relay_ca_file": cert if starttls else "", "relay_username": "gateway"}
    settings = make_settings(rig_table(sink.port, **notify), rig_env() | {"FAX_GATEWAY_RELAY_PASSWORD": "wrong-Pw-1"})
    rig = ReceiptRig(settings)
    await rig.start()
    try:
        await rig.add_job(ref="R12")
        await rig.receipt("R12", "0", 1)
        assert await rig.notifier.drain() == 0  # a wrong password: kept and retried, never lost
        (row,) = await notice_rows(rig)
        assert row["state"] == "pending" and "wrong-Pw-1" not in row["last_error"]
    finally:
        await rig.stop()
    rig = ReceiptRig(dataclasses.replace(settings, notify=dataclasses.replace(
        settings.notify, relay_password=Secret("relay-Pw-9"))), rig.clock)  # fmt: skip
    await rig.start()
    try:
        rig.clock.advance(3600)
        assert await rig.notifier.drain() == 1
        (got,) = await sink.wait_for(1)
        assert (got.auth_user, got.tls) == ("gateway", starttls)
    finally:
        await rig.stop()


async def test_the_running_notifier_is_woken_by_a_receipt_and_stops_cleanly(
    make_settings: SettingsFactory,
    sink: Sink,
) -> None:
    rig = ReceiptRig(make_settings(rig_table(sink.port), rig_env()))
    await rig.start(notifier=True)
    try:
        job = await rig.add_job(ref="R20")
        await rig.receipt("R20", "0", 2)
        (got,) = await sink.wait_for(1)  # no drain(): the callback woke the notifier
        assert got.message["X-Fax-Job"] == job.id
    finally:
        await rig.stop()
    await rig.notifier.stop()  # idempotent
    assert len(sink.messages) == 1


async def test_a_delayed_notice_for_a_job_that_ended_meanwhile_is_not_sent(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    job = await rig.add_job(state=State.DELIVERED)
    await rig.store.run(lambda s: s.queue_notice(job.id, "delayed", "not sent after 15 minutes", code="retry"))
    assert await rig.notifier.drain() == 0
    (notice,) = await rig.store.run(lambda s: s.notices_of_job(job.id))
    assert notice["state"] == "skipped" and "the job ended (delivered)" in notice["last_error"]
    assert sink.messages == []


@pytest.mark.parametrize("kind", ["alert:config", "alert:credit", "alert:ambiguous-operator", "alert:quarantined"])
async def test_an_alert_that_stops_faxing_goes_out_at_once_and_only_its_repeats_wait(
    make_rig: RigFactory, sink: Sink, kind: str
) -> None:
    rig = await make_rig(admin_address="ops@example.com", admin_alert_interval_seconds=900)
    a, b, c = [await rig.add_job(state=State.HELD) for _ in range(3)]
    await rig.store.run(lambda s: s.queue_notice(a.id, "alert:ambiguous", "timeout"))
    assert await rig.notifier.drain() == 1  # an alert went out: the interval runs
    rig.clock.advance(60)
    await rig.store.run(lambda s: s.queue_notice(b.id, kind, "faxing stopped"))
    assert await rig.notifier.drain() == 1  # at once, not 14 minutes later
    rig.clock.advance(60)
    await rig.store.run(lambda s: s.queue_notice(c.id, kind, "faxing stopped again"))
    assert await rig.notifier.drain() == 0  # its repeat waits for the interval
    rig.clock.advance(900)
    assert await rig.notifier.drain() == 1
    subjects = [m.message["Subject"] for m in await sink.wait_for(3)]
    assert subjects[1:] == [f"fax-gateway alert: {kind.removeprefix('alert:')}"] * 2


async def test_a_relay_failure_is_said_in_words(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    await rig.add_job(ref="R30")
    await rig.receipt("R30", "0", 1)
    await sink.down()
    assert await rig.notifier.drain() == 0
    (row,) = await notice_rows(rig)
    assert row["last_error"].startswith("could not connect to the relay (")
    assert not re.search(r"\b\w+(Error|Exception)\b", row["last_error"]), row["last_error"]


async def failed_jobs(rig: ReceiptRig, senders: list[str]) -> list[str]:
    """One failed job per sender, each with its notice queued; their ids in that order."""
    ids = []
    for sender in senders:
        job = await rig.add_job(state=State.FAILED, envelope_from=sender, header_from=sender)
        await rig.store.run(lambda s, j=job.id: s.queue_notice(j, "failed", "the provider refused the number"))
        ids.append(job.id)
    return ids


SENDERS = [f"user{i}@example.com" for i in range(5)]


async def test_the_notices_due_together_share_one_connection(make_rig: RigFactory, sink: Sink) -> None:
    rig = await make_rig()
    jobs = await failed_jobs(rig, SENDERS)
    assert await rig.notifier.drain() == 5
    assert sink.connections == 1
    assert [m.rcpt_tos for m in await sink.wait_for(5)] == [[s] for s in SENDERS]
    assert [m.message["X-Fax-Job"] for m in sink.messages] == jobs
    assert {(r["state"], r["attempts"]) for r in await notice_rows(rig)} == {("sent", 1)}


async def test_a_refused_recipient_fails_or_waits_alone_on_the_shared_connection(make_rig: RigFactory,
                                                                                 sink: Sink) -> None:  # fmt: skip
    rig = await make_rig(min_backoff_seconds=60, max_backoff_seconds=600)
    sink.refused.add(SENDERS[1])
    sink.deferred.add(SENDERS[3])
    await failed_jobs(rig, SENDERS)
    assert await rig.notifier.drain() == 3
    assert sink.connections == 1
    assert [m.rcpt_tos for m in await sink.wait_for(3)] == [[SENDERS[0]], [SENDERS[2]], [SENDERS[4]]]
    rows = await notice_rows(rig)
    assert [r["state"] for r in rows] == ["sent", "failed", "sent", "pending", "sent"]
    assert "550 5.1.1" in rows[1]["last_error"] and "451 4.2.0" in rows[3]["last_error"]
    sink.deferred.clear()
    assert await rig.notifier.drain() == 0  # not due yet
    rig.clock.advance(61)
    assert await rig.notifier.drain() == 1
    assert (await sink.wait_for(4))[3].rcpt_tos == [SENDERS[3]]
    assert [r["state"] for r in await notice_rows(rig)] == ["sent", "failed", "sent", "sent", "sent"]


async def test_a_connection_dropped_mid_batch_leaves_the_rest_due_for_a_fresh_one(make_rig: RigFactory,
                                                                                  sink: Sink) -> None:  # fmt: skip
    rig = await make_rig(min_backoff_seconds=60, max_backoff_seconds=600)
    sink.drop_after = 2
    await failed_jobs(rig, SENDERS)
    assert await rig.notifier.drain() == 5  # two on the first connection, the other three on the next
    assert sink.connections == 2
    assert [m.rcpt_tos for m in await sink.wait_for(5)] == [[s] for s in SENDERS]
    rows = await notice_rows(rig)
    assert [(r["state"], r["attempts"], r["last_error"]) for r in rows] == [("sent", 1, "")] * 5
    assert await rig.notifier.drain() == 0 and len(sink.messages) == 5  # each once

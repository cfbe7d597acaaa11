"""SMTP intake end to end: a real server on loopback, real clients, real spool and store."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

import aiosmtplib
import pytest

from gateway.daemon.app import Gateway
from gateway.documents import policy
from gateway.spool import FAX_NAME, RAW_NAME
from tests.support_clock import FakeClock
from tests.support_smtp import TIMEOUT, Harness, Raw, Starter, fax_mail, transaction


async def send(h: Harness, recipients: list[str], message: bytes, sender: str = "alice@example.com") -> list[str]:
    raw = await Raw.open(h.port)
    try:
        assert (await raw.cmd("EHLO mfp.example.com")).startswith("250")
        return await transaction(raw, sender, recipients, message)
    finally:
        await raw.close()


async def test_a_pdf_from_a_trusted_network_becomes_one_queued_job(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    message = fax_mail()
    errors, reply = await aiosmtplib.send(
        message, sender="alice@example.com", recipients=["0145678900@fax.local"], hostname="127.0.0.1", port=h.port
    )
    assert errors == {}
    jobs = await h.jobs()
    assert len(jobs) == 1
    job = jobs[0]
    assert reply == f"2.0.0 OK: queued as {job.id}"
    assert (job.number, job.state, job.envelope_from) == ("+33145678900", "queued", "alice@example.com")
    assert h.spool.read(job.message_id, RAW_NAME) == message.replace(b"\n", b"\r\n")
    assert h.spool.read(job.message_id, FAX_NAME).startswith(b"%PDF")
    assert h.spooled == [1]
    timeline = await h.run(lambda s: s.timeline(job.id))
    assert [row["kind"] for row in timeline] == ["accepted"]
    assert "127.0.0.1" in timeline[0]["detail"]


async def test_the_daemon_accepts_a_fax_mail(gateway: Gateway) -> None:
    errors, reply = await aiosmtplib.send(
        fax_mail(), sender="alice@example.com", recipients=["01.45.67.89.00@FAX.local"],
        hostname="127.0.0.1", port=gateway.smtp.port,
    )  # fmt: skip
    assert errors == {} and reply.startswith("2.0.0 OK: queued as ")
    job_id = reply.rsplit(" ", 1)[1]
    job = await gateway.store.run(lambda s: s.get_job(job_id))
    assert job is not None and job.number == "+33145678900"


async def test_one_job_per_distinct_number_and_the_reply_names_them(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    replies = await send(
        h, ["0145678900@fax.local", "+33145678900@fax.local", "0612345678@fax.local"], fax_mail()
    )  # fmt: skip
    assert replies[1] == "250 2.1.5 Recipient OK: fax to +33145678900"
    assert replies[2] == "250 2.1.5 Recipient OK: fax to +33145678900"
    jobs = await h.jobs()
    assert sorted(j.number for j in jobs) == ["+33145678900", "+33612345678"]
    assert len({j.message_id for j in jobs}) == 1
    assert replies[-1].startswith("250 2.0.0 OK: queued as ")
    assert set(replies[-1].split("queued as ")[1].split()) == {j.id for j in jobs}


async def test_a_resent_message_gets_the_existing_job(smtp_gateway: Starter) -> None:
    clock = FakeClock()
    h = await smtp_gateway(clock=clock)
    message = fax_mail(message_id="<resend-1@example.com>")
    first = await send(h, ["0145678900@fax.local"], message)
    second = await send(h, ["0145678900@fax.local", "0612345678@fax.local"], message)
    jobs = await h.jobs()
    assert len(jobs) == 2
    by_number = {j.number: j.id for j in jobs}
    assert first[-1] == f"250 2.0.0 OK: queued as {by_number['+33145678900']}"
    assert second[-1] == f"250 2.0.0 OK: queued as {by_number['+33145678900']} {by_number['+33612345678']}"
    # Another sender, or the same one after the window, is a new fax.
    await send(h, ["0145678900@fax.local"], message, sender="bob@example.com")
    clock.now += 86400 + 1
    await send(h, ["0145678900@fax.local"], message)
    assert len(await h.jobs()) == 4


async def test_a_failing_fsync_answers_451_and_leaves_nothing(smtp_gateway: Starter) -> None:
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        raise OSError(errno.EIO, "I/O error")

    h = await smtp_gateway(fsync=fsync)
    replies = await send(h, ["0145678900@fax.local"], fax_mail())
    assert replies[-1] == "451 4.3.0 Internal error, please try again later"
    assert calls["n"] >= 1
    assert await h.jobs() == []
    assert h.spool.message_ids() == set() and list(h.spool.tmp.iterdir()) == []
    assert h.spooled == []


async def test_a_failing_commit_answers_451_and_removes_the_spooled_files(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    # A message row with the id the next message would get cannot exist; instead
    # make the store refuse writes: a second connection holds the write lock.
    import sqlite3

    blocker = sqlite3.connect(h.spool.db_path, timeout=0.1)
    blocker.execute("BEGIN IMMEDIATE")
    await h.run(lambda s: s.db.execute("PRAGMA busy_timeout = 100"))
    try:
        replies = await send(h, ["0145678900@fax.local"], fax_mail())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert replies[-1] == "451 4.3.0 Internal error, please try again later"
    assert await h.jobs() == []
    assert h.spool.message_ids() == set()


async def test_a_mail_without_a_document_gets_the_documents_refusal(smtp_gateway: Starter) -> None:
    h = await smtp_gateway()
    replies = await send(h, ["0145678900@fax.local"], fax_mail(attach=False))
    assert replies[-1].startswith("554 5.6.0 ")
    assert await h.jobs() == []


async def test_size_limits_552(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"max_message_size": 20_000}})
    raw = await Raw.open(h.port)
    assert "250-SIZE 20000" in await raw.cmd("EHLO mfp")
    assert await raw.cmd("MAIL FROM:<alice@example.com> SIZE=30000") == (
        "552 5.3.4 Message size exceeds the limit of 20000 bytes"
    )
    big = fax_mail(body="x" * 25_000)
    replies = await transaction(raw, "alice@example.com", ["0145678900@fax.local"], big)
    assert replies[-1] == "552 5.3.4 Message size exceeds the limit of 20000 bytes"
    await raw.close()
    assert await h.jobs() == []


async def test_too_many_recipients_452(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"max_recipients": 2}})
    replies = await send(h, ["0145678900@fax.local", "0145678901@fax.local", "0145678902@fax.local"], fax_mail())
    assert replies[3] == "452 4.5.3 Too many recipients (at most 2 per message)"
    assert replies[-1].startswith("250 2.0.0")
    assert len(await h.jobs()) == 2


async def test_hourly_quotas_450(smtp_gateway: Starter) -> None:
    clock = FakeClock()
    h = await smtp_gateway({"quotas": {"per_sender_hourly": 2, "global_hourly": 3}}, clock=clock)
    await send(h, ["0145678900@fax.local", "0145678901@fax.local"], fax_mail())
    replies = await send(h, ["0145678902@fax.local"], fax_mail())
    assert replies[1] == "450 4.7.1 Hourly limit of 2 faxes reached for alice@example.com, try again later"
    replies = await send(h, ["0145678902@fax.local", "0145678903@fax.local"], fax_mail(), sender="bob@example.com")
    assert replies[1].startswith("250 2.1.5")
    assert replies[2] == "450 4.7.1 Hourly fax limit of the gateway reached, try again later"
    assert len(await h.jobs()) == 3
    clock.now += 3601  # an hour later the counts start again
    replies = await send(h, ["0145678904@fax.local"], fax_mail())
    assert replies[-1].startswith("250 2.0.0")


async def test_low_spool_space_452_at_mail(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"spool": {"min_free_bytes": 2**62}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == (
        "452 4.3.1 Insufficient system storage, please try again later"
    )
    await raw.close()


@pytest.mark.parametrize(
    ("sender", "reply"),
    [
        ("", "550 5.7.1 A null sender cannot send faxes: nobody could be told the outcome"),
        ("scanner@fax.local", "550 5.7.1 Senders in a fax domain are refused (scanner@fax.local)"),
        ("loop@Fax.Local", "550 5.7.1 Senders in a fax domain are refused (loop@Fax.Local)"),
        ("x@ar.fax.local", "550 5.7.1 Senders in a fax domain are refused (x@ar.fax.local)"),
    ],
)
async def test_senders_nobody_could_answer_are_refused(smtp_gateway: Starter, sender: str, reply: str) -> None:
    h = await smtp_gateway()
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert await raw.cmd(f"MAIL FROM:<{sender}>") == reply
    await raw.close()


async def test_sender_allow_list_of_a_network(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"trusted_networks": [{"cidr": "127.0.0.0/8", "senders": ["*@example.com"]}]}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert await raw.cmd("MAIL FROM:<eve@elsewhere.test>") == (
        "550 5.7.1 Sender eve@elsewhere.test is not permitted to send faxes from here"
    )
    assert await raw.cmd("MAIL FROM:<Alice@Example.COM>") == "250 2.1.0 Sender OK"
    await raw.close()


async def test_an_untrusted_client_without_auth_is_refused(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"smtp": {"trusted_networks": [{"cidr": "10.0.0.0/8"}]}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO mfp")
    assert await raw.cmd("MAIL FROM:<alice@example.com>") == (
        "550 5.7.1 Client 127.0.0.1 is not permitted to send faxes"
    )
    await raw.close()


class Gate:
    """Wraps a blocking part: its first call waits (in its thread) until released."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.released = threading.Event()
        self.threads: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            first = not self.threads
            self.threads.append(threading.get_ident())
        if first:
            self.entered.set()
            self.released.wait(TIMEOUT)
        return self.real(*args)


@pytest.mark.parametrize("held", ["parsing", "fsync"])
async def test_a_message_held_in_parsing_or_disk_work_does_not_stop_other_sessions(
    smtp_gateway: Starter, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    gate = Gate(policy.extract if held == "parsing" else os.fsync)
    if held == "parsing":
        monkeypatch.setattr(policy, "extract", gate)
    # Examined in a thread of this process (documents.processes = 0), where the gate is.
    table = {"documents": {"processes": 0}} if held == "parsing" else None
    h = await smtp_gateway(table, fsync=gate if held == "fsync" else os.fsync)
    first = asyncio.ensure_future(send(h, ["0145678900@fax.local"], fax_mail()))
    try:
        assert await asyncio.to_thread(gate.entered.wait, TIMEOUT)
        # The first message is now stuck inside its processing; a second client is served in full.
        second = await send(h, ["0612345678@fax.local"], fax_mail(sender="bob@example.com"), sender="bob@example.com")
        assert second[-1].startswith("250 2.0.0 OK: queued as ")
        assert not first.done()
    finally:
        gate.released.set()
    assert (await asyncio.wait_for(first, TIMEOUT))[-1].startswith("250 2.0.0 OK: queued as ")
    assert threading.get_ident() not in gate.threads  # never on the event loop's thread
    assert sorted(j.number for j in await h.jobs()) == ["+33145678900", "+33612345678"]


class _Seen(logging.Handler):
    """Sets ``event`` when a log line holding ``text`` is written."""

    def __init__(self, text: str, event: asyncio.Event) -> None:
        super().__init__()
        self.text, self.event = text, event

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_a_resend_while_the_first_copy_is_being_spooled_gets_its_job(
    smtp_gateway: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(os.fsync)
    h = await smtp_gateway(fsync=gate)
    message = fax_mail(message_id="<slow-1@example.com>")
    first = asyncio.ensure_future(send(h, ["0145678900@fax.local"], message))
    assert await asyncio.to_thread(gate.entered.wait, TIMEOUT)
    # The client gave up on the first copy (held on disk) and sends it again, with one more number.
    waiting = asyncio.Event()
    seen = _Seen("waiting for it", waiting)
    logger = logging.getLogger("gateway.smtp")
    logger.addHandler(seen)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.smtp"):
            second = asyncio.ensure_future(send(h, ["0145678900@fax.local", "0612345678@fax.local"], message))
            await asyncio.wait_for(waiting.wait(), TIMEOUT)
        assert not second.done()
    finally:
        gate.released.set()
        logger.removeHandler(seen)
    first_replies, second_replies = await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)
    by_number = {j.number: j.id for j in await h.jobs()}
    assert len(by_number) == 2
    assert first_replies[-1] == f"250 2.0.0 OK: queued as {by_number['+33145678900']}"
    assert second_replies[-1] == f"250 2.0.0 OK: queued as {by_number['+33145678900']} {by_number['+33612345678']}"


async def test_a_vanished_spool_answers_451_without_details(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"spool": {"min_free_bytes": 1}})
    shutil.rmtree(h.spool.root / "messages")
    shutil.rmtree(h.spool.tmp)
    replies = await send(h, ["0145678900@fax.local"], fax_mail())
    assert replies[-1] == "451 4.3.0 Internal error, please try again later"
    assert await h.jobs() == []

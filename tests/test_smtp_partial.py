"""Split printer mails (message/partial, RFC 2046 5.2.2): each part kept with a 250, the whole faxed once.

A scan split into three mails gets three 250s and becomes one job and one fax, in whatever order the
parts come; parts of another sender never join a set; a set still missing parts at the end of
``documents.partial_window_seconds`` gets one failure receipt naming them; kept parts survive a restart.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

from gateway.documents import partial
from gateway.store import State
from tests.support_clock import FakeClock
from tests.support_mail import message_partial, split_mail
from tests.support_receipts import StartGateway
from tests.support_smtp import Harness, Raw, Starter, fax_mail, spooled_fax, transaction

SENDER = "alice@example.com"
TO = "0145678900@fax.local"
KEPT = re.compile(r"250 2\.0\.0 OK: part (\d) of 3 of message scan-42@printer\.example\.com kept; the fax goes once"
                  r" all parts have arrived")  # fmt: skip
QUEUED = re.compile(r"250 2\.0\.0 OK: queued as (\S+)")


def _scan(pages: int = 2) -> bytes:
    return fax_mail(SENDER, TO, message_id="<scan-42@printer.example.com>", subject="Scan from the copier",
                    pages=pages, policy=email.policy.SMTP)  # fmt: skip


async def _send(port: int, raw: bytes, sender: str = SENDER) -> str:
    client = await Raw.open(port)
    try:
        await client.cmd("EHLO copier")
        replies = await transaction(client, sender, [TO], raw)
    finally:
        await client.close()
    return replies[-1]


def test_reassembly_follows_rfc_2046() -> None:
    inner = _scan()
    parts = split_mail(inner, 3)
    assert [partial.fragment_of(p) for p in parts] == [
        partial.Fragment("scan-42@printer.example.com", n, 3) for n in (1, 2, 3)
    ]
    whole = partial.reassemble(parts)
    msg = email.message_from_bytes(whole, policy=email.policy.default)
    original = email.message_from_bytes(inner, policy=email.policy.default)
    # From and To from the first part's outer headers; Subject, Message-ID, MIME-Version, Content-* enclosed.
    assert msg["Subject"] == "Scan from the copier" and msg["Message-ID"] == "<scan-42@printer.example.com>"
    assert msg["From"] == SENDER and msg.get_content_type() == "multipart/mixed"
    assert whole.split(b"\r\n\r\n", 1)[1] == inner.split(b"\r\n\r\n", 1)[1]  # the bodies, in order, unchanged
    assert isinstance(msg, EmailMessage) and isinstance(original, EmailMessage)
    got = [p.get_content() for p in msg.iter_attachments()]
    assert got == [p.get_content() for p in original.iter_attachments()]


def test_what_is_not_a_usable_part() -> None:
    assert partial.fragment_of(_scan()) is None
    head = b"From: a@example.com\r\nContent-Type: message/partial; "
    for params in (b'number=1; total=3', b'id="x"; total=3', b'id="x"; number=4; total=3', b'id="x"; number=0',
                   b'id="x"; number=1; total=1000'):  # fmt: skip
        assert partial.fragment_of(head + params + b"\r\n\r\nbody\r\n") is None, params
    assert partial.fragment_of(head + b'id="x"; number=2\r\n\r\nbody\r\n') == partial.Fragment("x", 2, None)


async def _one_fax(harness: Harness, order: tuple[int, ...]) -> None:
    parts = split_mail(_scan(), 3)
    said = [await _send(harness.port, parts[n - 1]) for n in order]
    for n, reply in zip(order[:-1], said[:-1], strict=True):
        found = KEPT.fullmatch(reply)
        assert found is not None and found.group(1) == str(n), reply
    last = QUEUED.fullmatch(said[-1])
    assert last is not None, said[-1]
    (job,) = await harness.jobs()
    assert job.id == last.group(1) and job.state == State.QUEUED and job.number == "+33145678900"
    document, row = await spooled_fax(harness)
    assert document.startswith(b"%PDF-") and row["doc_pages"] == 2
    assert row["subject"] == "Scan from the copier" and row["message_id_header"] == "<scan-42@printer.example.com>"
    # The parts' own files are gone; only the reassembled message is in the spool.
    assert harness.spool.message_ids() == {job.message_id}


async def test_three_parts_are_one_job_and_one_fax(smtp_gateway: Starter) -> None:
    await _one_fax(await smtp_gateway(), (1, 2, 3))


async def test_parts_out_of_order(smtp_gateway: Starter) -> None:
    await _one_fax(await smtp_gateway(), (3, 1, 2))


async def test_a_part_sent_twice_is_kept_once_and_a_late_copy_makes_no_new_set(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway()
    parts = split_mail(_scan(), 3)
    assert KEPT.fullmatch(await _send(harness.port, parts[0]))
    assert KEPT.fullmatch(await _send(harness.port, parts[0]))
    assert KEPT.fullmatch(await _send(harness.port, parts[1]))
    assert QUEUED.fullmatch(await _send(harness.port, parts[2]))
    # The printer did not see the last 250 and sends the last part again: kept, no second job, no new set.
    assert KEPT.fullmatch(await _send(harness.port, parts[2]))
    assert len(await harness.jobs()) == 1
    assert await harness.run(lambda s: s.open_partial_sets()) == []


async def test_parts_from_another_sender_do_not_combine(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway()
    parts = split_mail(_scan(), 3)
    other = split_mail(_scan(), 3, sender="bob@example.com")
    assert KEPT.fullmatch(await _send(harness.port, parts[0]))
    assert KEPT.fullmatch(await _send(harness.port, parts[1]))
    assert KEPT.fullmatch(await _send(harness.port, other[2], sender="bob@example.com"))
    assert await harness.jobs() == []
    sets = await harness.run(lambda s: s.open_partial_sets())
    assert sorted(s.sender for s in sets) == ["alice@example.com", "bob@example.com"]
    assert QUEUED.fullmatch(await _send(harness.port, parts[2]))
    assert len(await harness.jobs()) == 1


async def test_a_lone_part_is_kept_not_refused(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway()
    reply = await _send(harness.port, message_partial())
    assert reply == ("250 2.0.0 OK: part 1 of 3 of message abc@example.com kept; the fax goes once all parts"
                     " have arrived")  # fmt: skip
    assert await harness.jobs() == []


async def test_an_incomplete_set_past_the_window_gets_a_receipt_naming_the_missing_part(
    running: StartGateway,
) -> None:
    clock = FakeClock()
    r = await running({"documents": {"partial_window_seconds": 600}}, clock=clock)
    parts = split_mail(_scan(), 3)
    handler = r.gw.smtp.handler
    assert KEPT.fullmatch(await _send(r.gw.smtp.port, parts[0]))
    assert KEPT.fullmatch(await _send(r.gw.smtp.port, parts[2]))
    clock.advance(599)
    assert await handler.expire_partials() == 0 and await r.jobs() == []
    clock.advance(1)
    assert await handler.expire_partials() == 1
    (job,) = await r.jobs()
    assert job.state == State.FAILED and "part 2 of 3 did not arrive within 10 minutes" in job.reason
    await r.gw.notifier.drain()
    (got,) = await r.sink.wait_for(1)
    assert got.rcpt_tos == [SENDER] and got.message["X-Fax-Status"] == "failed"
    body = str(got.message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "part 2 of 3" in body and "Scan from the copier" in body
    assert not r.sim.requests
    # The part that comes too late starts nothing new (the set is finished), and no second receipt goes.
    assert KEPT.fullmatch(await _send(r.gw.smtp.port, parts[1]))
    assert len(await r.jobs()) == 1 and r.gw.spool.message_ids() == {job.message_id}


async def test_kept_parts_survive_a_restart(running: StartGateway) -> None:
    parts = split_mail(_scan(), 3)
    first = await running()
    assert KEPT.fullmatch(await _send(first.gw.smtp.port, parts[0]))
    await first.gw.stop()
    r = await running()  # the same spool and store
    assert KEPT.fullmatch(await _send(r.gw.smtp.port, parts[1]))
    assert QUEUED.fullmatch(await _send(r.gw.smtp.port, parts[2]))
    (job,) = await r.settle(1)
    assert job.state == State.DELIVERED
    assert len(r.sim.requests) == 1  # one fax


async def test_a_sender_has_at_most_partial_max_sets_waiting(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"partial_max_sets": 2}})
    for n in range(2):
        first = split_mail(_scan(), 3, set_id=f"s{n}@p")[0]
        assert (await _send(harness.port, first)).startswith("250 2.0.0 OK: part 1")
    third = await _send(harness.port, split_mail(_scan(), 3, set_id="s2@p")[0])
    assert third == (f"450 4.7.1 Too many split mails from {SENDER} wait for their other parts (at most 2):"
                     " send those first")  # fmt: skip
    assert len(await harness.run(lambda s: s.open_partial_sets())) == 2
    # A part of a set already open is still taken, and another sender is not held up.
    assert (await _send(harness.port, split_mail(_scan(), 3, set_id="s0@p")[1])).startswith("250 2.0.0 OK: part 2")
    other = split_mail(_scan(), 3, set_id="s9@p", sender="bob@example.com")[0]
    assert (await _send(harness.port, other, sender="bob@example.com")).startswith("250 2.0.0 OK: part 1")


async def test_a_split_mail_is_bounded_by_the_message_size_in_all(smtp_gateway: Starter) -> None:
    parts = split_mail(_scan(pages=3), 3)
    harness = await smtp_gateway({"smtp": {"max_message_size": len(parts[0]) + len(parts[1]) + 10}})
    assert KEPT.fullmatch(await _send(harness.port, parts[0]))
    assert KEPT.fullmatch(await _send(harness.port, parts[1]))
    limit = len(parts[0]) + len(parts[1]) + 10
    assert await _send(harness.port, parts[2]) == f"552 5.3.4 Message size exceeds the limit of {limit} bytes"
    assert await harness.jobs() == []
    (kept,) = await harness.run(lambda s: s.open_partial_sets())
    assert len(await harness.run(lambda s: s.partial_set(kept.sender, kept.set_id))) == 2

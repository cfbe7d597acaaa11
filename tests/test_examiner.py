"""Document examination in worker processes: the same replies as in a thread, and a dead worker costs one 451."""

from __future__ import annotations

import asyncio
import dataclasses
import email.parser
import email.policy
import logging
import multiprocessing
import os
import pickle
import re
import signal
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway import replies
from gateway.daemon.app import Gateway
from gateway.documents.examiner import ExaminationError, Examiner, examine_in_worker
from gateway.documents.headers import read_headers
from gateway.documents.policy import DocumentRefused
from gateway.ops.jobs import spool_local
from gateway.settings import DocumentSettings
from gateway.spool import Spool
from tests.support_docs import encrypted_pdf, exe, image, pdf
from tests.support_mail import plain_with
from tests.support_smtp import TIMEOUT, Harness, Raw, Starter, fax_mail, transaction

NUMBER = "0145678900@fax.local"
_JOB_IDS = re.compile(r"queued as [0-9a-f ]+$")


def workers() -> list[int]:
    """Pids of this test process's live examination workers (the forkserver itself is not one)."""
    children = multiprocessing.active_children()
    return sorted(p.pid for p in children if p.pid is not None and p.name.startswith("ForkServerProcess"))


async def data_reply(h: Harness, message: bytes) -> str:
    raw = await Raw.open(h.port)
    try:
        assert (await raw.cmd("EHLO mfp.example.com")).startswith("250")
        return (await transaction(raw, "alice@example.com", [NUMBER], message))[-1]
    finally:
        await raw.close()


def without_attachment() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@example.com", NUMBER, "No document"
    msg.set_content("Please fax the attached file.")
    return msg.as_bytes()


DOCUMENTS: dict[str, Callable[[], bytes]] = {
    "pdf": lambda: plain_with([("invoice.pdf", "application/pdf", pdf(2))]),
    "png": lambda: plain_with([("scan.png", "image/png", image("PNG"))]),
    "refused-type": lambda: plain_with([("setup.exe", "application/octet-stream", exe())]),
    "encrypted-pdf": lambda: plain_with([("secret.pdf", "application/pdf", encrypted_pdf())]),
    "corrupt-pdf": lambda: plain_with([("broken.pdf", "application/pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Cat")]),
    "corrupt-png": lambda: plain_with([("broken.png", "image/png", image("PNG")[:300])]),
    "no-document": without_attachment,
}


def test_a_refusal_is_rebuilt_whole_from_its_pickle() -> None:
    answer = replies.DOC_TYPE.format(name="setup.exe", found="EXE", accepted="PDF", target="PDF")
    refused = DocumentRefused(answer, "type")
    again = pickle.loads(pickle.dumps(refused))
    assert type(again) is DocumentRefused
    assert (again.reply, again.reason, str(again)) == (refused.reply, "type", str(refused.reply))
    assert str(again) == "554 5.6.1 setup.exe: type EXE cannot be faxed (accepted: PDF); convert it to PDF"
    assert again.reply.reply is replies.DOC_TYPE  # the table entry itself, not a copy


async def test_a_refusal_from_a_worker_process_carries_its_table_entry() -> None:
    examiner = Examiner(DocumentSettings(), processes=1)
    await examiner.start()
    try:
        with pytest.raises(DocumentRefused) as caught:
            await examiner.examine(DOCUMENTS["refused-type"]())
    finally:
        await examiner.stop()
    assert caught.value.reason == "type"
    assert caught.value.reply.reply is replies.DOC_TYPE and caught.value.reply.reply.name == "DOC_TYPE"
    assert str(caught.value).startswith("554 5.6.1 setup.exe: type ")


async def test_worker_processes_give_the_replies_a_thread_gives(smtp_gateway: Starter, tmp_path: Path) -> None:
    in_thread = await smtp_gateway({"documents": {"processes": 0}, "spool": {"directory": str(tmp_path / "t")}})
    assert workers() == []
    in_pool = await smtp_gateway({"documents": {"processes": 1}, "spool": {"directory": str(tmp_path / "p")}})
    assert len(workers()) == 1
    for name, build in DOCUMENTS.items():
        message = build()
        thread_reply, pool_reply = await data_reply(in_thread, message), await data_reply(in_pool, message)
        assert _JOB_IDS.sub("queued as <job>", pool_reply) == _JOB_IDS.sub("queued as <job>", thread_reply), name
        assert pool_reply[:3] == ("250" if name in ("pdf", "png") else "554"), (name, pool_reply)
    spooled = [[(j.number, j.state) for j in await h.jobs()] for h in (in_thread, in_pool)]
    assert spooled[0] == spooled[1] == [("+33145678900", "queued")] * 2


async def test_a_worker_that_dies_costs_its_message_a_451_and_the_next_one_gets_a_new_worker(
    smtp_gateway: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    h = await smtp_gateway({"documents": {"processes": 1}})
    assert (await data_reply(h, fax_mail())).startswith("250 2.0.0 OK: queued as ")
    (worker,) = workers()
    os.kill(worker, signal.SIGKILL)  # as a segfault in a C library, or the OOM killer, would
    with caplog.at_level(logging.INFO, logger="gateway.smtp"):
        assert await data_reply(h, fax_mail()) == str(replies.ERROR)
        assert (await data_reply(h, fax_mail())).startswith("250 2.0.0 OK: queued as ")
    died = [r.getMessage() for r in caplog.records if "examining the message died" in r.getMessage()]
    assert len(died) == 1 and re.match(r"session [0-9a-f]+: ", died[0]), died
    assert len(await h.jobs()) == 2
    (replacement,) = workers()
    assert replacement != worker


async def test_start_and_stop_are_idempotent_and_stop_leaves_no_worker() -> None:
    examiner = Examiner(DocumentSettings(), processes=2)
    await examiner.start()
    started = workers()
    await examiner.start()
    assert len(started) == 2 and workers() == started
    extraction, headers = await examiner.examine(fax_mail(message_id="<one@example.com>"))
    assert (extraction.pages, headers.message_id) == (1, "<one@example.com>")
    await examiner.stop()
    assert workers() == []
    await examiner.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await examiner.examine(fax_mail())


async def test_stop_ends_a_worker_that_is_stuck_past_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    examiner = Examiner(DocumentSettings(), processes=1, stop_grace=0.2)
    await examiner.start()
    (worker,) = workers()
    os.kill(worker, signal.SIGSTOP)  # stuck: it never reads the order to finish
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.smtp"):
            await asyncio.wait_for(examiner.stop(), TIMEOUT)
    finally:
        if worker in workers():  # pragma: no cover - only when stop() failed to end it
            os.kill(worker, signal.SIGKILL)
    assert workers() == []
    assert any("ending its workers" in r.getMessage() for r in caplog.records)


async def test_an_unexpected_error_in_a_worker_comes_back_with_its_traceback_and_the_worker_stays() -> None:
    # A page size the settings loader would refuse: the image placement fails inside the worker.
    examiner = Examiner(DocumentSettings(page_size="A5"), processes=1)  # type: ignore[arg-type]
    await examiner.start()
    try:
        (worker,) = workers()
        message = plain_with([("scan.png", "image/png", image("PNG"))])
        with pytest.raises(ExaminationError, match=r"KeyError: 'A5'"):
            await examiner.examine(message)
        assert workers() == [worker]
        with pytest.raises(ExaminationError):
            examine_in_worker(message, examiner.settings)  # the same, in this process
    finally:
        await examiner.stop()


async def test_the_daemon_starts_the_workers_before_smtp_and_ends_them_after_it(
    make_settings: Callable[..., Any],
) -> None:
    gw = Gateway(make_settings({"documents": {"processes": 2}}))
    await gw.start()
    try:
        order = gw.components
        # Between them only the split mails' timer, which examines whole sets too: it ends before the examiner.
        assert order.index(gw.examiner) == order.index(gw.partials) - 1 == order.index(gw.smtp) - 2
        assert gw.examiner is gw.smtp.handler.examiner
        assert len(workers()) == 2
    finally:
        await gw.stop()
    assert workers() == []


async def test_fax_gateway_send_examines_in_its_own_process(make_settings: Callable[..., Any]) -> None:
    settings = make_settings({"documents": {"processes": 4}})
    await asyncio.to_thread(Spool(settings.spool.directory).create)
    reply = await spool_local(settings, "ops@example.com", NUMBER, fax_mail(sender="ops@example.com"))
    assert str(reply).startswith("250 2.0.0 OK: queued as "), reply
    assert reply.reply is replies.QUEUED and str(reply) == f"250 2.0.0 OK: queued as {' '.join(reply.jobs)}"
    assert workers() == []


HEADER_CASES = [
    b"",
    b"\r\n",
    b"\n\nSubject: in the body\n",
    b"Subject: a\r\n\r\nSubject: in the body\r\n",
    b"Subject: a\nFrom: b <b@example.com>\n",  # no body at all
    b"Subject: a\rFrom: b\r\rSubject: body\r",  # CR alone ends lines
    b"Subject: a\r\n folded\r\nFrom: x@example.com\r\n\r\nbody\r\n",
    b"X-A: 1\nnot a header line\nSubject: after it\n\n",
    b"Subject: a\r\n\nFrom: body@example.com\n\n",
]


@pytest.mark.parametrize("raw", [*HEADER_CASES, fax_mail()], ids=range(len(HEADER_CASES) + 1))
def test_headers_are_read_from_the_header_block_as_from_the_whole_message(raw: bytes) -> None:
    whole = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    headers = read_headers(raw)
    names = ("Message-ID", "From", "Reply-To", "Subject", "Date")
    for name, got in zip(names, dataclasses.astuple(headers), strict=True):
        assert got == " ".join(str(whole.get(name, "")).split()), name

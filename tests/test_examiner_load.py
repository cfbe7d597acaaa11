"""One mail never delays everyone: a bounded wait for a worker, a pool that grows, offenders served last."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from gateway import replies
from gateway.documents.examiner import Busy, Examiner
from gateway.documents.policy import DocumentRefused
from gateway.settings import DocumentSettings, SettingsError, from_mapping
from tests.support_bombs import png_bomb
from tests.support_mail import plain_with
from tests.support_smtp import TIMEOUT, Starter, fax_mail
from tests.test_examiner import data_reply

BOMB = plain_with([("bomb.png", "image/png", png_bomb(8944))])


async def until(examiner: Examiner, condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition`` holds, looking again each time the examiner's state changes."""

    async def wait() -> None:
        while not condition():
            examiner.changed.clear()
            await examiner.changed.wait()

    await asyncio.wait_for(wait(), TIMEOUT)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """Worker ``pid`` frozen (SIGSTOP), as one stuck on a slow file; let go however the test ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):  # ended meanwhile (the hard stop)
            os.kill(pid, signal.SIGCONT)


async def started(settings: DocumentSettings, **kwargs: Any) -> Examiner:
    examiner = Examiner(settings, **kwargs)
    await examiner.start()
    return examiner


async def test_a_mail_waits_for_a_worker_at_most_queue_seconds_then_gets_451() -> None:
    examiner = await started(DocumentSettings(processes=1, processes_max=1, queue_seconds=0.3))
    try:
        (worker,) = examiner.pids
        with stopped(worker):
            held = asyncio.ensure_future(examiner.examine(fax_mail(), "192.0.2.1"))
            await until(examiner, lambda: examiner.busy == [worker])
            began = time.monotonic()
            with pytest.raises(Busy):
                await examiner.examine(fax_mail(), "192.0.2.2")
            assert 0.3 <= time.monotonic() - began < 3.0
        extraction, _ = await asyncio.wait_for(held, TIMEOUT)  # the held mail is examined once let go
        assert extraction.pages == 1
    finally:
        await examiner.stop()


async def test_the_pool_grows_under_load_up_to_processes_max_and_shrinks_back() -> None:
    examiner = await started(DocumentSettings(processes=1, processes_max=2, queue_seconds=20))
    try:
        (first,) = examiner.pids
        with stopped(first):
            held = asyncio.ensure_future(examiner.examine(fax_mail(), "192.0.2.1"))
            await until(examiner, lambda: examiner.busy == [first])
            grown = asyncio.ensure_future(examiner.examine(fax_mail(), "192.0.2.2"))  # a second worker starts
            await until(examiner, lambda: len(examiner.pids) == 2)
            extraction, _ = await asyncio.wait_for(grown, TIMEOUT)
            assert extraction.pages == 1
            assert examiner.pids == examiner.busy == [first]  # the extra one, idle again, is ended
        await asyncio.wait_for(held, TIMEOUT)
        assert examiner.pids == [first]
    finally:
        await examiner.stop()


async def test_a_client_whose_mails_keep_hitting_the_bounds_waits_behind_the_others() -> None:
    settings = DocumentSettings(processes=1, processes_max=2, queue_seconds=20, penalty_refusals=2)
    examiner = await started(settings)
    offender, office = "192.0.2.66", "192.0.2.10"
    try:
        for _ in range(2):
            with pytest.raises(DocumentRefused) as caught:
                await examiner.examine(BOMB, offender)
            assert caught.value.reply.reply is replies.DOC_LIMITS
        (first,) = examiner.pids
        with stopped(first):
            held = asyncio.ensure_future(examiner.examine(fax_mail(), office))
            await until(examiner, lambda: examiner.busy == [first])
            slowed = asyncio.ensure_future(examiner.examine(fax_mail(), offender))
            await until(examiner, lambda: examiner.waiting == 1)
            assert examiner.pids == [first]  # the offender's mail does not start a worker
            extraction, _ = await asyncio.wait_for(examiner.examine(fax_mail(), office), TIMEOUT)
            assert extraction.pages == 1  # a second worker started for the office's mail: served first
            done, _ = await asyncio.wait({slowed}, timeout=TIMEOUT)  # then the offender's, on the freed worker
            assert done == {slowed}
        await asyncio.wait_for(held, TIMEOUT)
        # Another client's refusals never slow the office.
        assert not examiner._penalised(office) and examiner._penalised(offender)
    finally:
        await examiner.stop()


async def test_an_offender_is_forgiven_after_penalty_seconds() -> None:
    now = [1000.0]
    settings = DocumentSettings(processes=1, penalty_refusals=2, penalty_seconds=60)
    examiner = await started(settings, clock=lambda: now[0])
    try:
        for _ in range(2):
            with pytest.raises(DocumentRefused):
                await examiner.examine(BOMB, "192.0.2.66")
        assert examiner._penalised("192.0.2.66")
        now[0] += 61
        assert not examiner._penalised("192.0.2.66")
    finally:
        await examiner.stop()


async def test_a_worker_past_the_hard_stop_refuses_its_mail_naming_the_bound_and_is_replaced() -> None:
    # Frozen, the worker cannot even take its own SIGALRM: the daemon ends it a second after the hard stop.
    examiner = await started(DocumentSettings(processes=1, convert_timeout_seconds=0.05))
    try:
        (worker,) = examiner.pids
        with stopped(worker):
            began = time.monotonic()
            with pytest.raises(DocumentRefused) as caught:
                await examiner.examine(fax_mail(), "192.0.2.66")
            assert 3.0 <= time.monotonic() - began < 3.0 + TIMEOUT
        assert str(caught.value) == ("554 5.6.0 Message too complex to process: examining it took longer than "
                                     "0.05 s (documents.convert_timeout_seconds)")  # fmt: skip
        extraction, _ = await examiner.examine(fax_mail(), "192.0.2.10")
        assert extraction.pages == 1 and examiner.pids != [worker] and len(examiner.pids) == 1
    finally:
        await examiner.stop()


def test_the_pool_settings_are_validated() -> None:
    for table, key in (({"processes": 4, "processes_max": 2}, "documents.processes_max"),
                       ({"queue_seconds": 0}, "documents.queue_seconds"),
                       ({"penalty_refusals": -1}, "documents.penalty_refusals"),
                       ({"penalty_seconds": 0}, "documents.penalty_seconds")):  # fmt: skip
        with pytest.raises(SettingsError, match=key):
            from_mapping({"documents": table}, {})
    assert Examiner(DocumentSettings(processes=3)).processes_max == 6


async def test_smtp_answers_451_when_no_worker_is_free_in_time(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"documents": {"processes": 1, "processes_max": 1, "queue_seconds": 0.3}})
    examiner = h.server.handler.examiner
    (worker,) = examiner.pids
    with stopped(worker):
        held = asyncio.ensure_future(data_reply(h, fax_mail()))
        await until(examiner, lambda: examiner.busy == [worker])
        assert await data_reply(h, fax_mail()) == str(replies.EXAMINE_BUSY)
        assert str(replies.EXAMINE_BUSY) == "451 4.3.0 Busy examining other mail, please try again later"
    assert (await asyncio.wait_for(held, TIMEOUT)).startswith("250 2.0.0 OK: queued as ")
    assert len(await h.jobs()) == 1

"""Three ``fax-gateway serve`` processes on one PostgreSQL database and one S3 bucket, with real failures.

The kill test mails 500 faxes spread over the three while one of them, chosen at
random, is killed with SIGKILL every second or two and started again at once. A
mail whose connection broke before its ``250`` is sent again to another
instance with the same Message-ID, as an MTA with several MX records does. The
provider simulator calls its receipts back through a balancer to whichever
instance is up. In the end every fax went out once (twice only for a job left
ambiguous by a kill and resubmitted with the same reference), every receipt was
applied once and every sender got one receipt mail.

The fencing test pauses an instance with SIGSTOP while the provider holds its
submissions, long enough for another instance to take them over; once
continued, its late writes are refused.
"""

from __future__ import annotations

import asyncio
import random
import smtplib
import time
from collections import Counter, defaultdict
from email.utils import make_msgid

import pytest

from gateway.store import FINAL_STATES, Job, NoticeState, State, Store
from tests.support_cluster import mail_to, queued
from tests.support_fleet import Fleet, Member
from tests.support_proc import poll_until
from tests.support_smtp import fax_mail

MAILS = 500
KILLS = 20
SENDERS = 6
NAMES = ("gw-a", "gw-b", "gw-c")
# One number per mail: a receipt matched to an ambiguous job by its number and time finds that job alone.
NUMBERS = [f"01{40000000 + i:08d}" for i in range(MAILS)]
# Network faults an MTA meets when the instance it talks to dies: it tries the next MX.
BROKEN = (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError, TimeoutError, OSError)


def _send(port: int, sender: str, to: str, raw: bytes) -> tuple[int, str]:
    """One SMTP transaction (blocking); the DATA reply, or the first refusal. Raises on a broken connection."""
    try:
        return mail_to(port, to, sender=sender, raw=raw)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error.decode()


class Mailer:
    """Senders that each take the next mail and send it to an instance, the next instance on a broken connection."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.answered: dict[str, set[str]] = defaultdict(set)  # Message-ID -> job ids of its 250s
        self.resent: Counter[int] = Counter()  # mails sent again, by the code that made it (0: broken connection)
        self.pending = list(range(MAILS))

    async def run(self) -> None:
        await asyncio.gather(*(self._sender() for _ in range(SENDERS)))

    async def _sender(self) -> None:
        while self.pending:
            await self._mail(self.pending.pop(0))

    async def _mail(self, i: int) -> None:
        sender, to = f"sender{i % 7}@example.com", f"{NUMBERS[i]}@fax.local"
        message_id = make_msgid(f"m{i}", domain="example.com")
        raw = fax_mail(sender=sender, to=to, message_id=message_id)
        member = random.choice(self.members)
        for _ in range(30):
            try:
                reply = await asyncio.to_thread(_send, member.smtp_port, sender, to, raw)
            except BROKEN:
                reply = (0, "connection broken")
            if reply[0] == 250:
                self.answered[message_id].update(queued(reply))
                return
            assert reply[0] < 500, (message_id, reply)  # a 5xx is a refusal: no MTA sends that again
            self.resent[reply[0]] += 1
            member = random.choice([m for m in self.members if m is not member])
        raise AssertionError(f"{message_id}: no instance took it in 30 tries")


def _jobs(store: Store) -> list[Job]:
    return store.list_jobs(limit=-1)


@pytest.mark.timeout(400)
async def test_500_mails_over_three_instances_killed_20_times_each_fax_once_each_receipt_once(fleet: Fleet) -> None:
    started = time.monotonic()
    members = [fleet.add(name) for name in NAMES]
    await asyncio.gather(*(m.start() for m in members))
    mailer = Mailer(members)
    sending = asyncio.create_task(mailer.run())
    restarts: set[asyncio.Task[None]] = set()
    kills = 0
    while kills < KILLS or not sending.done():
        # The workload's cadence: a kill every second or two, of an instance that is up; one always stays up.
        await asyncio.wait({sending}, timeout=random.uniform(1.0, 2.0))
        up = [m for m in members if m.ready]
        while len(up) < 2:
            await asyncio.wait(restarts, return_when=asyncio.FIRST_COMPLETED)
            up = [m for m in members if m.ready]
        victim = random.choice(up)
        await victim.kill()
        kills += 1
        restart = asyncio.create_task(victim.start())  # at once, and waited ready
        restarts.add(restart)
        restart.add_done_callback(restarts.discard)
    await asyncio.gather(*restarts)
    await sending  # its failures, if any
    sent_at = time.monotonic()

    def all_final() -> bool:
        store = fleet.store()
        try:
            jobs = _jobs(store)
            return len(jobs) >= len(mailer.answered) and all(j.state in FINAL_STATES for j in jobs)
        finally:
            store.close()

    await poll_until(all_final, "every job final", 60.0, context=lambda: f"{fleet.logs()}\n{_open_jobs(fleet)}")

    def notices_done() -> bool:
        store = fleet.store()
        try:
            open_states = {NoticeState.NEW, NoticeState.PENDING}
            return not any(state in open_states for (_, state) in store.count_notices())
        finally:
            store.close()

    await poll_until(notices_done, "every notice sent", 60.0, context=fleet.logs)

    store = fleet.store()
    try:
        jobs = {j.id: j for j in _jobs(store)}
        timelines = {job_id: [str(r["kind"]) for r in store.timeline(job_id)] for job_id in jobs}
    finally:
        store.close()

    # Every 250 is a job; one job per Message-ID, the resends answered with the job already made.
    given = {job_id for ids in mailer.answered.values() for job_id in ids}
    assert len(mailer.answered) == MAILS
    assert given <= set(jobs), f"answered 250 but not in the store: {sorted(given - set(jobs))[:10]}"
    several = {mid: ids for mid, ids in mailer.answered.items() if len(ids) > 1}
    assert not several, f"one Message-ID, several jobs: {list(several.items())[:5]}"
    assert len(jobs) == len(mailer.answered), f"{len(jobs)} jobs for {len(mailer.answered)} Message-IDs"

    # Every job delivered; none sent twice unless it was ambiguous and resubmitted with the same reference.
    states = Counter(j.state for j in jobs.values())
    assert states == {State.DELIVERED: MAILS}, states
    requests = Counter(r.params["ref"] for r in fleet.sim.requests)
    assert set(requests) == set(jobs)
    twice = {job_id: n for job_id, n in requests.items() if n > 1}
    for job_id, n in twice.items():
        resubmitted = timelines[job_id].count("resubmitting")
        assert jobs[job_id].ambiguities > 0 and n <= 1 + resubmitted, (job_id, n, timelines[job_id])
    # Every receipt applied once; one receipt mail per fax, and no other mail.
    applied = {job_id: kinds.count("delivered") for job_id, kinds in timelines.items()}
    assert set(applied.values()) == {1}, {j: n for j, n in applied.items() if n != 1}
    mails: dict[str, list[str]] = defaultdict(list)  # job id -> Message-IDs of its receipt mails
    for got in fleet.sink.messages:
        assert got.message["X-Fax-Status"] == "delivered", got.message["X-Fax-Status"]
        mails[got.message["X-Fax-Job"]].append(got.message["Message-ID"])
    assert set(mails) == set(jobs)
    logs = "".join(m.log() for m in members)
    again = {job_id: ids for job_id, ids in mails.items() if len(ids) > 1}
    for job_id, ids in again.items():
        # The relay took it, and its notifier was killed before the store recorded it sent: the same mail
        # goes again (at least once, never lost). Recorded sent once, by the instance that sent it again.
        recorded = timelines[job_id].count("notice sent"), logs.count(f"job {job_id}: delivered notice to")
        assert len(set(ids)) == 1 and recorded == (1, 1), (job_id, ids, recorded, timelines[job_id])

    ambiguous = sum(1 for j in jobs.values() if j.ambiguities)
    print(f"\n{MAILS} mails (sent again: {dict(mailer.resent)}), {kills} kills, {ambiguous} ambiguous jobs,"
          f" {sum(n - 1 for n in twice.values())} duplicate submissions, {len(fleet.sink.messages)} receipt mails"
          f" ({len(fleet.sink.messages) - len(mails)} sent again after a kill between the relay's answer and its"
          " record);"
          f" sent in {sent_at - started:.0f} s, all final in {time.monotonic() - started:.0f} s")  # fmt: skip


def _of(fleet: Fleet, ids: list[str]) -> list[Job]:
    store = fleet.store()
    try:
        return [job for job_id in ids if (job := store.get_job(job_id)) is not None]
    finally:
        store.close()


def _open_jobs(fleet: Fleet) -> str:
    """The jobs not final yet, with their timelines and what the simulator saw of them (for a failure report)."""
    store = fleet.store()
    try:
        lines = [f"states: {store.count_by_state()}"]
        for job in _jobs(store):
            if job.state in FINAL_STATES:
                continue
            lines.append(f"job {job.id} {job.state} ref={job.provider_ref!r} number={job.number}")
            lines.extend(f"  {r['at']:.3f} {r['kind']}: {r['detail']}" for r in store.timeline(job.id))
            lines.extend(f"  receipt {r}" for r in store.receipts_of_job(job.id))
            lines.extend(f"  sim request {r.params.get('fax')} -> {r.answer}" for r in fleet.sim.requests
                         if r.params.get("ref") == job.id)  # fmt: skip
            refs = {r.answer.partition("-")[2] for r in fleet.sim.requests if r.params.get("ref") == job.id}
            lines.extend(f"  sim callback {c.params} -> {c.status}" for c in fleet.sim.callbacks
                         if c.params.get("ref_accuse") in refs)  # fmt: skip
        return "\n".join(lines)
    finally:
        store.close()


FENCED = 4
SLOW_ANSWER = 2.0  # the provider holds its answers: those to the paused instance come while it is stopped


async def test_an_instance_paused_past_its_lease_has_its_late_writes_refused(fleet: Fleet) -> None:
    members = [fleet.add(name) for name in NAMES[:2]]
    await asyncio.gather(*(m.start() for m in members))
    fleet.sim.set_fault(f"delay:{SLOW_ANSWER}")
    for i in range(FENCED):
        sender, to = "alice@example.com", f"{NUMBERS[i]}@fax.local"
        queued(await asyncio.to_thread(_send, members[i % 2].smtp_port, sender, to, fax_mail(sender=sender, to=to)))
    await fleet.sim.wait_requests(FENCED, timeout=30)  # all in flight, their answers held back

    def owners() -> dict[str, str]:
        store = fleet.store()
        try:
            return {j.id: j.lease_owner for j in _jobs(store)}
        finally:
            store.close()

    held = await asyncio.to_thread(owners)
    a = max(members, key=lambda m: list(held.values()).count(m.name))  # the one holding most of them
    a.pause()
    fleet.sim.set_fault(None)
    ids = [job_id for job_id, owner in held.items() if owner == a.name]
    assert ids and all(j.state == State.SUBMITTING for j in await asyncio.to_thread(lambda: _of(fleet, ids))), held

    def taken_over() -> bool:
        store = fleet.store()
        try:
            return all(store.count_events(job_id, "recovered") == 1 for job_id in ids)
        finally:
            store.close()

    await poll_until(taken_over, "the other instance taking the jobs over", 60.0, context=fleet.logs)
    a.resume()
    await poll_until(lambda: all(f"job {j}: lease lost: another instance took the job over" in a.log() for j in ids),
                     "the paused instance's late writes refused", 60.0, context=fleet.logs)  # fmt: skip
    ids = list(held)

    def settled() -> list[Job] | None:
        store = fleet.store()
        try:
            jobs = [store.get_job(job_id) for job_id in ids]
            sent = all(n["state"] == NoticeState.SENT for j in ids for n in store.notices_of_job(j)
                       if n["kind"] == "delivered")  # fmt: skip
            done = all(j is not None and j.state in FINAL_STATES for j in jobs)
            return [j for j in jobs if j is not None] if done and sent else None
        finally:
            store.close()

    jobs = await poll_until(settled, "the jobs delivered and their receipts sent", 60.0, context=fleet.logs)
    store = fleet.store()
    try:
        timelines = {job_id: [(str(r["kind"]), str(r["detail"])) for r in store.timeline(job_id)] for job_id in ids}
    finally:
        store.close()
    for job in jobs:
        kinds = [kind for kind, _ in timelines[job.id]]
        assert job.state == State.DELIVERED, (job.id, job.state, timelines[job.id])
        submissions = [r for r in fleet.sim.requests if r.params["ref"] == job.id]
        if held[job.id] != a.name:  # the other instance's own: sent once, delivered
            assert kinds.count("delivered") == 1 and len(submissions) == 1, timelines[job.id]
            continue
        # What the other instance wrote: taken over as ambiguous, then settled; nothing of the paused one's answer.
        taken = kinds.index("recovered")
        assert a.name in timelines[job.id][taken][1] and kinds[taken - 1] == "submitting", timelines[job.id]
        assert "submitted" not in kinds[taken:] or "resubmitting" in kinds[taken:], timelines[job.id]
        assert kinds.count("delivered") == 1, timelines[job.id]
        assert len(submissions) <= 1 + kinds.count("resubmitting"), (job.id, len(submissions), timelines[job.id])
    mails = Counter(m.message["X-Fax-Job"] for m in fleet.sink.messages)
    assert mails == dict.fromkeys(ids, 1), mails
    assert "Traceback" not in a.log(), a.log()[-4000:]

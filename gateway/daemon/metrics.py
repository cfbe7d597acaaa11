"""Metrics: what an operator graphs and alerts on, in Prometheus format.

One :class:`Metrics` per :class:`~gateway.app.Gateway`, each with its own
``CollectorRegistry`` (never the process-global one: tests run several
gateways in one process). ``/metrics`` (gateway/daemon/health.py) renders it.

Two sources. What the store records is read from it at scrape time
(:func:`snapshot`, on the store thread): messages accepted, jobs by state,
receipts by code, notifications by kind and state, and the latencies of jobs
submitted or finished since the last scrape (end of DATA to submission, to
the final receipt). These are right across restarts and include what the CLI
did; with the PostgreSQL store they are the whole cluster's, the same on every
instance (their help says so; the latencies too: each instance observes every
job). What the store does not keep is counted as it happens, per instance:
SMTP refusals by reply (:meth:`Metrics.smtp_reply`), provider answers by code and storage
results (:class:`MeteredProvider`, :class:`MeteredStorage`, which wrap the
worker's clients), unknown receipts by what became of them; the last provider
and storage results, and the recent 4xx replies that were the gateway's own
fault (:meth:`Metrics.recent_own_refusals`), also feed /healthz, and the
provider's last ten answers the web console's front page.
"""

from __future__ import annotations

import collections
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.outcomes import Accepted, Ambiguous, DeliveryOutcome, Hold, PermanentFailure, Retry, Submission
from gateway.replies import Answer
from gateway.store import State, Store, kind_family

if TYPE_CHECKING:
    from gateway.delivery.storage import Storage
    from gateway.delivery.worker import Provider

CONTENT_TYPE = CONTENT_TYPE_LATEST
# What each family's help says of where it comes from: the store (in a cluster, shared: sum one instance,
# not all) or this process (in a cluster, sum every instance).
SHARED = " (from the store: with the PostgreSQL store, the whole cluster's, the same on every instance)"
OWN = " (this instance only)"
# Seconds: from a fraction of a second (submission) to a day (a receipt after busy retries).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


# 4xx replies that are the gateway's own fault, not the client's (RFC 3463 X.3.X: the mail system itself;
# no free connection slot; TLS offered but broken). What a client sent never puts a reply here.
OWN_FAULT_REPLIES = frozenset({"ERROR", "LOW_SPACE", "SHUTTING_DOWN", "TOO_MANY_CONNECTIONS", "TLS_UNAVAILABLE"})
# Replies that mean a mail was taken (the other side of the rate).
_TAKEN_REPLIES = frozenset({"QUEUED", "RECEIPT_ACCEPTED"})
# /healthz looks at the replies of this last stretch of time (and at most this many of them).
RECENT_SECONDS = 300.0
_RECENT_MAX = 1000


def own_fault(answer: Answer) -> bool:
    """Whether ``answer`` is a transient refusal the gateway caused (not the client)."""
    return 400 <= answer.code < 500 and (answer.reply.name in OWN_FAULT_REPLIES or answer.reply.enhanced[:4] == "4.3.")


@dataclass(frozen=True)
class RecentReplies:
    """Mails taken and the gateway's own 4xx refusals over the last ``seconds``."""

    own_refusals: int
    taken: int
    seconds: float

    @property
    def rate(self) -> float:
        """The share of the gateway's own refusals among both (0 when there were none)."""
        total = self.own_refusals + self.taken
        return self.own_refusals / total if total else 0.0


@dataclass(frozen=True)
class Result:
    """The last outcome of a dependency call, for /healthz."""

    ok: bool
    detail: str
    at: float


@dataclass
class Snapshot:
    """What the store says, read in one go on the store thread."""

    accepted: int = 0
    jobs: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)
    submit_latencies: list[float] = field(default_factory=list)
    receipt_latencies: list[float] = field(default_factory=list)
    submitted_mark: float = 0.0
    final_mark: float = 0.0


def _latencies(times: list[tuple[float, float]], mark: float) -> tuple[list[float], float]:
    """Seconds from receipt of the mail to each (event, received) pair past ``mark``; and the new mark."""
    return [max(0.0, at - received) for at, received in times], max([mark, *(at for at, _ in times)])


def snapshot(store: Store, submitted_mark: float, final_mark: float) -> Snapshot:
    """Counts, and the latencies of jobs submitted / finished by a receipt after the marks."""
    snap = Snapshot(submitted_mark=submitted_mark, final_mark=final_mark)
    snap.accepted = store.count_messages()
    snap.jobs = store.count_by_state()
    snap.receipts = store.count_receipts_by_code()
    for (kind, state), n in store.count_notices().items():
        key = (kind_family(kind), state)
        snap.notifications[key] = snap.notifications.get(key, 0) + n
    snap.submit_latencies, snap.submitted_mark = _latencies(store.submitted_after(submitted_mark), submitted_mark)
    snap.receipt_latencies, snap.final_mark = _latencies(store.settled_by_receipt_after(final_mark), final_mark)
    return snap


class Metrics:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.smtp_refusals = Counter(
            "faxgw_smtp_refusals", "SMTP replies that refused something, by reply name" + OWN, ["reason"], registry=r
        )
        self.provider_answers = Counter(
            "faxgw_provider_answers",
            "Provider answers to submissions, by what they mean (accepted, failed, held, retry, ambiguous) and cause "
            "(the provider's code, an HTTP status, or a transport fault)" + OWN,
            ["answer", "cause"], registry=r,
        )  # fmt: skip
        self.uploads = Counter(
            "faxgw_uploads", "Document uploads to storage by the worker, by result" + OWN, ["result"], registry=r
        )
        self.submit_latency = Histogram(
            "faxgw_submit_latency_seconds", "From the end of DATA to the provider's acceptance" + SHARED,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.receipt_latency = Histogram(
            "faxgw_receipt_latency_seconds", "From the end of DATA to the final receipt" + SHARED,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._snap = Snapshot(submitted_mark=clock(), final_mark=clock())
        r.register(_StoreCollector(self))
        self.unknown_receipts = Counter(
            "faxgw_unknown_receipts",
            "Receipts for a reference no job has: kept (early), ignored, or refused (limit)" + OWN,
            ["outcome"], registry=r,
        )  # fmt: skip
        self.last_provider: Result | None = None
        self.last_storage: Result | None = None
        # (time, own fault): the gateway's own 4xx refusals (True) and mails taken (False), newest last.
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=_RECENT_MAX)
        # The provider's last answers, newest last (the console's front page).
        self.provider_history: deque[tuple[str, Result]] = deque(maxlen=10)

    # -- counted as it happens --------------------------------------------------

    def smtp_reply(self, answer: Answer) -> None:
        """Every SMTP reply sent; refusals (4xx, 5xx) are counted by their name in the reply table."""
        if answer.refused:
            self.smtp_refusals.labels(reason=answer.reply.name).inc()
        if own_fault(answer):
            self._recent.append((self.clock(), True))
        elif answer.reply.name in _TAKEN_REPLIES:
            self._recent.append((self.clock(), False))

    def recent_own_refusals(self, seconds: float = RECENT_SECONDS) -> RecentReplies:
        """The gateway's own 4xx refusals and the mails taken over the last ``seconds`` (for /healthz)."""
        since = self.clock() - seconds
        recent = [own for at, own in self._recent if at >= since]
        own = sum(recent)
        return RecentReplies(own_refusals=own, taken=len(recent) - own, seconds=seconds)

    def unknown_receipt(self, outcome: str) -> None:
        """A receipt for a reference no job has: ``kept`` (early), ``ignored`` or ``refused`` (over a limit)."""
        self.unknown_receipts.labels(outcome=outcome).inc()

    def provider_answer(self, answer: str, cause: str, *, ok: bool, detail: str) -> None:
        self.provider_answers.labels(answer=answer, cause=cause).inc()
        self.last_provider = Result(ok, detail, self.clock())
        self.provider_history.append((cause, self.last_provider))

    def provider_answers_seen(self) -> list[dict[str, object]]:
        """The provider's last answers, newest first: code (or the cause of an unusable answer), ok, detail, at."""
        return [{"code": c, "ok": r.ok, "detail": r.detail, "at": r.at} for c, r in reversed(self.provider_history)]

    def storage_result(self, *, ok: bool, detail: str) -> None:
        self.uploads.labels(result="ok" if ok else "error").inc()
        self.last_storage = Result(ok, detail, self.clock())

    # -- read from the store at scrape time -------------------------------------

    def marks(self) -> tuple[float, float]:
        return self._snap.submitted_mark, self._snap.final_mark

    def update(self, snap: Snapshot) -> None:
        for value in snap.submit_latencies:
            self.submit_latency.observe(value)
        for value in snap.receipt_latencies:
            self.receipt_latency.observe(value)
        self._snap = snap

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector:
    """Families whose values are the store's own counts (from the latest snapshot)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics._snap
        accepted = CounterMetricFamily("faxgw_messages_accepted", "Messages answered 250 and spooled" + SHARED)
        accepted.add_metric([], snap.accepted)
        yield accepted
        jobs = GaugeMetricFamily("faxgw_jobs", "Jobs in the store, by state" + SHARED, labels=["state"])
        for state in State:
            jobs.add_metric([str(state)], snap.jobs.get(str(state), 0))
        yield jobs
        receipts = CounterMetricFamily("faxgw_receipts", "Receipts (AR) stored, by provider code" + SHARED,
                                       labels=["code"])  # fmt: skip
        for code, n in sorted(snap.receipts.items()):
            receipts.add_metric([code], n)
        yield receipts
        notices = GaugeMetricFamily(
            "faxgw_notifications", "Notifications in the store, by kind and state" + SHARED, labels=["kind", "state"]
        )
        for (kind, notice_state), n in sorted(snap.notifications.items()):
            notices.add_metric([kind, notice_state], n)
        yield notices


# What an outcome means, as the ``answer`` label of faxgw_provider_answers_total.
_ANSWERS: tuple[tuple[type[DeliveryOutcome], str], ...] = (
    (PermanentFailure, "failed"), (Hold, "held"), (Retry, "retry"), (Ambiguous, "ambiguous"),
)


class MeteredProvider:
    """The worker's provider client, counting each answer by code."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def submit(self, submission: Submission) -> Accepted:
        try:
            accepted = await self.inner.submit(submission)
        except DeliveryOutcome as exc:
            answer = next((words for kind, words in _ANSWERS if isinstance(exc, kind)), "ambiguous")
            # A refused document or number is the sender's matter; anything else is the gateway's.
            self.metrics.provider_answer(answer, exc.code or "unknown", ok=isinstance(exc, PermanentFailure),
                                         detail=exc.reason)  # fmt: skip
            raise
        self.metrics.provider_answer("accepted", accepted.code, ok=True, detail=f"accepted (code {accepted.code})")
        return accepted


class MeteredStorage:
    """The worker's storage backend, recording each upload's result."""

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def new_key(self) -> str:
        return self.inner.new_key()

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            await self.inner.put(key, data, content_type)
        except Exception as exc:
            self.metrics.storage_result(ok=False, detail=getattr(exc, "reason", None) or "the storage failed")
            raise
        self.metrics.storage_result(ok=True, detail=f"stored {len(data)} bytes")

    async def url(self, key: str) -> str:
        return await self.inner.url(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def check(self) -> str:
        return await self.inner.check()

"""Examination of a message's documents, away from the daemon's event loop and GIL.

In: the raw bytes of a message and the client's address. Out: its
:class:`~gateway.documents.outcomes.Extraction` and :class:`Headers`, or
:class:`~gateway.documents.outcomes.DocumentRefused` (the reply that tells the
sender what to change), or :class:`Busy` (no worker, or no LibreOffice
conversion slot, free within ``documents.queue_seconds``: intake's 451, the client retries). Any other
exception is our fault: SMTP intake answers 451 4.3.0 and the client retries.

Where the work runs (``documents.processes``):

- 0: in a thread of the daemon, as ``fax-gateway send`` always does. The MIME
  parse, libmagic and pikepdf then share the daemon's GIL with the SMTP sessions.
- N > 0: in worker processes forked by a forkserver (never a plain fork of the
  threaded daemon), each examining one message at a time. The forkserver loads
  nothing of the gateway; each worker loads the document checks once forked,
  before it answers (a few tenths of a second), so their pages are resident in
  the workers only (the daemon itself never imports the checks: what it sends
  and gets back is defined in :mod:`gateway.documents.outcomes`). ``start()`` returns once N
  are up; under load the pool grows to ``documents.processes_max`` (a worker
  above N ends once no message waits for it); a message waits for a worker
  at most ``documents.queue_seconds``. ``stop()`` lets in-flight examinations
  finish (bounded), then ends the workers.

Senders whose mails keep hitting the bounds are slowed before anyone else: a
client address with ``documents.penalty_refusals`` over-bound refusals in
``documents.penalty_seconds`` waits behind every other message, and never
makes the pool grow past N (its mails still get their answer, or a 451 once
they have waited ``queue_seconds``: a shared relay is slowed, not shut out).

Time: an examination (fitting included) gives up between pages once it has run
``documents.convert_timeout_seconds`` (a refusal naming the bound). As a hard
stop, a worker still busy past :func:`hard_stop_seconds` of that is killed by
the kernel (SIGALRM, whose default action ends the process; it needs no Python
code to run, so a C library stuck holding the GIL is stopped too); the daemon
kills it a second later if it is still there. Its message is refused naming
the bound (554 5.6.0). Memory: each worker runs under ``RLIMIT_AS``
(``documents.worker_memory_bytes``).

A worker that dies otherwise (a C library crashing on a hostile file, the OOM
killer) costs the message it held ``BrokenProcessPool`` (intake's 451: the
client retries); the other workers go on, and a new one starts when needed.
Workers ignore SIGINT and SIGTERM (a terminal's Ctrl-C or systemd reach the
whole process group; the daemon alone decides when they end) and end by
themselves if the daemon dies.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gateway import replies
from gateway.documents.headers import Headers, read_headers
from gateway.documents.outcomes import Busy as Busy  # re-exported: intake catches it from here
from gateway.documents.outcomes import DocumentRefused, Envelope, Extraction
from gateway.settings import DocumentSettings

log = logging.getLogger("gateway.smtp")

# How long stop() waits for examinations still running before it ends their workers.
STOP_GRACE_SECONDS = 10.0
# Client addresses remembered for their over-bound refusals (the oldest forgotten first).
MAX_OFFENDERS = 10_000


def examine(raw: bytes, settings: DocumentSettings, envelope: Envelope | None = None) -> tuple[Extraction, Headers]:
    """Blocking: the whole examination of one message (in a thread or a worker process)."""
    from gateway.documents import policy  # local: the checks load in the workers only

    return policy.extract(raw, settings, envelope), read_headers(raw)


def hard_stop_seconds(settings: DocumentSettings) -> float:
    """When a worker still examining one message is killed: a little past the soft bound."""
    return settings.convert_timeout_seconds * 1.1 + 2.0


class ExaminationError(Exception):
    """An unexpected error in a worker process; the message holds the worker's traceback."""


def examine_in_worker(
    raw: bytes, settings: DocumentSettings, envelope: Envelope | None = None
) -> tuple[Extraction, Headers]:
    """:func:`examine`, run in a worker process: what it raises must unpickle in the daemon.

    The pool breaks (failing every message in it) when an exception from a
    worker cannot be rebuilt, as with a library's exception class whose
    constructor takes other arguments: anything but a refusal comes back as
    :class:`ExaminationError` carrying the original traceback as text.
    """
    if _in_worker:
        signal.setitimer(signal.ITIMER_REAL, hard_stop_seconds(settings))
    try:
        return examine(raw, settings, envelope)
    except (DocumentRefused, Busy):
        raise
    except MemoryError:
        if not (_in_worker and settings.worker_memory_bytes):
            raise ExaminationError(traceback.format_exc().rstrip()) from None
        reason = f"examining it needs more memory than documents.worker_memory_bytes ({settings.worker_memory_bytes})"
        raise DocumentRefused(replies.DOC_LIMITS.format(reason=reason), "limits") from None
    except Exception as exc:
        raise ExaminationError(traceback.format_exc().rstrip()) from exc
    finally:
        if _in_worker:
            signal.setitimer(signal.ITIMER_REAL, 0)


# Whether this process is an examination worker (the hard stop is armed only there).
_in_worker = False


def _worker_started() -> None:
    global _in_worker
    _in_worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the hard stop: the kernel ends the process
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A worker waits for work on a queue it also holds the writing end of:
        # without this it would outlive a daemon killed with SIGKILL.
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="parent-watch", daemon=True).start()


def _worker_init(memory_bytes: int) -> None:
    """A worker process's start: :func:`_worker_started`, then its address space capped (RLIMIT_AS)."""
    _worker_started()
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


class _Overdue(Exception):
    """The worker did not answer by the hard stop."""


def _serve(conn: multiprocessing.connection.Connection, memory_bytes: int) -> None:
    """A worker process: examine one message at a time, sent over ``conn``, until it gets None."""
    _worker_init(memory_bytes)
    from gateway.documents import policy  # noqa: F401  # loaded before the worker says it is ready

    conn.send(os.getpid())
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        raw, settings, envelope = job
        try:
            conn.send(("ok", examine_in_worker(raw, settings, envelope)))
        except DocumentRefused as exc:
            conn.send(("refused", exc))
        except Busy as exc:
            conn.send(("busy", str(exc)))
        except ExaminationError as exc:
            conn.send(("error", str(exc)))


class _Worker:
    """One worker process and the daemon's end of its pipe (used from one thread at a time)."""

    def __init__(
        self, process: multiprocessing.process.BaseProcess, conn: multiprocessing.connection.Connection
    ) -> None:
        self.process, self.conn = process, conn
        self.overdue = False  # no answer by the hard stop: the daemon killed it

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def call(
        self, raw: bytes, settings: DocumentSettings, limit: float, envelope: Envelope | None = None
    ) -> tuple[str, Any]:
        """Blocking: send a message, wait for the answer at most ``limit`` seconds."""
        self.conn.send((raw, settings, envelope))
        if not self.conn.poll(limit):
            self.overdue = True
            raise _Overdue
        answer: tuple[str, Any] = self.conn.recv()
        return answer

    def end(self, timeout: float) -> bool:
        """Blocking: ask the worker to end and wait for it; True if it did within ``timeout``."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        return self.process.exitcode is not None

    def kill(self) -> None:
        """Blocking: end the worker now, and reap it."""
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


class Examiner:
    """Runs :func:`examine` in a thread (``processes = 0``) or in worker processes (see the module docstring)."""

    def __init__(
        self,
        settings: DocumentSettings,
        *,
        processes: int | None = None,
        stop_grace: float = STOP_GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.processes = settings.processes if processes is None else processes
        self.processes_max = max(self.processes, settings.processes_max or 2 * self.processes)
        self.stop_grace = stop_grace
        self.clock = clock
        self._running = False
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting = 0
        # Messages waiting for a worker: (penalised, arrival, future the worker is handed through).
        self._waiting: list[tuple[bool, int, asyncio.Future[_Worker]]] = []
        self._arrivals = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        # Set whenever a worker is taken or freed, or a message starts waiting (stop() and tests wait on it).
        self.changed = asyncio.Event()
        # Client address -> when its recent over-bound refusals were (the oldest first).
        self._offences: dict[str, collections.deque[float]] = {}
        self._threads: ThreadPoolExecutor | None = None

    @property
    def waiting(self) -> int:
        """Messages waiting for a worker."""
        return sum(1 for _, _, future in self._waiting if not future.done())

    @property
    def busy(self) -> list[int]:
        """The workers examining a message."""
        return sorted(w.pid for w in self._busy)

    @property
    def pids(self) -> list[int]:
        """The worker processes now running (idle or busy)."""
        return sorted(w.pid for w in [*self._idle, *self._busy])

    async def start(self) -> None:
        """Start the workers (none with ``processes = 0``); returns once each has answered."""
        if self.processes == 0 or self._running:
            return
        # Threads that wait on the workers' pipes, one per worker at most (never the loop's own executor).
        self._threads = ThreadPoolExecutor(self.processes_max + 2, thread_name_prefix="examiner")
        loop = asyncio.get_running_loop()
        started = await asyncio.gather(*(loop.run_in_executor(self._threads, self._new_worker)
                                         for _ in range(self.processes)), return_exceptions=True)  # fmt: skip
        workers = [w for w in started if isinstance(w, _Worker)]
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            await asyncio.gather(*(asyncio.to_thread(w.kill) for w in workers))
            self._threads.shutdown(wait=False)
            raise failed[0]
        self._idle.extend(workers)
        self._running = True
        log.info("document examination: %d worker process(es) started (pid %s), up to %d under load",
                 len(workers), " ".join(str(p) for p in self.pids), self.processes_max)  # fmt: skip

    async def examine(
        self, raw: bytes, client: str = "", envelope: Envelope | None = None
    ) -> tuple[Extraction, Headers]:
        """The extraction and headers of ``raw``; DocumentRefused, Busy, BrokenProcessPool or another error."""
        if self.processes == 0:
            return await asyncio.to_thread(examine, raw, self.settings, envelope)
        if not self._running:
            raise RuntimeError("document examination is not running (stopped, or never started)")
        worker = await self._acquire(client)
        try:
            status, value = await asyncio.get_running_loop().run_in_executor(
                self._threads, worker.call, raw, self.settings, hard_stop_seconds(self.settings) + 1.0, envelope)
        except (_Overdue, EOFError, OSError):
            self._busy.discard(worker)
            await self._lost(worker, client)
            raise  # pragma: no cover - _lost always raises
        except BaseException:  # cancelled: the worker may be mid-message, so it is not reused
            self._busy.discard(worker)
            self._spawn_task(asyncio.to_thread(worker.kill))
            raise
        self._busy.discard(worker)
        self._release(worker)
        if status == "refused":
            if value.reason == "limits":
                self._offence(client)
            raise value
        if status == "error":
            raise ExaminationError(value)
        if status == "busy":  # no LibreOffice conversion slot free in time
            raise Busy(value)
        result: tuple[Extraction, Headers] = value
        return result

    # -- the pool ---------------------------------------------------------

    def _new_worker(self) -> _Worker:
        """Blocking: fork a worker from the forkserver and wait for it to answer."""
        context = multiprocessing.get_context("forkserver")
        # The forkserver loads nothing of the gateway: each worker loads the checks itself once
        # forked, before it answers (loaded in the forkserver too, their pages would be counted in both).
        context.set_forkserver_preload([])
        mine, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, self.settings.worker_memory_bytes), daemon=True)
        process.start()
        theirs.close()
        worker = _Worker(process, mine)
        if not mine.poll(60.0):
            worker.kill()
            raise RuntimeError("a document worker did not start within 60 s")
        mine.recv()
        return worker

    async def _acquire(self, client: str) -> _Worker:
        penalised = self._penalised(client)
        if self._idle and not self._waiting and not penalised:
            worker = self._idle.pop()
            self._busy.add(worker)
            self.changed.set()
            return worker
        future: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        entry = (penalised, next(self._arrivals), future)
        heapq.heappush(self._waiting, entry)
        self._dispatch()
        self.changed.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.settings.queue_seconds)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()
            future.cancel()
            log.warning("document examination: no worker free within documents.queue_seconds (%g s)%s: 451",
                        self.settings.queue_seconds, " (a client slowed for over-bound mails)" if penalised else "")
            raise Busy(f"no document worker free within {self.settings.queue_seconds:g} s") from None

    def _dispatch(self) -> None:
        """Hand idle workers to the first waiting messages; start workers for the others, up to the caps."""
        while self._waiting and self._waiting[0][2].done():
            heapq.heappop(self._waiting)
        while self._waiting and self._idle:
            _, _, future = heapq.heappop(self._waiting)
            if future.done():
                continue
            worker = self._idle.pop()
            self._busy.add(worker)
            future.set_result(worker)
        live = sorted(e for e in self._waiting if not e[2].done())
        for penalised, _, _ in live[self._starting :]:
            cap = self.processes if penalised else self.processes_max
            if len(self._idle) + len(self._busy) + self._starting >= cap or not self._running:
                break
            self._starting += 1
            task = asyncio.ensure_future(self._grow())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _grow(self) -> None:
        try:
            assert self._threads is not None
            worker = await asyncio.get_running_loop().run_in_executor(self._threads, self._new_worker)
        except Exception:
            log.exception("document examination: a new worker process could not be started")
            return
        finally:
            self._starting -= 1
        log.info("document examination: worker %d started for the messages waiting", worker.pid)
        if not self._running:
            await asyncio.to_thread(worker.kill)
            return
        self._release(worker)

    def _release(self, worker: _Worker) -> None:
        """A worker is free: to the first waiting message, else idle (or ended, above ``processes``)."""
        self._idle.append(worker)
        self._dispatch()
        if worker in self._idle and len(self._idle) + len(self._busy) > self.processes:
            self._idle.remove(worker)  # grown for a burst that is over
            self._spawn_task(asyncio.to_thread(worker.end, 5.0))
        self.changed.set()

    def _spawn_task(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            await work

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lost(self, worker: _Worker, client: str) -> None:
        """The worker died or passed the hard stop: end it; the message is refused (a bound) or gets 451."""
        await asyncio.to_thread(worker.kill)
        self._dispatch()  # the waiting messages may need a new worker
        if worker.process.exitcode == -signal.SIGALRM or worker.overdue:
            self._offence(client)
            log.warning("document examination: worker %d was still busy %.0f s after it started examining a "
                        "message (documents.convert_timeout_seconds = %g) and was stopped", worker.pid,
                        hard_stop_seconds(self.settings), self.settings.convert_timeout_seconds)  # fmt: skip
            reason = (f"examining it took longer than {self.settings.convert_timeout_seconds:g} s "
                      "(documents.convert_timeout_seconds)")  # fmt: skip
            raise DocumentRefused(replies.DOC_LIMITS.format(reason=reason), "limits") from None
        log.warning("document examination: worker %d died (exit code %s); the message it held gets 451",
                    worker.pid, worker.process.exitcode)  # fmt: skip
        raise BrokenProcessPool(f"document worker {worker.pid} died") from None

    # -- slowing a sender whose mails keep hitting the bounds -----------------

    def _offence(self, client: str) -> None:
        if not client or not self.settings.penalty_refusals:
            return
        times = self._offences.pop(client, None) or collections.deque(maxlen=self.settings.penalty_refusals)
        times.append(self.clock())
        self._offences[client] = times  # the most recent offender last
        while len(self._offences) > MAX_OFFENDERS:
            del self._offences[next(iter(self._offences))]
        if self._penalised(client):
            log.warning("document examination: %s had %d over-bound refusals in %g s: its mails wait behind others",
                        client, len(times), self.settings.penalty_seconds)  # fmt: skip

    def _penalised(self, client: str) -> bool:
        times = self._offences.get(client)
        if not times or len(times) < self.settings.penalty_refusals:
            return False
        if self.clock() - times[0] > self.settings.penalty_seconds:
            return False
        return True

    async def stop(self) -> None:
        """Let examinations in flight finish (``stop_grace`` at most), then end the workers. Idempotent."""
        if not self._running:
            return
        self._running = False
        for _, _, future in self._waiting:
            if not future.done():
                future.set_exception(RuntimeError("document examination stopped"))
        self._waiting.clear()
        deadline = time.monotonic() + self.stop_grace
        while self._busy and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        left = max(0.0, deadline - time.monotonic())
        ended = await asyncio.gather(*(asyncio.to_thread(w.end, left) for w in workers))
        if not all(ended) or self._busy:
            log.warning("document examination: still busy %.0f s after stop; ending its workers", self.stop_grace)
        await asyncio.gather(*(asyncio.to_thread(w.kill) for w in workers))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._threads is not None:
            self._threads.shutdown(wait=False)
        log.info("document examination stopped")

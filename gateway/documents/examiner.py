"""Examination of a message's documents, away from the daemon's event loop and GIL.

In: the raw bytes of a message. Out: its :class:`~gateway.documents.policy.Extraction`
and :class:`Headers`, or :class:`~gateway.documents.policy.DocumentRefused` (the
reply that tells the sender what to change). Any other exception is our fault:
SMTP intake answers 451 4.3.0 and the client retries.

Where the work runs (``documents.processes``):

- 0: in a thread of the daemon, as ``fax-gateway send`` always does. The MIME
  parse, libmagic and pikepdf then share the daemon's GIL with the SMTP sessions.
- N > 0: in a pool of N worker processes forked by a forkserver (never a plain
  fork of the threaded daemon) that has this module and the document checks
  already imported. ``start()`` returns once every worker is up; ``stop()``
  lets in-flight examinations finish (bounded), then ends the workers.

Time: an examination (fitting included) gives up between pages once it has run
``documents.convert_timeout_seconds`` (a refusal naming the bound). As a hard
stop, a worker still busy past :func:`hard_stop_seconds` of that is killed by
the kernel (SIGALRM, whose default action ends the process; it needs no Python
code to run, so a C library stuck holding the GIL is stopped too).

A worker that dies (a C library crashing on a hostile file, the OOM killer, the hard stop)
breaks its pool: every message in that pool then gets ``BrokenProcessPool``
(intake's 451: the client retries) and the next message gets a new pool.
Workers ignore SIGINT and SIGTERM (a terminal's Ctrl-C or systemd reach the
whole process group; the daemon alone decides when they end) and end by
themselves if the daemon dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from gateway import replies
from gateway.documents import policy
from gateway.documents.headers import Headers, read_headers
from gateway.documents.policy import DocumentRefused, Extraction
from gateway.settings import DocumentSettings

log = logging.getLogger("gateway.smtp")

# How long stop() waits for examinations still running before it ends their workers.
STOP_GRACE_SECONDS = 10.0


def examine(raw: bytes, settings: DocumentSettings) -> tuple[Extraction, Headers]:
    """Blocking: the whole examination of one message (in a thread or a worker process)."""
    return policy.extract(raw, settings), read_headers(raw)


def hard_stop_seconds(settings: DocumentSettings) -> float:
    """When a worker still examining one message is killed: a little past the soft bound."""
    return settings.convert_timeout_seconds * 1.1 + 2.0


class ExaminationError(Exception):
    """An unexpected error in a worker process; the message holds the worker's traceback."""


def examine_in_worker(raw: bytes, settings: DocumentSettings) -> tuple[Extraction, Headers]:
    """:func:`examine`, run in a worker process: what it raises must unpickle in the daemon.

    The pool breaks (failing every message in it) when an exception from a
    worker cannot be rebuilt, as with a library's exception class whose
    constructor takes other arguments: anything but a refusal comes back as
    :class:`ExaminationError` carrying the original traceback as text.
    """
    if _in_worker:
        signal.setitimer(signal.ITIMER_REAL, hard_stop_seconds(settings))
    try:
        return examine(raw, settings)
    except DocumentRefused:
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


def _ready() -> int:
    return os.getpid()


class Examiner:
    """Runs :func:`examine` in a thread (``processes = 0``) or in a pool of worker processes."""

    def __init__(
        self, settings: DocumentSettings, *, processes: int | None = None, stop_grace: float = STOP_GRACE_SECONDS
    ) -> None:
        self.settings = settings
        self.processes = settings.processes if processes is None else processes
        self.stop_grace = stop_grace
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the workers (none with ``processes = 0``); returns once each has answered."""
        if self.processes == 0 or self._pool is not None:
            return
        pool = self._new_pool()
        try:
            # Submitted together, each call finds no idle worker and starts one.
            loop = asyncio.get_running_loop()
            pids = await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.processes)))
        except BaseException:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
            raise
        self._pool = pool
        log.info("document examination: %d worker process(es) started (pid %s)", len(set(pids)),
                 " ".join(str(p) for p in sorted(set(pids))))  # fmt: skip

    async def examine(self, raw: bytes) -> tuple[Extraction, Headers]:
        """The extraction and headers of ``raw``; DocumentRefused, BrokenProcessPool or another error."""
        if self.processes == 0:
            return await asyncio.to_thread(examine, raw, self.settings)
        pool = self._pool
        if pool is None:
            raise RuntimeError("document examination is not running (stopped, or never started)")
        workers = list((pool._processes or {}).values())
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, examine_in_worker, raw, self.settings)
        except BrokenProcessPool:
            if any(p.exitcode == -signal.SIGALRM for p in workers):
                log.warning("document examination: a worker was still busy %.0f s after it started examining a "
                            "message (documents.convert_timeout_seconds = %g) and was stopped",
                            hard_stop_seconds(self.settings), self.settings.convert_timeout_seconds)  # fmt: skip
            await self._replace(pool)
            raise

    async def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is not broken:  # replaced already (several messages were in it), or stopped
            return
        self._pool = self._new_pool()  # its workers start with the next message
        log.warning("document examination: a worker process died; the messages it held get 451; new workers")
        await asyncio.to_thread(broken.shutdown, wait=True, cancel_futures=True)

    async def stop(self) -> None:
        """Let examinations in flight finish (``stop_grace`` at most), then end the workers. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Every worker exists by now: they start in submit(), and nothing is submitted any more.
        workers = list((pool._processes or {}).values())
        shutdown = asyncio.ensure_future(asyncio.to_thread(pool.shutdown, wait=True))
        done, _ = await asyncio.wait({shutdown}, timeout=self.stop_grace)
        if not done:
            log.warning("document examination: still busy %.0f s after stop; ending its workers", self.stop_grace)
            for process in workers:
                process.kill()
            await shutdown
        log.info("document examination stopped")

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        # Imported once in the forkserver: each worker forked from it starts with the checks loaded.
        context.set_forkserver_preload([__name__])
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=context, initializer=_worker_init,
                                   initargs=(self.settings.worker_memory_bytes,))  # fmt: skip

"""Plumbing for the scenarios: child processes, free ports, smtp-source, statistics.

Every wait is bounded; every child is stopped (SIGTERM, then SIGKILL) by the
scenario that started it, also when the scenario fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from postfix_ref import SMTP_SOURCE

HERE = Path(__file__).resolve().parent
PROCS = HERE / "procs.py"


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (the gateway's document workers, forked by its forkserver)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


def peak_rss_kb(pid: int) -> int:
    """Peak RSS (VmHWM) of the process plus each live descendant's: an upper bound for the whole tree."""
    total = 0
    for p in process_tree(pid):
        try:
            total += _peak_rss_kb(p)
        except (OSError, BenchError):
            if p == pid:
                raise
    return total


def pss_kb(pid: int) -> int:
    """Proportional set size of the process and its live descendants, now: pages shared between
    them (the workers forked from the forkserver) counted once, split among the sharers."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue  # gone meanwhile
    return total


async def peak_pss_kb(pid: int, stop: asyncio.Event, every: float = 0.05) -> int:
    """The largest :func:`pss_kb` seen, sampled every ``every`` seconds until ``stop`` is set."""
    peak = 0
    while not stop.is_set():
        peak = max(peak, await asyncio.to_thread(pss_kb, pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return peak


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by the process (all its threads) and its live descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += _cpu_seconds(p)
        except OSError:
            if p == pid:
                raise
    return total


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the benchmark process dies, however it dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One ``procs.py`` role in its own process; its JSON events are collected as they come."""

    def __init__(self, role: str, arg: str, *, log: Path, env: dict[str, str] | None = None) -> None:
        self.role, self.arg, self.log_path = role, arg, log
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[float, str]] = []  # simulator: (arrival time, ref)
        self.ready: dict[str, Any] = {}
        self.done: dict[str, Any] = {}
        self._changed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(sig)

    async def start(self, timeout: float = 60.0) -> dict[str, Any]:
        with open(self.log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, str(PROCS), self.role, self.arg,
                stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=self.env,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        try:
            await self.wait_for(lambda: bool(self.ready) or self._proc_ended(), timeout)
        except TimeoutError:
            await self.stop()
            raise BenchError(f"{self.role} did not start within {timeout:g} s (see {self.log_path})") from None
        if not self.ready:
            await self.stop()
            raise BenchError(f"{self.role} exited at start-up (see {self.log_path})")
        return self.ready

    def _proc_ended(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "request":
                self.requests.append((event["t"], event["ref"]))
            else:
                self.events.append(event)
                if kind == "ready":
                    self.ready = event
                elif kind == "done":
                    self.done = event
            self._changed.set()
        self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.returncode is not None and self._proc_ended():
            return self.done
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
                if self._reader is not None:
                    await self._reader
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        return self.done


@contextlib.asynccontextmanager
async def running(*children: Child) -> AsyncIterator[None]:
    """Start the children in order; stop them in reverse order whatever happens."""
    started: list[Child] = []
    try:
        for child in children:
            await child.start()
            started.append(child)
        yield
    finally:
        for child in reversed(started):
            await child.stop()


async def smtp_source(port: int, mail: Path, *, sessions: int, count: int, timeout: float = 900.0) -> float:
    """Send ``count`` copies of ``mail`` over ``sessions`` parallel sessions; returns the seconds taken.

    smtp-source stops at the first reply that is not the expected one (no -A),
    so a clean exit means every mail got its 250.
    """
    from mailgen import RECIPIENT, SENDER

    args = [SMTP_SOURCE, "-s", str(sessions), "-m", str(count), "-F", str(mail), "-f", SENDER, "-t", RECIPIENT,
            "-M", "bench.example", f"127.0.0.1:{port}"]  # fmt: skip
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except BaseException as exc:  # a timeout, or the benchmark was interrupted
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise BenchError(f"smtp-source did not finish {count} mails in {timeout:g} s") from None
        raise
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        text = (err or out).decode(errors="replace").strip().splitlines()
        raise BenchError(f"smtp-source failed (exit {proc.returncode}): {text[-1] if text else ''}")
    return elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]

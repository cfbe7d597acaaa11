"""Where one mail's intake time goes: each step of the gateway alone, on one thread.

    python3 benchmarks/breakdown.py [--repeat 40]

Runs the steps the SMTP handler runs for the ~140 KB benchmark mail (document
extraction and checks, header reading, the durable spool write, the store
commit) and one worker state change, each ``--repeat`` times on a scratch spool
under /var/tmp, and prints the median milliseconds of each. A step's CPU share
bounds intake: on two cores with the GIL, the sum of the CPU-bound steps plus
aiosmtpd's own DATA reading is the floor of the time per mail.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mailgen  # noqa: E402

from gateway import settings
from gateway.documents import policy  # noqa: E402
from gateway.documents.headers import read_headers  # noqa: E402
from gateway.spool import FAX_NAME, RAW_NAME, Spool  # noqa: E402
from gateway.store import NewMessage, State, Store, new_id  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of ``fn``."""
    wall, cpu = [], []
    fn()  # warm caches and lazy imports
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=40)
    args = p.parse_args()
    if not 1 <= args.repeat <= 1000:
        p.error("--repeat must be 1..1000")
    raw = mailgen.with_crlf(mailgen.make_mail(mailgen.make_pdf(102_400)))
    docs = settings.from_mapping({}, {}).documents
    extraction = policy.extract(raw, docs)
    root = Path(tempfile.mkdtemp(prefix="fax-gateway-breakdown-", dir="/var/tmp"))
    try:
        spool = Spool(root)
        spool.create()
        store = Store(spool.db_path)
        jobs: list[str] = []

        def spool_write() -> None:
            spool.write(new_id(), {RAW_NAME: raw, FAX_NAME: extraction.document})

        def commit() -> None:
            msg = NewMessage(new_id(), mailgen.SENDER, "", "", "", "Scanned document", "", "127.0.0.1", "", "pdf",
                             extraction.pages, len(extraction.document))  # fmt: skip
            job = new_id()
            jobs.append(job)
            store.add_message(msg, [(job, "+33140000000", "")], "from bench")

        def transition() -> None:
            job = jobs.pop()
            store.transition(job, State.UPLOADING, "storing the document", expect=[State.QUEUED])

        steps: list[tuple[str, Callable[[], object]]] = [
            ("policy.extract (MIME parse, type and PDF checks)", lambda: policy.extract(raw, docs)),
            ("examiner.read_headers", lambda: read_headers(raw)),
            ("spool.write (2 files, 4 fsyncs, rename)", spool_write),
            ("store.add_message (1 commit, fsync)", commit),
            ("store.transition (worker state change, fsync)", transition),
        ]
        print(f"mail {len(raw):,} bytes, document {len(extraction.document):,} bytes; medians of {args.repeat}")
        print(f"{'step':<52} {'wall ms':>8} {'CPU ms':>8}")
        for name, fn in steps:
            wall, cpu = timed(fn, args.repeat)
            print(f"{name:<52} {wall:8.2f} {cpu:8.2f}")
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

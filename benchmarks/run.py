"""Run every benchmark and print one table: each figure beside its reference from the same run.

    python3 benchmarks/run.py              # the full run (about 15 minutes on 2 cores)
    python3 benchmarks/run.py --quick      # a few dozen mails: checks that the harness works

The machine may be shared and noisy, so each scenario runs ``--runs`` times,
the subject and its references interleaved, and the table shows medians and
the ratios of medians. Everything listens on and talks to 127.0.0.1 only. Not
part of the test suite. Needs Postfix's smtp-source (Debian's postfix package,
installed when missing; the system Postfix is left stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fit_bench  # noqa: E402
import mailgen  # noqa: E402
import office_bench  # noqa: E402
import pg_ref  # noqa: E402
import postfix_ref  # noqa: E402
import scenarios  # noqa: E402
from harness import median  # noqa: E402

# Gateways started together on one PostgreSQL database in the cluster drain.
CLUSTER_SIZES = (1, 2, 3)

TARGETS = {
    "ratio20": 0.75,  # gateway / bare aiosmtpd at 20 sessions, at least
    "p99_ms": 300.0,  # end to end at 50 mails/s, below
    "drain": 100.0,  # jobs/s, at least
    "rss_mb": 250.0,  # under 50 x 1 MiB, below
    "lag_ms": 100.0,  # below
    "fit10_s": 3.0,  # fitting a 10-page 300 dpi colour scan, below
    "fit_rss_mb": 300.0,  # peak memory of the process fitting 50 such pages, below
    "office_s": 5.0,  # a 3-page DOCX examined and converted, warm, below
}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()
    total = mem[1].split()[1] if len(mem) > 1 else "?"
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} CPUs ({cpu}), {total} RAM, Python {platform.python_version()}, {system}"


def prepare(root: Path, concurrency: int, only: list[str]) -> scenarios.Bench:
    if set(only) - {"fit", "office"} and not postfix_ref.available():
        print("installing Postfix (for smtp-source and the reference MTA) ...", flush=True)
        postfix_ref.install()
    if "cluster" in only and not pg_ref.available():
        raise SystemExit("the cluster drain needs PostgreSQL's initdb and pg_ctl: apt-get install postgresql")
    mail, big = root / "mail-140k.eml", root / "mail-1m.eml"
    mail.write_bytes(mailgen.make_mail(mailgen.make_pdf(102_400)))
    # "1 MiB": just under the provider's 1 MB document limit, so it is a document the gateway accepts.
    big.write_bytes(mailgen.make_mail(mailgen.make_pdf(1_040_000, pages=6)))
    return scenarios.Bench(root, mail, big, concurrency=concurrency)


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def spread(values: list[float], digits: int = 1) -> str:
    if len(values) < 2:
        return fmt(median(values), digits)
    return f"{fmt(median(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def cpu_text(runs: list[dict[str, float]]) -> str:
    """Median CPU per job of each process, over the runs."""
    if not runs:
        return ""
    return ", ".join(f"{name} {median([r[name] for r in runs]):.1f}" for name in runs[0])


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


async def measure(args: argparse.Namespace, bench: scenarios.Bench, r: dict[str, Any]) -> None:
    """Run the scenarios, adding each run's figures to ``r`` (saved after each run with --out)."""
    if "intake" in args.only:
        for rep in range(args.runs):
            for sessions in (1, 20):
                for name, fn in (("gateway", scenarios.intake_gateway), ("aiosmtpd", scenarios.intake_sink),
                                 ("chunked", scenarios.intake_sink_chunked),
                                 ("postfix", scenarios.intake_postfix)):  # fmt: skip
                    got = await fn(bench, sessions, args.mails)
                    r["intake"].setdefault(str(sessions), {}).setdefault(name, []).append(got.rate)
                    r["intake_cpu"].setdefault(str(sessions), {}).setdefault(name, []).append(got.cpu_ms)
                    print(f"  intake run {rep + 1}, {sessions:>2} sessions, {name:<8}: {got.rate:8.1f} mails/s, "
                          f"{got.cpu_ms:6.1f} ms CPU per mail", flush=True)  # fmt: skip
                    save(args, bench, r)
    if {"e2e", "drain", "cluster"} & set(args.only):
        await measure_backend(args, bench, r)
    if "fit" in args.only:
        scratch = bench.fresh("fit")
        r["fit"] = [asdict(f) for f in await asyncio.to_thread(fit_bench.run, scratch, args.runs)]
        save(args, bench, r)
    if "office" in args.only:
        scratch = bench.fresh("office")
        r["office"] = [asdict(f) for f in await asyncio.to_thread(office_bench.run, scratch, args.runs)]
        save(args, bench, r)
    if "memory" in args.only:
        for rep in range(args.runs):
            mem = await scenarios.memory(bench, args.sessions)
            r["memory"].append(asdict(mem))
            print(f"  memory run {rep + 1}: {mem}", flush=True)
            save(args, bench, r)


async def measure_backend(args: argparse.Namespace, bench: scenarios.Bench, r: dict[str, Any]) -> None:
    """The scenarios on moto S3, the simulator and the relay: end to end, drain, cluster drain."""
    backend = await scenarios.start_backend(bench)
    pg = pg_ref.PostgresReference(bench.fresh("postgresql")) if "cluster" in args.only else None
    try:
        if pg is not None:
            await asyncio.to_thread(pg.start)
        for rep in range(args.runs):
            for rate, seconds in ((args.rate, args.seconds), (args.light_rate, args.light_seconds)):
                if "e2e" not in args.only or rate <= 0:
                    continue
                e2e = await scenarios.end_to_end(bench, backend, rate, seconds)
                r["e2e"].append({**asdict(e2e), "rate": rate, "seconds": seconds})
                print(f"  end to end run {rep + 1} at {rate:g}/s: {e2e}", flush=True)
                save(args, bench, r)
            if "drain" in args.only or pg is not None:
                d = await scenarios.drain(bench, backend, args.drain)
                r["drain" if "drain" in args.only else "cluster"].append({**asdict(d), "rate": d.rate})
                if "drain" in args.only and pg is not None:  # the cluster's reference: the same run
                    r["cluster"].append({**asdict(d), "rate": d.rate})
                print(f"  drain run {rep + 1}: {d.jobs} jobs in {d.seconds:.2f} s = {d.rate:.1f} jobs/s; "
                      f"CPU ms per job {cpu_text([d.cpu_ms])}", flush=True)  # fmt: skip
                save(args, bench, r)
            for size in CLUSTER_SIZES if pg is not None else ():
                assert pg is not None
                d = await scenarios.cluster_drain(bench, backend, pg, args.drain, size)
                r["cluster"].append({**asdict(d), "rate": d.rate})
                print(f"  cluster drain run {rep + 1}, {size} instance(s): {d.jobs} jobs in {d.seconds:.2f} s "
                      f"= {d.rate:.1f} jobs/s; CPU ms per job {cpu_text([d.cpu_ms])}; jobs per instance "
                      f"{d.jobs_per_instance}, busy {[round(b, 2) for b in d.busy]}", flush=True)  # fmt: skip
                save(args, bench, r)
    finally:
        try:
            if pg is not None:
                await asyncio.to_thread(pg.stop)
        finally:
            await scenarios.stop_backend(backend)


async def guarded(work: Coroutine[Any, Any, None]) -> None:
    """SIGTERM or SIGINT cancels the work: every scenario then stops what it started."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    await task


def save(args: argparse.Namespace, bench: scenarios.Bench, r: dict[str, Any]) -> None:
    r["lags_ms"] = dict(bench.lags_ms)
    r["lag_cpu_ms"] = dict(bench.lag_cpu_ms)
    r["gc_ms"] = dict(bench.gc_ms)
    if args.out:
        settings = {
            k: v
            for k, v in vars(args).items()
            if k in ("runs", "mails", "rate", "seconds", "drain", "sessions", "concurrency")
        }
        args.out.with_suffix(".json").write_text(json.dumps({"args": settings, "results": r}, indent=2))


def merge(files: list[Path]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Figures saved by earlier runs (``--out``), put together: lists are joined, lags maxed."""
    merged: dict[str, Any] = {"intake": {}, "intake_cpu": {}, "e2e": [], "drain": [], "memory": [], "lags_ms": {},
                              "fit": [], "office": [], "cluster": []}  # fmt: skip
    settings: dict[str, Any] = {}
    for f in files:
        saved = json.loads(f.read_text())
        settings.update(saved["args"])
        r = saved["results"]
        for section in ("intake", "intake_cpu"):
            for sessions, row in r.get(section, {}).items():
                into = merged[section].setdefault(sessions, {})
                for k, values in row.items():
                    into.setdefault(k, []).extend(values)
        for key in ("e2e", "drain", "memory", "fit", "office", "cluster"):
            merged[key].extend(r.get(key, []))
        for k, v in r.get("lags_ms", {}).items():
            if v >= merged["lags_ms"].get(k, 0.0):
                merged["lags_ms"][k] = v
                merged.setdefault("lag_cpu_ms", {})[k] = r.get("lag_cpu_ms", {}).get(k, float("nan"))
        for k, v in r.get("gc_ms", {}).items():
            merged.setdefault("gc_ms", {})[k] = max(v, merged.get("gc_ms", {}).get(k, 0.0))
    return argparse.Namespace(**settings), merged


def e2e_rows(runs: list[dict[str, Any]], conc: str, *, target: bool) -> list[str]:
    p50, p99 = [e["p50_ms"] for e in runs], [e["p99_ms"] for e in runs]
    acc50, acc99 = [e["accept_p50_ms"] for e in runs], [e["accept_p99_ms"] for e in runs]
    got, offered = sum(e["submitted"] for e in runs), sum(e["offered"] for e in runs)
    load = f"{runs[0]['rate']:g} mails/s for {runs[0]['seconds']:g} s{conc}"
    ok = median(p99) < TARGETS["p99_ms"] and got == offered
    goal = f"< {TARGETS['p99_ms']:g} ms: {verdict(ok)}" if target else "(lighter load: no target)"
    return [
        f"| End of DATA → provider request, p50 (ms), {load} | {spread(p50)} | end of DATA → 250: {spread(acc50)} "
        "| | |",
        f"| End of DATA → provider request, p99 (ms), {load} | {spread(p99)} | end of DATA → 250: {spread(acc99)} | "
        f"| {goal} ({got}/{offered} submitted) |",
        f"| CPU per end-to-end job (ms), {load} | {cpu_text([e['cpu_ms'] for e in runs])} | | | |",
    ]


def cluster_rows(runs: list[dict[str, Any]], count: int) -> list[str]:
    """The drain on SQLite (one instance) and on PostgreSQL (1 to 3 instances), each beside the SQLite figure."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for d in runs:
        groups.setdefault((d.get("store", "sqlite"), d.get("instances", 1)), []).append(d)
    base = median([d["rate"] for d in groups.get(("sqlite", 1), [])])
    rows = []
    for (store, size), got in sorted(groups.items(), key=lambda kv: (kv[0][0] != "sqlite", kv[0][1])):
        rates, secs = [d["rate"] for d in got], [d["seconds"] for d in got]
        where = "SQLite, one instance" if store == "sqlite" else f"PostgreSQL, {size} instance{'s' if size > 1 else ''}"
        cpu = [d["cpu_ms"] for d in got]
        gateway = median([c["gateway"] for c in cpu])
        refs = ", ".join(f"{name} {median([c[name] for c in cpu]):.1f}" for name in cpu[0] if name != "gateway")
        jobs = " / ".join(f"{median([d['jobs_per_instance'][i] for d in got]):.0f}" for i in range(size))
        busy = " / ".join(f"{100 * median([d['busy'][i] for d in got]):.0f} %" for i in range(size))
        ratio = "" if store == "sqlite" else f"{median(rates) / base:.2f} of SQLite's"
        rows.append(f"| Drain of {count:,} jobs: {where} (jobs/s) | {spread(rates)} ({spread(secs, 2)} s); "
                    f"gateway CPU {gateway:.1f} ms per job; jobs per instance {jobs}; busy {busy} | "
                    f"{'' if store == 'sqlite' else 'SQLite, one instance ' + fmt(base) + ' jobs/s; '}"
                    f"CPU ms per job: {refs} | {ratio} | |")  # fmt: skip
    return rows


def fit_rows(runs: list[dict[str, Any]]) -> list[str]:
    """Fitting scans (benchmarks/fit_bench.py), each figure beside Ghostscript's on the same pages."""
    rows = []
    for pages in sorted({f["pages"] for f in runs}):
        got = [f for f in runs if f["pages"] == pages]
        fit_s, exam_s, gs_s = ([f[k] for f in got] for k in ("fit_s", "examine_s", "gs_s"))
        how = ", ".join(sorted({f["how"] if f["how"].startswith("refused") else f"{f['how']} {f['fax_bytes']:,} bytes"
                                for f in got}))  # fmt: skip
        size = f"{median([f['pdf_bytes'] for f in got]) / 1e6:.1f} MB"
        goal = ""
        if pages == 10:
            goal = f"< {TARGETS['fit10_s']:g} s: {verdict(median(fit_s) < TARGETS['fit10_s'])}"
        elif pages == 25:
            goal = f"fits at fine resolution: {verdict(all(f['how'] == 'fine' for f in got))}"
        rows.append(f"| Fit a {pages}-page 300 dpi colour scan ({size}) (s; whole examination in brackets) | "
                    f"{spread(fit_s, 2)} ({spread(exam_s, 2)}) → {how} | Ghostscript tiffg4 204x196 "
                    f"{spread(gs_s, 2)} | {median(fit_s) / median(gs_s):.2f} | {goal} |")  # fmt: skip
        if pages == max(f["pages"] for f in runs):
            rss, gs_rss = [f["rss_mb"] for f in got], [f["gs_rss_mb"] for f in got]
            ok = max(rss) < TARGETS["fit_rss_mb"]
            rows.append(f"| Peak RSS of the examining process, {pages}-page scan (MB) | {spread(rss)} | "
                        f"Ghostscript {spread(gs_rss)} | {median(rss) / median(gs_rss):.2f} | "
                        f"< {TARGETS['fit_rss_mb']:g}: {verdict(ok)} |")  # fmt: skip
    return rows


def office_rows(runs: list[dict[str, Any]]) -> list[str]:
    """Office conversion (benchmarks/office_bench.py), beside LibreOffice's own one-shot conversion."""
    if not runs:
        return []
    one, ref = [o["one_s"] for o in runs], [o["reference_s"] for o in runs]
    four, wide = [o["four_s"] for o in runs], [o["four_wide_s"] for o in runs]
    ok = median(one) <= TARGETS["office_s"]
    return [
        f"| Examine a mail with a 3-page DOCX, converted by LibreOffice, warm (s) | {spread(one, 2)} | "
        f"soffice --convert-to pdf {spread(ref, 2)} | {median(one) / median(ref):.2f} | "
        f"<= {TARGETS['office_s']:g} s: {verdict(ok)} |",
        f"| 4 such mails at once, 4 workers, office_concurrency 2 (4) (s, until all done) | {spread(four, 2)} "
        f"({spread(wide, 2)}) | 4 x one-shot soffice {4 * median(ref):.2f} | {median(four) / (4 * median(ref)):.2f} "
        f"| |",
    ]  # fmt: skip


def table(args: argparse.Namespace, r: dict[str, Any]) -> str:
    rows = ["| Figure | Gateway | Reference, same run | Ratio | Target |", "| --- | --- | --- | --- | --- |"]
    for sessions, row in sorted(r["intake"].items(), key=lambda kv: int(kv[0])):
        a, b, c = (median(row[k]) for k in ("gateway", "aiosmtpd", "postfix"))
        target = f"a/b ≥ {TARGETS['ratio20']}: {verdict(a / b >= TARGETS['ratio20'])}" if sessions == "20" else ""
        s = "session" if sessions == "1" else "sessions"
        # b2: the same bare server with the gateway's DATA reader (older saved runs have no b2).
        b2 = (
            f"; b2 = bare aiosmtpd with the gateway's DATA reader {spread(row['chunked'])}"
            if row.get("chunked")
            else ""
        )
        b2_ratio = f"; a/b2 {a / median(row['chunked']):.2f}" if row.get("chunked") else ""
        rows.append(f"| Intake, {sessions} {s} (mails/s) | a = {spread(row['gateway'])} | b = bare aiosmtpd "
                    f"{spread(row['aiosmtpd'])}{b2}; c = Postfix {spread(row['postfix'])} | a/b {a / b:.2f}{b2_ratio}; "
                    f"a/c {a / c:.2f} | {target} |")  # fmt: skip
        cpu = r.get("intake_cpu", {}).get(sessions)
        if cpu:
            ca, cb, cc = (median(cpu[k]) for k in ("gateway", "aiosmtpd", "postfix"))
            cb2 = f"; b2 {spread(cpu['chunked'])}" if cpu.get("chunked") else ""
            rows.append(f"| CPU per mail, {sessions} {s} (ms, all threads and processes) | {spread(cpu['gateway'])} | "
                        f"bare aiosmtpd {spread(cpu['aiosmtpd'])}{cb2}; Postfix (all its processes) "
                        f"{spread(cpu['postfix'])} | b/a {cb / ca:.2f}; c/a {cc / ca:.2f} | |")  # fmt: skip
    concurrency = int(getattr(args, "concurrency", 0) or 0)
    conc = f", provider.concurrency = {concurrency}" if concurrency else ""
    for rate in sorted({e["rate"] for e in r["e2e"]}, reverse=True):
        rows += e2e_rows([e for e in r["e2e"] if e["rate"] == rate], conc, target=rate == args.rate)
    if r["drain"]:
        rates = [d["rate"] for d in r["drain"]]
        secs = [d["seconds"] for d in r["drain"]]
        rows.append(f"| Drain {args.drain} spooled jobs (jobs/s){conc} | {spread(rates)} ({spread(secs, 2)} s) | "
                    f"CPU ms per job: {cpu_text([d['cpu_ms'] for d in r['drain']])} "
                    f"| | ≥ {TARGETS['drain']:g}: {verdict(median(rates) >= TARGETS['drain'])} |")  # fmt: skip
    if r["memory"]:
        idle, loaded, ref_idle, ref_loaded = (
            [m[key] / 1024 for m in r["memory"]] for key in ("idle_kb", "loaded_kb", "ref_idle_kb", "ref_loaded_kb")
        )
        rows.append(f"| Peak RSS idle (MB; daemon + document workers, summed) | {spread(idle)} | "
                    f"bare aiosmtpd {spread(ref_idle)} | "
                    f"{median(idle) / median(ref_idle):.2f} | |")  # fmt: skip
        ok = max(loaded) < TARGETS["rss_mb"]
        rows.append(f"| Peak RSS, {args.sessions} sessions × 1 MiB document (MB; summed likewise) | {spread(loaded)} | "
                    f"bare aiosmtpd "
                    f"{spread(ref_loaded)} | {median(loaded) / median(ref_loaded):.2f} | < {TARGETS['rss_mb']:g} "
                    f"(largest run): {verdict(ok)} |")  # fmt: skip
        pss = [m["pss_kb"] / 1024 for m in r["memory"] if "pss_kb" in m]
        if pss:
            rows.append(f"| PSS, {args.sessions} sessions × 1 MiB document (MB; peak of the daemon's and workers' "
                        f"total, sampled every 50 ms; shared pages counted once) | {spread(pss)} | | | |")  # fmt: skip
    rows += cluster_rows(r.get("cluster", []), args.drain)
    rows += fit_rows(r.get("fit", []))
    rows += office_rows(r.get("office", []))
    lags = {k: v for k, v in r["lags_ms"].items() if k != "reference"}
    if lags:
        worst = max(lags.values())
        where = ", ".join(f"{k} {v:.0f}" for k, v in lags.items())
        ref = r["lags_ms"].get("reference", float("nan"))
        rows.append(f"| Largest event-loop lag (ms) | {worst:.1f} ({where}) | bare aiosmtpd {fmt(ref)} | | "
                    f"< {TARGETS['lag_ms']:g}: {verdict(worst < TARGETS['lag_ms'])} |")  # fmt: skip
        cpu, gcs = r.get("lag_cpu_ms", {}), r.get("gc_ms", {})
        if cpu:
            at = ", ".join(f"{k} {cpu.get(k, float('nan')):.0f}" for k in lags)
            longest = ", ".join(f"{k} {gcs.get(k, float('nan')):.0f}" for k in lags)
            rows.append(f"| Loop thread's own CPU time in that late interval (ms); longest GC pause (ms) | {at}; "
                        f"GC: {longest} | bare aiosmtpd {fmt(cpu.get('reference', float('nan')))}; "
                        f"GC: {fmt(gcs.get('reference', float('nan')))} | | |")  # fmt: skip
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3, help="repetitions of each scenario (medians are shown)")
    p.add_argument("--mails", type=int, default=2000, help="mails per intake run")
    p.add_argument("--rate", type=float, default=50.0, help="offered load of the end-to-end run (mails/s)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the end-to-end run")
    p.add_argument("--light-rate", type=float, default=10.0, help="a second, lighter end-to-end load (0: none)")
    p.add_argument("--light-seconds", type=float, default=15.0, help="length of the lighter run")
    p.add_argument("--drain", type=int, default=1000, help="jobs spooled, then drained")
    p.add_argument("--sessions", type=int, default=50, help="concurrent 1 MiB sessions for the memory figure")
    p.add_argument("--concurrency", type=int, default=0,
                   help="provider.concurrency for end to end and drain (default: the gateway's default)")  # fmt: skip
    p.add_argument("--only", nargs="+", default=["intake", "e2e", "drain", "memory", "fit", "office"],
                   choices=["intake", "e2e", "drain", "cluster", "memory", "fit", "office"])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny numbers: check the harness, not the gateway")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, configurations)")
    p.add_argument("--out", type=Path, help="also write the table and raw figures here (Markdown + JSON)")
    p.add_argument("--report", type=Path, nargs="+", help="measure nothing: print the table of saved figures")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.mails, args.seconds, args.drain, args.sessions = 1, 40, 2.0, 40, 10
        args.light_seconds = 2.0
    bounds = {"runs": (1, 20), "mails": (1, 20000), "drain": (1, 20000), "sessions": (1, 95), "concurrency": (0, 200)}
    for key, (lo, hi) in bounds.items():  # every loop stays bounded
        if not lo <= getattr(args, key) <= hi:
            p.error(f"--{key} must be between {lo} and {hi}")
    if not (0 < args.rate <= 500 and 0 < args.seconds <= 300 and 0 <= args.light_rate <= 500):
        p.error("--rate must be in (0, 500], --light-rate in [0, 500] and --seconds in (0, 300]")
    if not 0 < args.light_seconds <= 300:
        p.error("--light-seconds must be in (0, 300]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.report:
        saved, figures = merge(args.report)
        print(f"figures saved in {', '.join(map(str, args.report))}; {machine()}\n\n{table(saved, figures)}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="fax-gateway-bench-", dir="/var/tmp"))
    root.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach their directories
    started = time.monotonic()
    try:
        bench = prepare(root, args.concurrency, args.only)
        print(f"scratch directory {root}; {machine()}", flush=True)
        results: dict[str, Any] = {"intake": {}, "intake_cpu": {}, "e2e": [], "drain": [], "memory": [], "lags_ms": {},
                                   "fit": [], "office": [], "cluster": []}  # fmt: skip
        try:
            asyncio.run(guarded(measure(args, bench, results)))
        except asyncio.CancelledError:
            print("interrupted" + (f"; the figures so far are in {args.out.with_suffix('.json')}" if args.out else ""))
            return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    head = (f"fax-gateway benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {minutes:.0f} min; "
            f"medians of {args.runs} run(s) (min–max); {machine()}")  # fmt: skip
    text = f"{head}\n\n{table(args, results)}\n"
    print("\n" + text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fitting benchmark: a printer's default scan (A4, 300 dpi, colour) made into a fax under 1 MB.

In: a scratch directory. Out: :class:`FitRun` figures, each beside Ghostscript's figures for the same
pages in the same run (``gs -sDEVICE=tiffg4 -r204x196``: the plain way to make G4 fax pages).

- 10 pages: the whole examination of the mail (MIME, checks, fitting) and the fitting alone, wall
  seconds, in a fresh process as a document worker runs it; Ghostscript's wall seconds.
- 25 pages: the same, and the resolution it fitted at (fine is the goal).
- 50 pages: the peak resident memory (ru_maxrss) of the process doing the examination; Ghostscript's.

Each measurement runs in its own child process (``python3 benchmarks/fit_bench.py child MAIL``), so
the peak memory is that of one examination. The scans are made in code (tests/support_scan.py):
text on tinted paper, noise, a slight rotation, 4 different pages repeated, JPEG quality 50. Each is
attached to a mail (tests/support_mail.py) written to the scratch directory beforehand: the child
reads that mail and holds only its bytes, as a worker holds the mail it is handed. The 50-page mail
(27 MB of PDF) is over the default ``smtp.max_message_size`` once encoded: the child examines it
directly, as a worker would. Ghostscript comes from Debian's ghostscript package, installed when
missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GS = "/usr/bin/gs"


@dataclass(frozen=True)
class FitRun:
    pages: int
    pdf_bytes: int
    examine_s: float  # the whole examination of the mail, in the child
    fit_s: float  # fitting alone
    fax_bytes: int
    how: str  # lossless, fine, standard, or the refusal
    rss_mb: float  # the child's peak resident memory
    gs_s: float
    gs_rss_mb: float


def available() -> bool:
    return Path(GS).exists()


def install() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "ghostscript"], check=True, env=env, timeout=900)


def make_scan(path: Path, pages: int) -> None:
    sys.path.insert(0, str(ROOT))
    import img2pdf

    from tests.support_scan import filler_lines, jpeg, scan

    # JPEG quality 50: about 0.55 MB a page, what printers' defaults give (a 10-page scan of 4-9 MB).
    distinct = [jpeg(scan(300, seed=i, lines=filler_lines(i)), quality=50) for i in range(min(4, pages))]
    path.write_bytes(img2pdf.convert([distinct[i % len(distinct)] for i in range(pages)]))


def make_mail(pdf: Path, path: Path) -> None:
    """The mail a desktop client would send with the scan attached (base64, 76 columns)."""
    sys.path.insert(0, str(ROOT))
    from tests.support_mail import plain_with

    path.write_bytes(plain_with([("scan.pdf", "application/pdf", pdf.read_bytes())]))


def measure(pdf: Path, mail: Path, pages: int, scratch: Path) -> FitRun:
    # RUSAGE_CHILDREN keeps the largest child's peak: each peak is read by its own short-lived helper
    # (python -c) that runs one child and reports that child's usage.
    gs_s, gs_rss = _measured([GS, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sDEVICE=tiffg4", "-r204x196",
                              f"-sOutputFile={scratch / 'gs-%03d.tif'}", str(pdf)])  # fmt: skip
    _, rss, out = _run_measured([sys.executable, str(Path(__file__).resolve()), "child", str(mail)])
    got = json.loads(out)
    for f in scratch.glob("gs-*.tif"):
        f.unlink()
    return FitRun(pages, pdf.stat().st_size, got["examine_s"], got["fit_s"], got["fax_bytes"], got["how"], rss,
                  gs_s, gs_rss)  # fmt: skip


_HELPER = (
    "import json,os,resource,subprocess,sys,time;t=time.monotonic();"
    "p=subprocess.run(sys.argv[1:],capture_output=True);s=time.monotonic()-t;"
    "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
    "sys.stderr.buffer.write(p.stderr);print(json.dumps({'s':s,'rss':r,'rc':p.returncode,'out':p.stdout.decode()}))"
)


def _run_measured(argv: list[str]) -> tuple[float, float, str]:
    result = subprocess.run([sys.executable, "-c", _HELPER, *argv], capture_output=True, cwd=ROOT, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode(errors="replace")[-2000:])
    got = json.loads(result.stdout)
    if got["rc"] != 0:
        raise RuntimeError(f"{argv[:3]} exited {got['rc']}: {result.stderr.decode(errors='replace')[-2000:]}")
    return float(got["s"]), got["rss"] / 1024, str(got["out"])


def _measured(argv: list[str]) -> tuple[float, float]:
    seconds, rss, _ = _run_measured(argv)
    return seconds, rss


def child(mail_path: str) -> None:
    """In a fresh process: examine the mail as a document worker would; print the figures."""
    sys.path.insert(0, str(ROOT))
    from gateway.documents import fit, policy
    from gateway.documents.examiner import examine
    from gateway.settings import DocumentSettings

    raw = Path(mail_path).read_bytes()  # a worker holds only the mail
    settings = DocumentSettings()
    fitting = 0.0
    original = fit.fit

    def timed(*args: object, **kwargs: object) -> fit.Fitted:
        nonlocal fitting
        started = time.monotonic()
        try:
            return original(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            fitting = time.monotonic() - started

    fit.fit = timed
    started = time.monotonic()
    try:
        extraction, _ = examine(raw, settings)
        how, size = extraction.documents[0].get("fit", "as is"), len(extraction.document)
    except policy.DocumentRefused as exc:
        how, size = f"refused: {exc.reply}", 0
    print(json.dumps({"examine_s": time.monotonic() - started, "fit_s": fitting, "fax_bytes": size, "how": how}))


def run(scratch: Path, runs: int) -> list[FitRun]:
    if not available():
        print("installing Ghostscript (the reference) ...", flush=True)
        install()
    results: list[FitRun] = []
    scans: dict[int, Path] = {}
    mails: dict[int, Path] = {}
    for pages in (10, 25, 50):
        scans[pages], mails[pages] = scratch / f"scan-{pages}.pdf", scratch / f"scan-{pages}.eml"
        make_scan(scans[pages], pages)
        make_mail(scans[pages], mails[pages])
    for rep in range(runs):
        for pages in (10, 25, 50):
            got = measure(scans[pages], mails[pages], pages, scratch)
            results.append(got)
            print(f"  fit run {rep + 1}, {pages} pages ({got.pdf_bytes / 1e6:.1f} MB): examination "
                  f"{got.examine_s:.2f} s, fitting {got.fit_s:.2f} s -> {got.fax_bytes} bytes ({got.how}), "
                  f"peak RSS {got.rss_mb:.0f} MB; Ghostscript {got.gs_s:.2f} s, {got.gs_rss_mb:.0f} MB",
                  flush=True)  # fmt: skip
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child(sys.argv[2])
    else:
        sys.exit("usage: fit_bench.py child MAIL (run the benchmark with: python3 benchmarks/run.py --only fit)")

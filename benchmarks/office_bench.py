"""Office conversion benchmark: a 3-page DOCX made a fax, beside a plain one-shot ``soffice --convert-to pdf``.

In: a scratch directory. Out: :class:`OfficeRun` figures, wall seconds, each beside LibreOffice's own
one-shot conversion of the same file in the same run (``soffice --headless --convert-to pdf`` with a
profile it keeps: the reference a person would type).

- one: the whole examination of a mail holding the DOCX (MIME, libmagic, the conversion with its
  fresh profile, the checks), warm (the second of two in a row: programs and fonts in the page cache),
  in a fresh process as a document worker runs it;
- four: four such examinations started at once, each in its own process (as four document workers),
  with ``documents.office_concurrency`` at its default (2) and at 4; the wall time until all are done.

The DOCX comes from tests/support_office.py (hand-written OOXML). LibreOffice comes from Debian's
libreoffice-writer-nogui, installed when missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OfficeRun:
    one_s: float  # the whole examination of one mail, warm
    reference_s: float  # soffice --convert-to pdf of the same file, warm profile
    four_s: float  # four at once, office_concurrency = 2
    four_wide_s: float  # four at once, office_concurrency = 4
    pages: int


def available() -> bool:
    return shutil.which("soffice") is not None


def install() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libreoffice-writer-nogui",
                    "libreoffice-calc-nogui"], check=True, env=env, timeout=1800)  # fmt: skip


def child(docx_path: str, concurrency: str) -> None:
    """In a fresh process: examine a mail holding the DOCX as a document worker would; print the figures."""
    sys.path.insert(0, str(ROOT))
    from gateway.documents.examiner import examine
    from gateway.settings import DocumentSettings
    from tests.support_mail import plain_with
    from tests.support_office import DOCX_TYPE

    raw = plain_with([("Lettre.docx", DOCX_TYPE, Path(docx_path).read_bytes())])
    settings = DocumentSettings(office_concurrency=int(concurrency))
    started = time.monotonic()
    extraction, _ = examine(raw, settings)
    print(json.dumps({"s": time.monotonic() - started, "pages": extraction.pages}))


def _child(docx: Path, concurrency: int) -> dict[str, float]:
    argv = [sys.executable, str(Path(__file__).resolve()), "child", str(docx), str(concurrency)]
    result = subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=300, check=True)
    got: dict[str, float] = json.loads(result.stdout)
    return got


def _reference(docx: Path, scratch: Path) -> float:
    profile = (scratch / "reference-profile").as_uri()
    argv = ["soffice", "--headless", f"-env:UserInstallation={profile}", "--convert-to", "pdf", "--outdir",
            str(scratch / "reference"), str(docx)]  # fmt: skip
    started = time.monotonic()
    subprocess.run(argv, capture_output=True, timeout=300, check=True)
    return time.monotonic() - started


def _at_once(docx: Path, concurrency: int) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _child(docx, concurrency), range(4)))
    return time.monotonic() - started


def run(scratch: Path, runs: int) -> list[OfficeRun]:
    if not available():
        print("installing LibreOffice (the converter and the reference) ...", flush=True)
        install()
    sys.path.insert(0, str(ROOT))
    from tests.support_office import docx

    path = scratch / "Lettre.docx"
    path.write_bytes(docx(3))
    _child(path, 2)  # warm: programs and fonts in the page cache
    _reference(path, scratch)  # the reference's profile made once, as a person's is
    results = []
    for rep in range(runs):
        one = _child(path, 2)
        got = OfficeRun(one["s"], _reference(path, scratch), _at_once(path, 2), _at_once(path, 4), int(one["pages"]))
        print(f"  office run {rep + 1}: {got}", flush=True)
        results.append(got)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3])
    else:
        print(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp"), 3))

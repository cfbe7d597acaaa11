"""Real mail from about 40 clients and devices against document policy v1 (``../shared/corpus``).

Every row of the corpus INDEX.tsv says what the gateway does with the message
(``gateway_expect``: ``fax:<n>:<types>`` or ``refuse:<reason>``); the
extractor must agree. Skipped when the corpus is not next to the checkout.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from gateway.documents.policy import DocumentRefused, extract
from gateway.settings import DocumentSettings

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
# The rows judge which parts are documents under policy v1, not the provider's size limit: nothing is
# converted (text and Office attachments are refused as a type, as v1 says; their conversion is
# tests/test_office.py's), and no cover page is added.
SETTINGS = DocumentSettings(max_fax_bytes=64 * 1024 * 1024, convert_types=(), cover_page="off")


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _rows() -> list[dict[str, str]]:
    if not (CORPUS / "INDEX.tsv").is_file():
        return []
    with open(CORPUS / "INDEX.tsv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{k: _unescape(v) for k, v in row.items()} for row in reader]


ROWS = _rows()


def decision(raw: bytes) -> str:
    try:
        result = extract(raw, SETTINGS)
    except DocumentRefused as exc:
        return f"refuse:{exc.reason}"
    return f"fax:{len(result.documents)}:" + ",".join(d["type"] for d in result.documents)


@pytest.mark.skipif(not ROWS, reason=f"corpus not found at {CORPUS}")
def test_corpus_is_complete() -> None:
    assert len(ROWS) == 192


@pytest.mark.skipif(not ROWS, reason=f"corpus not found at {CORPUS}")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["file"])
def test_gateway_decision(row: dict[str, str]) -> None:
    raw = (CORPUS / row["file"]).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == row["sha256"]
    assert decision(raw) == row["gateway_expect"], row["gateway_note"]

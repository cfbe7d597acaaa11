"""Documents through the real SMTP server: every mail case gets its reply before the 250, or its fax PDF spooled."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pikepdf
import pytest

from gateway.daemon.app import Gateway
from gateway.spool import FAX_NAME, RAW_NAME
from tests.support_docs import image, pdf, pdf_of_size
from tests.support_mail import CASES, MailCase, plain_with
from tests.support_simulator import SimFactory, provider_env, provider_table
from tests.support_smtp import Starter, send_async, spooled_fax


def pages_of(document: bytes) -> int:
    with pikepdf.open(io.BytesIO(document)) as doc:
        return len(doc.pages)


# A lone message/partial mail is kept over SMTP, not refused (tests/test_smtp_partial.py).
@pytest.mark.parametrize("case", [c for c in CASES if c.id != "message-partial"], ids=lambda c: c.id)
async def test_mail_case_over_smtp(case: MailCase, smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": dict(case.documents)})
    code, text = await send_async(harness.port, case.build())
    kind, _, rest = case.expect.partition(":")
    if kind == "refuse":
        assert f"{code} {text}".startswith(case.reply + " "), text
        for word in case.words:
            assert word in text
        assert await harness.jobs() == []
        return
    assert code == 250
    pages, types = rest.split(":")
    document, row = await spooled_fax(harness)
    assert document.startswith(b"%PDF-")
    assert pages_of(document) == int(pages)
    assert (row["doc_type"], row["doc_pages"], row["doc_bytes"]) == ("pdf", int(pages), len(document))
    listed = json.loads(row["documents"])
    assert [d["type"] for d in listed] == types.split(",")
    if case.names:
        assert tuple(d["name"] for d in listed) == case.names


async def test_two_pdfs_and_a_photo_become_one_spooled_pdf(
    make_settings: Any, sim_factory: SimFactory, tmp_path: Path
) -> None:
    """The whole daemon (provider pointed at the simulator on loopback): one mail, one fax.pdf."""
    simulator = await sim_factory()
    gw = Gateway(make_settings(provider_table(simulator), provider_env()))
    await gw.start()
    try:
        raw = plain_with([
            ("contrat.pdf", "application/pdf", pdf(3)),
            ("annexe.pdf", "application/pdf", pdf(2)),
            ("photo.jpg", "image/jpeg", image("JPEG", (1600, 1200), 72)),
        ])
        code, _ = await send_async(gw.smtp.port, raw)
        assert code == 250
        messages = [p for p in (tmp_path / "spool" / "messages").iterdir()]
        assert len(messages) == 1
        assert sorted(p.name for p in messages[0].iterdir()) == sorted([FAX_NAME, RAW_NAME])
        assert pages_of((messages[0] / FAX_NAME).read_bytes()) == 6
        jobs = await gw.store.run(lambda s: s.list_jobs())
        assert [j.doc_pages for j in jobs] == [6]
    finally:
        await gw.stop()


async def test_exact_size_boundary_over_smtp(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"fit": "off"}})  # refused as it is, not made to fit
    at_limit = pdf_of_size(1_048_576)
    assert (await send_async(harness.port, plain_with([("a.pdf", "application/pdf", at_limit)])))[0] == 250
    document, _ = await spooled_fax(harness)
    assert document == at_limit
    over = plain_with([("b.pdf", "application/pdf", pdf_of_size(1_048_577))])
    code, text = await send_async(harness.port, over)
    assert (code, text) == (552, "5.3.4 b.pdf: the fax document is 1048577 bytes, over the limit of 1048576 bytes:"
                                 " even one page is over it: scan in black and white at 200 dpi")  # fmt: skip



async def test_size_refusal_of_several_documents_says_it_is_their_sum(smtp_gateway: Starter) -> None:
    one = pdf(1)
    limit = len(one) + 50  # each document fits alone, not both together
    harness = await smtp_gateway({"documents": {"max_fax_bytes": limit, "fit": "off"}})
    code, text = await send_async(harness.port, plain_with([("a.pdf", "application/pdf", one)]))
    assert code == 250
    code, text = await send_async(harness.port, plain_with([("a.pdf", "application/pdf", one),
                                                            ("b.pdf", "application/pdf", one)]))  # fmt: skip
    assert code == 552 and text.startswith("5.3.4 a.pdf and 1 more: the fax document is ")
    assert f" bytes (2 documents together), over the limit of {limit} bytes: " in text
    assert len(await harness.jobs()) == 1


async def test_decoded_bytes_bound_is_a_setting(smtp_gateway: Starter) -> None:
    document = pdf(2)
    harness = await smtp_gateway({"documents": {"max_decoded_bytes": 2 * len(document) - 1}})
    assert (await send_async(harness.port, plain_with([("a.pdf", "application/pdf", document)])))[0] == 250
    code, text = await send_async(harness.port, plain_with([("a.pdf", "application/pdf", document),
                                                            ("b.pdf", "application/pdf", document)]))  # fmt: skip
    limit = 2 * len(document) - 1
    assert (code, text) == (554, f"5.6.0 Message too complex to process: attachments larger than {limit} bytes in all")
    assert len(await harness.jobs()) == 1

async def test_skipped_parts_are_recorded_with_the_message(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"unsupported": "skip", "convert_types": []}})
    raw = plain_with([("notes.txt", "text/plain", b"call me\n"), ("doc.pdf", "application/pdf", pdf(1))])
    assert (await send_async(harness.port, raw))[0] == 250
    _, row = await spooled_fax(harness)
    assert json.loads(row["skipped"]) == [{"name": "notes.txt", "type": "text/plain", "reason": "type"}]
    # Nothing left once the skipped parts are out: the reply names what to convert.
    code, text = await send_async(harness.port, plain_with([("notes.txt", "text/plain", b"call me\n")]))
    assert (code, text) == (554, "5.6.1 notes.txt: type plain text (text/plain) cannot be faxed "
                                 "(accepted: PDF, TIFF, JPEG, PNG, GIF); convert it to PDF")  # fmt: skip
    assert len(await harness.jobs()) == 1


async def test_pdf_behind_an_application_warning_over_smtp(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway()
    warning = b"<br />\n<b>Warning</b>:  session_start(): headers already sent in <b>/srv/app/pdf.php</b><br />\n"
    raw = plain_with([("invoice.pdf", "application/pdf", warning + pdf(1))], mailer="PHPMailer 5.2.1")
    assert (await send_async(harness.port, raw))[0] == 250
    document, _ = await spooled_fax(harness)
    assert document.startswith(b"%PDF-") and pages_of(document) == 1

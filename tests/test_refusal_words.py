"""Every document refusal says what to change: the file, what was found, the limit, and what to do instead."""

from __future__ import annotations

import dataclasses

import pytest

from gateway import replies
from gateway.documents.policy import DocumentRefused, extract
from gateway.settings import DocumentSettings
from tests.support_docs import image, pdf
from tests.support_mail import plain_with
from tests.support_smtp import Raw, Starter, transaction

DEFAULT = DocumentSettings()


def refusal(raw: bytes, settings: DocumentSettings = DEFAULT) -> DocumentRefused:
    with pytest.raises(DocumentRefused) as caught:
        extract(raw, settings)
    return caught.value


def test_a_file_named_pdf_that_is_not_one_is_told_so() -> None:
    got = refusal(plain_with([("scan.pdf", "application/pdf", b"Dear sir, please find attached...\n")]))
    assert got.reply.reply is replies.DOC_NOT_PDF and got.reason == "type"
    assert str(got.reply) == (
        "554 5.6.1 scan.pdf: type plain text (text/plain) cannot be faxed: the name says .pdf but the content is not"
        " a PDF (accepted: PDF, TIFF, JPEG, PNG, GIF); save or export it as PDF again, renaming the file does not"
        " convert it"
    )
    assert "convert it to PDF" not in str(got.reply)


def test_an_image_named_pdf_where_only_pdf_is_accepted() -> None:
    only_pdf = dataclasses.replace(DEFAULT, accepted_types=("pdf",))
    got = refusal(plain_with([("Scan_0001.PDF", "application/pdf", image("JPEG"))]), only_pdf)
    assert str(got.reply).startswith("554 5.6.1 Scan_0001.PDF: type ")
    assert "the name says .pdf but the content is not a PDF (accepted: PDF)" in str(got.reply)


def test_a_file_of_another_name_is_still_told_to_convert() -> None:
    no_conversion = dataclasses.replace(DEFAULT, convert_types=())
    got = refusal(plain_with([("notes.txt", "text/plain", b"call me\n")]), no_conversion)
    assert got.reply.reply is replies.DOC_TYPE and str(got.reply).endswith("convert it to PDF")


def test_too_big_says_how_many_pages_would_fit() -> None:
    ten = pdf(10)
    limit = len(ten) // 2
    # fit = "off": refused as it is (fitting would make these pages fit)
    settings = dataclasses.replace(DEFAULT, max_fax_bytes=limit, fit="off")
    got = refusal(plain_with([("report.pdf", "application/pdf", ten)]), settings)
    size = int(str(got.reply).split(" is ")[1].split(" bytes")[0])
    most = 10 * limit // size
    assert 1 <= most < 10
    assert str(got.reply) == (
        f"552 5.3.4 report.pdf: the fax document is {size} bytes, over the limit of {limit} bytes:"
        f" scan in black and white at 200 dpi, or send at most {most} pages per mail"
    )


async def test_the_person_at_the_copier_reads_it_in_the_smtp_reply(smtp_gateway: Starter) -> None:
    h = await smtp_gateway({"documents": {"processes": 0}})
    raw = await Raw.open(h.port)
    await raw.cmd("EHLO printer")
    mail = plain_with([("scan.pdf", "application/pdf", b"<html>Session expired</html>\n")])
    replies_heard = await transaction(raw, "alice@example.com", ["0145678900@fax.local"], mail)
    assert replies_heard[-1].startswith("554 5.6.1 scan.pdf: type ")
    assert "the name says .pdf but the content is not a PDF" in replies_heard[-1]
    await raw.close()

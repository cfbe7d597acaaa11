"""The document extractor on realistic mails: which parts are documents, the checks, the fax PDF."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import re
from typing import Any

import pikepdf
import pytest
from PIL import Image

from gateway import replies
from gateway.documents import formats, mime
from gateway.documents.policy import DocumentRefused, Extraction, extract
from gateway.settings import DocumentSettings, SettingsError, from_mapping
from tests.support_docs import A4, image, pdf, pdf_of_size, tnef
from tests.support_mail import CASES, MailCase, forwarded, many_parts, named, nested, outlook_tnef, plain_with

DEFAULT = DocumentSettings()


def outcome(raw: bytes, settings: DocumentSettings = DEFAULT) -> tuple[str, str, Extraction | None]:
    """("fax:<pages>:<types>" | "refuse:<reason>", reply, extraction)."""
    try:
        result = extract(raw, settings)
    except DocumentRefused as exc:
        return f"refuse:{exc.reason}", str(exc.reply), None
    return f"fax:{result.pages}:" + ",".join(d["type"] for d in result.documents), "", result


def page_sizes(document: bytes) -> list[tuple[float, float]]:
    with pikepdf.open(io.BytesIO(document)) as doc:
        return [(round(float(p.mediabox[2]), 2), round(float(p.mediabox[3]), 2)) for p in doc.pages]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_mail_case(case: MailCase) -> None:
    settings = from_mapping({"documents": dict(case.documents)}, {}).documents if case.documents else DEFAULT
    got, reply, result = outcome(case.build(), settings)
    assert got == case.expect, reply
    if result is None:
        assert reply.startswith(case.reply + " "), reply
        for word in case.words:
            assert word in reply, reply
        assert reply.isascii()
    else:
        assert result.doc_type == "pdf"
        assert len(page_sizes(result.document)) == result.pages
        if case.names:
            assert tuple(d["name"] for d in result.documents) == case.names


def test_single_pdf_is_sent_byte_for_byte() -> None:
    document = pdf(3)
    result = extract(plain_with([("scan.pdf", "application/pdf", document)]), DEFAULT)
    assert result.document == document
    assert result.documents == [{"name": "scan.pdf", "type": "pdf", "pages": 3, "bytes": len(document)}]


def test_two_pdfs_and_a_photo_merge_in_mime_order() -> None:
    raw = plain_with([
        ("first.pdf", "application/pdf", pdf(2, (612, 792))),
        ("second.pdf", "application/pdf", pdf(1, (500, 500))),
        ("photo.jpg", "image/jpeg", image("JPEG", (1200, 900), 72)),
    ])
    result = extract(raw, DEFAULT)
    assert [d["name"] for d in result.documents] == ["first.pdf", "second.pdf", "photo.jpg"]
    assert page_sizes(result.document) == [(612.0, 792.0), (612.0, 792.0), (500.0, 500.0), A4]
    assert result.pages == 4


def test_image_page_follows_the_page_size_setting() -> None:
    raw = plain_with([("photo.png", "image/png", image("PNG", (300, 200), 100, mode="RGBA"))])
    assert page_sizes(extract(raw, DEFAULT).document) == [A4]
    letter = dataclasses.replace(DEFAULT, page_size="Letter")
    assert page_sizes(extract(raw, letter).document) == [(612.0, 792.0)]


def test_large_photo_is_shrunk_to_fit_and_small_scan_keeps_its_size() -> None:
    raw = plain_with([
        ("photo.jpg", "image/jpeg", image("JPEG", (4000, 3000), 72)),
        ("stamp.jpg", "image/jpeg", image("JPEG", (200, 100), 200)),
    ])
    with pikepdf.open(io.BytesIO(extract(raw, DEFAULT).document)) as doc:
        for page in doc.pages:
            assert (float(page.mediabox[2]), float(page.mediabox[3])) == pytest.approx(A4)
        drawn = [re.search(rb"([\d.]+) 0 0 ([\d.]+) [\d.]+ [\d.]+ cm", p.Contents.read_bytes()) for p in doc.pages]
        sizes = [(float(m[1]), float(m[2])) for m in drawn if m]
    # The photo (4000 x 3000 at 72 dpi) is shrunk to the page width, keeping its aspect.
    assert sizes[0] == pytest.approx((A4[0], A4[0] * 3 / 4), abs=0.01)
    # The stamp is 1 x 0.5 inch at 200 dpi: drawn at 72 x 36 points, not enlarged.
    assert sizes[1] == pytest.approx((72.0, 36.0))


def test_exact_size_boundary() -> None:
    at_limit = pdf_of_size(1_048_576)
    assert extract(plain_with([("big.pdf", "application/pdf", at_limit)]), DEFAULT).document == at_limit
    # Fitting off: the document is refused as it is (with fitting, its padding would compress away).
    unfitted = dataclasses.replace(DEFAULT, fit="off")
    got, reply, _ = outcome(plain_with([("big.pdf", "application/pdf", pdf_of_size(1_048_577))]), unfitted)
    assert got == "refuse:too-big"
    assert reply == ("552 5.3.4 big.pdf: the fax document is 1048577 bytes, over the limit of 1048576 bytes:"
                     " even one page is over it: scan in black and white at 200 dpi")  # fmt: skip


def test_size_refusal_says_it_is_the_sum_of_several_documents() -> None:
    one = pdf(1)
    limit = len(one) + 50  # each document fits alone, not both together
    raw = plain_with([("a.pdf", "application/pdf", one), ("b.pdf", "application/pdf", one)])
    got, reply, _ = outcome(raw, dataclasses.replace(DEFAULT, max_fax_bytes=limit, fit="off"))
    assert got == "refuse:too-big"
    assert reply.startswith("552 5.3.4 a.pdf and 1 more: the fax document is ")
    assert f"(2 documents together), over the limit of {limit} bytes" in reply
    assert reply.endswith(": scan in black and white at 200 dpi, or send at most 1 page per mail")


def test_pdf_behind_an_application_warning_is_faxed_clean() -> None:
    warning = b"<br />\n<b>Notice</b>:  Undefined index: lang in <b>/srv/app/invoice.php</b> on line <b>12</b><br />\n"
    result = extract(plain_with([("invoice.pdf", "application/pdf", warning + pdf(2))]), DEFAULT)
    assert result.documents[0]["type"] == "pdf"
    assert result.document.startswith(b"%PDF-")
    assert len(page_sizes(result.document)) == 2


def test_an_image_of_exactly_16_pixels_is_a_document() -> None:
    assert outcome(plain_with([("icon.png", "image/png", image("PNG", (16, 16)))]))[0] == "fax:1:png"
    assert outcome(plain_with([("dot.png", "image/png", image("PNG", (15, 15)))]))[0] == "refuse:no-document"


def test_unsupported_parts_can_be_skipped_and_listed() -> None:
    raw = plain_with([("notes.txt", "text/plain", b"call me\n"), ("doc.pdf", "application/pdf", pdf(1))])
    result = extract(raw, dataclasses.replace(DEFAULT, unsupported="skip", convert_types=()))
    assert [d["name"] for d in result.documents] == ["doc.pdf"]
    assert result.skipped == [{"name": "notes.txt", "type": "text/plain", "reason": "type"}]


def test_accepted_types_setting_is_obeyed_and_named() -> None:
    raw = plain_with([("photo.jpg", "image/jpeg", image("JPEG"))])
    got, reply, _ = outcome(raw, dataclasses.replace(DEFAULT, accepted_types=("pdf",)))
    assert got == "refuse:type"
    assert reply == "554 5.6.1 photo.jpg: type image/jpeg cannot be faxed (accepted: PDF); convert it to PDF"


def test_damaged_pdf_and_damaged_image_are_corrupt() -> None:
    got, reply, _ = outcome(plain_with([("x.pdf", "application/pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Cat")]))
    assert got == "refuse:corrupt" and reply.startswith("554 5.6.5 x.pdf: the PDF file cannot be read")
    png = image("PNG", (400, 300))
    got, reply, _ = outcome(plain_with([("y.png", "image/png", png[: len(png) // 2])]))
    assert got == "refuse:corrupt" and reply.startswith("554 5.6.5 y.png: the PNG file cannot be read")


def test_smime_encrypted_mail_is_refused_as_encrypted() -> None:
    envelope = b"0\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x03\xa0\x80" + bytes(100)
    raw = (
        b"From: alice@example.com\r\nTo: 0145678900@fax.local\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(envelope) + b"\r\n"
    )
    got, reply, _ = outcome(raw)
    assert got == "refuse:encrypted"
    assert reply.startswith("554 5.6.5 smime.p7m: the S/MIME document is encrypted")


def test_tnef_holding_a_word_file_names_it() -> None:
    got, reply, _ = outcome(outlook_tnef([("Lettre.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600))]))
    assert got == "refuse:type"
    assert reply.startswith("554 5.6.1 Lettre.doc (in winmail.dat): type ")


def test_tnef_inside_tnef_is_unpacked() -> None:
    inner = tnef([("page.png", image("PNG"))])
    got, _, result = outcome(outlook_tnef([("scan.pdf", pdf(1)), ("Untitled Attachment", inner)]))
    assert got == "fax:2:pdf,png"
    assert result is not None and [d["name"] for d in result.documents] == ["scan.pdf", "page.png"]


def test_names_are_decoded_and_sanitised_for_display() -> None:
    hostile = "../../etc/\u202etxt.exe\x07 facture.pdf"
    raw = named(f'filename="{hostile}"'.encode(), b"MZ" + bytes(100), ctype=b"application/pdf")
    got, reply, _ = outcome(raw)
    assert got == "refuse:type"
    assert reply.startswith("554 5.6.1 txt.exe facture.pdf: type ")
    assert mime.sanitise("C:\\Users\\alice\\Relev\u00e9.pdf") == "Relev\u00e9.pdf"
    assert mime.sanitise("a\u200fb\u2066c\r\nd.pdf") == "a b c d.pdf"
    assert mime.sanitise("..") == ""
    long = mime.sanitise("x" * 300 + ".pdf")
    assert len(long) == 120 and long.endswith("....pdf")


def test_refusal_of_a_non_ascii_name_stays_ascii() -> None:
    raw = named(b"filename*=utf-8''Relev%C3%A9%20de%20compte.docx", b"PK\x03\x04" + bytes(60), ctype=b"application/zip")
    got, reply, _ = outcome(raw)
    assert got == "refuse:type"
    assert reply.startswith("554 5.6.1 Releve de compte.docx: type ")


def test_depth_and_part_limits_are_exact() -> None:
    assert outcome(nested(50))[0] == "fax:1:pdf"
    got, reply, _ = outcome(nested(51))
    assert got == "refuse:limits"
    assert reply == "554 5.6.0 Message too complex to process: MIME parts nested more than 50 deep"
    assert outcome(many_parts(499))[0] == "refuse:no-document"  # 499 text parts + the multipart = 500
    assert outcome(many_parts(500))[0] == "refuse:limits"


@pytest.mark.parametrize("raw", [nested(2000), many_parts(20000)], ids=["nested-2000", "parts-20000"])
def test_hostile_structure_is_refused_before_the_parser_runs(raw: bytes) -> None:
    # The bound is found by the pre-scan of the raw bytes: the stdlib parser
    # (which recurses, and dies near 1,000 levels) never sees such a message.
    with pytest.raises(mime.LimitExceeded):
        mime.prescan(raw, 50, 500)
    got, reply, _ = outcome(raw)
    assert got == "refuse:limits"
    assert reply.startswith("554 5.6.0 ")


@pytest.mark.parametrize("form", [b"boundary*=us-ascii''b%d", b'boundary*0="b"; boundary*1="%d"', b"BOUNDARY = b%d"])
def test_prescan_reads_every_boundary_form_the_parser_reads(form: bytes) -> None:
    raw = nested(2000)
    for i in range(2000):
        raw = raw.replace(b'boundary="b%d"\r\n' % i, form.replace(b"%d", b"%d" % i) + b"\r\n", 1)
    with pytest.raises(mime.LimitExceeded, match="nested more than 50 deep"):
        mime.prescan(raw, 50, 500)


def test_page_and_decoded_byte_limits() -> None:
    raw = plain_with([("a.pdf", "application/pdf", pdf(3))])
    got, reply, _ = outcome(raw, dataclasses.replace(DEFAULT, max_pdf_pages=2))
    assert (got, reply) == ("refuse:limits", "554 5.6.0 Message too complex to process: more than 2 pages")
    got, _, _ = outcome(raw, dataclasses.replace(DEFAULT, max_decoded_bytes=100))
    assert got == "refuse:limits"


def test_extraction_runs_in_parallel_threads() -> None:
    mails = [case for case in CASES if case.id in ("gmail", "mfp-scan-tiff", "exe-renamed-pdf", "two-pdfs-and-photo")]
    raws = [(case, case.build()) for case in mails] * 4
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda item: outcome(item[1])[0], raws))
    assert results == [case.expect for case, _ in raws]


def test_libmagic_decides_the_type_not_the_name() -> None:
    assert formats.sniff(pdf(1)) == "application/pdf"
    raw = plain_with([("photo.gif", "application/octet-stream", image("PNG"))])
    assert outcome(raw)[0] == "fax:1:png"


def test_document_replies_have_matching_classes() -> None:
    table: dict[str, Any] = replies.all_replies()
    for name in ("NO_DOCUMENT", "DOC_TYPE", "DOC_EMPTY", "DOC_ENCODING", "DOC_CORRUPT", "DOC_ENCRYPTED",
                 "DOC_LIMITS", "DOC_TNEF", "DOC_TOO_BIG"):  # fmt: skip
        reply = table[name]
        assert str(reply.code)[0] == reply.enhanced[0] == "5"


def test_depth_setting_is_bounded() -> None:
    with pytest.raises(SettingsError, match=r"documents\.max_mime_depth"):
        from_mapping({"documents": {"max_mime_depth": 201}}, {})


def test_animated_gif_is_one_page_and_rgba_tiff_frames_are_pages() -> None:
    frames = [Image.new("P", (64, 64), i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], transparency=0)
    tiff = io.BytesIO()
    layers = [Image.new("RGBA", (300, 200), (255, 0, 0, 128)) for _ in range(2)]
    layers[0].save(tiff, "TIFF", save_all=True, append_images=layers[1:], dpi=(150, 150))
    raw = plain_with([("anim.gif", "image/gif", gif.getvalue()), ("layers.tif", "image/tiff", tiff.getvalue())])
    result = extract(raw, DEFAULT)
    assert [(d["type"], d["pages"]) for d in result.documents] == [("gif", 1), ("tiff", 2)]
    assert page_sizes(result.document) == [A4, A4, A4]


def test_forward_of_a_forward_is_walked() -> None:
    raw = forwarded(forwarded(plain_with([("deep.pdf", "application/pdf", pdf(2))])))
    got, _, result = outcome(raw)
    assert got == "fax:2:pdf"
    assert result is not None and result.documents[0]["name"] == "deep.pdf"


def test_accepted_types_cannot_be_empty() -> None:
    with pytest.raises(SettingsError, match=r"documents\.accepted_types"):
        from_mapping({"documents": {"accepted_types": []}}, {})

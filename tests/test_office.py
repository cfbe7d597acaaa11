"""Office files and text become faxes: LibreOffice headless for DOCX, ODT, XLSX..., text drawn directly.

Through the real SMTP server with files made in the tests (tests/support_office.py). LibreOffice
starts take a second or two each: the conversions here are few, several documents to one mail.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
from pathlib import Path

import olefile
import pikepdf
import pypdfium2 as pdfium
import pytest

from gateway.documents import cfb, office, textpages
from gateway.documents.formats import Unfit
from tests.support_docs import pdf
from tests.support_mail import plain_with
from tests.support_office import (
    DOC_TYPE,
    DOCX_TYPE,
    EXCEL_TEXT,
    MACRO_RAN,
    ODT_TYPE,
    OPEN_FOR_EDITING,
    WORD_TEXT,
    XLS_TYPE,
    XLSX_TYPE,
    basic_call,
    basic_profile,
    damaged_docx,
    docx,
    encrypted_docx,
    fake_soffice,
    macro_odt,
    odt,
    registry_item,
    run_basic,
    xlsx,
)
from tests.support_smtp import Starter, send_async, spooled_fax
from tests.support_tools import in_ci, need_program

TEXT = "Facture n° 2026-113\n\tMontant dû : 1 250,00 €\nÀ régler avant Noël.\n\fPage deux : reçu.\n"


def pages_of(document: bytes) -> int:
    with pikepdf.open(io.BytesIO(document)) as doc:
        return len(doc.pages)


def texts(document: bytes) -> list[str]:
    """The text of each page of a PDF."""
    doc = pdfium.PdfDocument(document)
    try:
        return [" ".join(doc[i].get_textpage().get_text_range().split()) for i in range(len(doc))]
    finally:
        doc.close()


def ink(document: bytes, index: int) -> float:
    """The share of black pixels on one page of a fax document."""
    doc = pdfium.PdfDocument(document)
    try:
        image = doc[index].render(scale=0.5).to_pil().convert("L")
    finally:
        doc.close()
    dark = sum(image.histogram()[:128])
    return dark / (image.width * image.height)


async def test_docx_odt_xlsx_and_text_become_one_fax(smtp_gateway: Starter) -> None:
    need_program("soffice", "libreoffice-writer-nogui")
    harness = await smtp_gateway()
    raw = plain_with([
        ("Lettre.docx", DOCX_TYPE, docx(3)),
        ("Compte rendu.odt", ODT_TYPE, odt(["Réunion du 3 décembre", "Présents : Léa, Zoé"])),
        ("Tarifs.xlsx", XLSX_TYPE, xlsx([["Article", "Prix"], ["Café", "2,50 €"]])),
        ("notes.txt", "text/plain", TEXT.encode()),
        ("annexe.pdf", "application/pdf", pdf(1)),
    ])  # fmt: skip
    code, text = await send_async(harness.port, raw)
    assert code == 250, text
    document, row = await spooled_fax(harness)
    listed = json.loads(row["documents"])
    assert [(d["name"], d["type"], d["pages"]) for d in listed] == [
        ("Lettre.docx", "docx", 3), ("Compte rendu.odt", "odt", 1), ("Tarifs.xlsx", "xlsx", 1),
        ("notes.txt", "text", 2), ("annexe.pdf", "pdf", 1)]  # fmt: skip
    assert pages_of(document) == row["doc_pages"] == 8
    inked = [ink(document, i) for i in range(7)]
    assert all(share > 0 for share in inked), inked  # every converted page has print on it
    assert ink(document, 7) == 0  # the blank PDF page stays blank


async def test_a_password_protected_or_damaged_docx_is_refused_by_name(smtp_gateway: Starter) -> None:
    need_program("soffice", "libreoffice-writer-nogui")
    harness = await smtp_gateway()
    code, text = await send_async(harness.port, plain_with([("Contrat signé.docx", DOCX_TYPE, encrypted_docx())]))
    assert (code, text) == (554, "5.6.1 Contrat signe.docx: the Word document is protected by a password, which "
                                 "the gateway cannot open; save it without a password, or as PDF, and send it again")
    code, text = await send_async(harness.port, plain_with([("Devis.docx", DOCX_TYPE, damaged_docx())]))
    assert code == 554 and text.startswith("5.6.1 Devis.docx: the Word document cannot be opened (damaged"), text
    assert await harness.jobs() == []


async def test_a_password_protected_doc_or_xls_is_refused_by_name(
    smtp_gateway: Starter, legacy_office_files: dict[str, bytes]
) -> None:
    harness = await smtp_gateway()
    sent = [("Contrat signé.doc", DOC_TYPE, "encrypted doc", "Word document"),
            ("Tarifs.xls", XLS_TYPE, "encrypted xls", "Excel workbook")]  # fmt: skip
    for name, declared, key, what in sent:
        code, text = await send_async(harness.port, plain_with([(name, declared, legacy_office_files[key])]))
        shown = name.replace("é", "e")
        assert (code, text) == (554, f"5.6.1 {shown}: the {what} is protected by a password, which the gateway "
                                     "cannot open; save it without a password, or as PDF, and send it again")
    assert await harness.jobs() == []


async def test_legacy_files_and_a_workbook_under_excels_built_in_password_are_faxed(
    smtp_gateway: Starter, legacy_office_files: dict[str, bytes]
) -> None:
    harness = await smtp_gateway()
    raw = plain_with([("Contrat.doc", DOC_TYPE, legacy_office_files["doc"]),
                      ("Tarifs.xls", XLS_TYPE, legacy_office_files["xls"]),
                      ("Tarifs protégés.xls", XLS_TYPE, legacy_office_files["built-in xls"])])  # fmt: skip
    code, text = await send_async(harness.port, raw)
    assert code == 250, text
    document, row = await spooled_fax(harness)
    assert [(d["type"], d["pages"]) for d in json.loads(row["documents"])] == [("doc", 1), ("xls", 1), ("xls", 1)]
    assert [WORD_TEXT in t for t in texts(document)] == [True, False, False]
    assert [EXCEL_TEXT in t for t in texts(document)] == [False, True, True]


def test_legacy_passwords_are_read_from_the_file(legacy_office_files: dict[str, bytes]) -> None:
    files = legacy_office_files
    assert [office.encrypted_word(files[k]) for k in ("doc", "encrypted doc", "xls", "encrypted xls")] == [
        False, True, False, False]  # fmt: skip
    assert [office.encrypted_workbook(files[k]) for k in ("xls", "encrypted xls", "built-in xls", "encrypted doc")] == [
        False, True, True, False]  # fmt: skip
    # A DOC is refused before LibreOffice runs; an encrypted XLS is LibreOffice's to try (Excel's built-in password).
    assert office.is_encrypted("doc", files["encrypted doc"]) and not office.is_encrypted("doc", files["doc"])
    assert not office.is_encrypted("xls", files["encrypted xls"])
    # Not a compound file, or a damaged one: no password found (LibreOffice then says what it makes of it).
    for data in (b"", docx(1), files["encrypted doc"][:1024], b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600)):
        assert not office.encrypted_word(data) and not office.encrypted_workbook(data)


def test_the_compound_file_reader_reads_what_olefile_reads(legacy_office_files: dict[str, bytes]) -> None:
    # Small streams (in the mini stream) and, in the long document, large ones (in regular sectors).
    for data in legacy_office_files.values():
        ole = olefile.OleFileIO(data)
        names = [path[0] for path in ole.listdir() if len(path) == 1]
        assert "WordDocument" in names or "Workbook" in names
        assert all(cfb.stream(data, n, 10**9) == ole.openstream(n).read() for n in names), names
        assert all(cfb.stream(data, n.lower(), 7) == ole.openstream(n).read()[:7] for n in names)
        assert cfb.stream(data, "NoSuchStream", 10) is None
    long = legacy_office_files["long doc"]
    assert len(cfb.stream(long, "WordDocument", 10**9) or b"") > 4096


def _sector_offset(data: bytes, number: int) -> int:
    return (number + 1) * (1 << struct.unpack_from("<H", data, 0x1E)[0])


def test_a_damaged_compound_file_is_damage_not_an_endless_read(legacy_office_files: dict[str, bytes]) -> None:
    data = legacy_office_files["long doc"]
    entry = next(e for e in olefile.OleFileIO(data).root.kids if e.name == "WordDocument")
    start = entry.isectStart
    assert entry.size >= 4096  # in regular sectors, chained by the allocation table
    # The allocation table sends the stream's first sector to itself: a loop.
    fat_sector = struct.unpack_from("<I", data, 0x4C + (start // 128) * 4)[0]
    looped = bytearray(data)
    struct.pack_into("<I", looped, _sector_offset(data, fat_sector) + (start % 128) * 4, start)
    with pytest.raises(cfb.Damaged, match="loops"):
        cfb.stream(bytes(looped), "WordDocument", 10**9)
    assert cfb.stream(bytes(looped), "WordDocument", 12) == data[_sector_offset(data, start):][:12]
    # The root's first child is its own left sibling: the directory is no tree.
    directory = _sector_offset(data, struct.unpack_from("<I", data, 0x30)[0])
    child = struct.unpack_from("<I", data, directory + 76)[0]
    cyclic = bytearray(data)
    struct.pack_into("<I", cyclic, directory + child * 128 + 68, child)
    with pytest.raises(cfb.Damaged, match="not a tree"):
        cfb.stream(bytes(cyclic), "NoSuchStream", 10)
    with pytest.raises(cfb.Damaged, match="past the end"):
        cfb.stream(data[: len(data) // 2], "WordDocument", 10**9)
    with pytest.raises(cfb.Damaged, match="not a compound file"):
        cfb.stream(docx(1), "WordDocument", 12)


SCRIPTING = "/org.openoffice.Office.Common/Security/Scripting"


def _shown(value: str | tuple[str, ...]) -> str:
    """A setting's value as the Basic of OPEN_FOR_EDITING reports it."""
    return "[" + " ".join(value) + "]" if isinstance(value, tuple) else value


async def test_a_document_macro_runs_where_libreoffice_allows_it_and_never_in_the_gateway(
    smtp_gateway: Starter, tmp_path: Path
) -> None:
    need_program("soffice", "libreoffice-writer-nogui")
    marker, folder = tmp_path / "macro-ran", tmp_path / "documents"
    folder.mkdir()
    source = folder / "Compte rendu.odt"
    source.write_bytes(macro_odt(marker, "Compte rendu du 3 décembre"))
    # 1. The same LibreOffice, without the gateway's profile (macro security "low"), opening the document as a
    #    person would: the macro runs, leaves its file, and the PDF says so. The document's macro is live.
    allowing = tmp_path / "allowing"
    basic_profile(allowing, OPEN_FOR_EDITING, [registry_item(SCRIPTING, "MacroSecurityLevel", "0")])
    await asyncio.to_thread(run_basic, allowing, [basic_call("Export", str(source), str(tmp_path / "allowed.pdf"))])
    assert "OnViewCreated" in marker.read_text().split()
    assert texts((tmp_path / "allowed.pdf").read_bytes()) == [MACRO_RAN]
    marker.unlink()
    # 2. The same, in the profile the gateway writes, the document's folder even made a trusted location
    #    (where "very high" security alone would let its macros run): nothing runs. LibreOffice holds each of
    #    the gateway's settings as written (a setting it did not know would be silently ignored).
    walls = {(SCRIPTING, "MacroSecurityLevel", "3"), (SCRIPTING, "SecureURL", ()),
             (SCRIPTING, "DisableMacrosExecution", "true"), (SCRIPTING, "AllowedDocumentEventURLs", ())}  # fmt: skip
    # Three walls, each enough for this macro: "very high" security with no trusted location, no macro
    # execution at all, no script callable from a document event.
    assert walls <= set(office.PROFILE_SETTINGS)
    hardened = tmp_path / "hardened"
    office.write_profile(hardened)
    basic_profile(hardened, OPEN_FOR_EDITING, [registry_item(SCRIPTING, "SecureURL", f"<it>{folder.as_uri()}</it>")])
    wanted = ";".join(f"{path}|{name}" for path, name, _ in office.PROFILE_SETTINGS if name != "SecureURL")
    calls = [basic_call("Export", str(source), str(tmp_path / "hardened.pdf")),
             basic_call("Settings", str(tmp_path / "settings"), wanted)]  # fmt: skip
    await asyncio.to_thread(run_basic, hardened, calls)
    assert texts((tmp_path / "hardened.pdf").read_bytes()) == ["Compte rendu du 3 décembre"]
    assert not marker.exists()
    assert (tmp_path / "settings").read_text().splitlines() == [
        f"{path}|{name}={_shown(value)}" for path, name, value in office.PROFILE_SETTINGS if name != "SecureURL"]
    # 3. The gateway's own conversion of the same document: faxed as written, and the macro never ran.
    harness = await smtp_gateway()
    code, text = await send_async(harness.port, plain_with([("Compte rendu.odt", ODT_TYPE, source.read_bytes())]))
    assert code == 250, text
    document, _ = await spooled_fax(harness)
    assert texts(document) == ["Compte rendu du 3 décembre"]
    assert not marker.exists()


async def test_office_off_or_missing_says_what_turns_it_on(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"office": "off"}})
    code, text = await send_async(harness.port, plain_with([("Lettre.docx", DOCX_TYPE, docx(1))]))
    assert code == 554 and text.startswith("5.6.1 Lettre.docx: the gateway faxes a file of this type (Word "
                                           "document) only once it converts it with LibreOffice"), text
    assert 'documents.office = "off"' in text and text.endswith("convert it to PDF and send it again")
    # Text needs no LibreOffice: it is still faxed.
    assert (await send_async(harness.port, plain_with([("notes.txt", "text/plain", TEXT.encode())])))[0] == 250


async def test_a_missing_libreoffice_names_the_packages(smtp_gateway: Starter) -> None:
    harness = await smtp_gateway({"documents": {"office_program": "no-such-soffice"}})
    code, text = await send_async(harness.port, plain_with([("Tarifs.xlsx", XLSX_TYPE, xlsx([["a"]]))]))
    assert code == 554 and text.startswith("5.6.1 Tarifs.xlsx: the gateway faxes a file of this type (Excel workbook)")
    assert "LibreOffice (no-such-soffice) is not installed" in text, text
    assert "libreoffice-writer-nogui libreoffice-calc-nogui" in text


async def test_a_conversion_over_its_time_bound_is_killed_with_its_children(
    smtp_gateway: Starter, tmp_path: Path
) -> None:
    hang = fake_soffice(tmp_path, "hang")
    harness = await smtp_gateway({"documents": {"office_program": str(hang), "convert_timeout_seconds": 2.5}})
    code, text = await send_async(harness.port, plain_with([("Lettre.docx", DOCX_TYPE, docx(1))]))
    assert (code, text) == (554, "5.6.0 Message too complex to process: converting it took longer than 2.5 s "
                                 "(documents.convert_timeout_seconds)")
    child = int((tmp_path / "child.pid").read_text())
    # The whole process group was killed and reaped: the child is gone, or a zombie its init has yet to reap.
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


async def test_an_exit_code_of_zero_without_a_pdf_is_a_refusal(smtp_gateway: Starter, tmp_path: Path) -> None:
    nothing = fake_soffice(tmp_path, "nothing")
    harness = await smtp_gateway({"documents": {"office_program": str(nothing)}})
    code, text = await send_async(harness.port, plain_with([("Lettre.docx", DOCX_TYPE, docx(1))]))
    assert code == 554 and text.startswith("5.6.1 Lettre.docx: the Word document cannot be opened"), text


def test_text_is_monospace_utf8_with_form_feeds_as_page_breaks() -> None:
    data, pages = textpages.text_pdf(TEXT.encode(), "A4", 200)
    assert pages == 2
    lines = [line.text for line in textpages.text_lines(TEXT, 80)]
    assert lines[:3] == ["Facture n° 2026-113", "        Montant dû : 1 250,00 €", "À régler avant Noël."]
    assert lines[4:6] == ["\f", "Page deux : reçu."]
    # Monospace: the columns line up whatever the letters.
    layout = textpages.Layout("A4")
    font = layout.font("mono", textpages.TEXT_POINTS)
    assert font.getlength("iiii") == font.getlength("WWWW") == font.getlength("éàçû")
    assert 78 <= layout.columns() <= 90
    # Windows-1252 text (no UTF-8) reads as such; a long line goes on below.
    assert textpages.decode("Noël à 5 €".encode("cp1252")) == "Noël à 5 €"
    assert [line.text for line in textpages.text_lines("x" * 170, 80)] == ["x" * 80, "x" * 80, "x" * 10]
    with pytest.raises(Unfit, match="documents.max_pdf_pages"):
        textpages.text_pdf(b"page\f" * 30, "A4", 20)


def test_the_font_is_dejavu_when_installed() -> None:
    found = textpages.font_file("mono")
    if found is None:  # .ci/run installs it: under CI=true its absence fails
        why = "fonts-dejavu-core is not installed (apt-get install fonts-dejavu-core): Pillow's own font is used"
        pytest.fail(why) if in_ci() else pytest.skip(why)
    assert found is not None and os.path.basename(found) == "DejaVuSansMono.ttf"

"""Office documents made on the spot (minimal OOXML and ODF packages written by hand), and stand-ins for soffice.

DOCX, XLSX and ODT hold just the parts LibreOffice needs; a password-protected DOCX is a real
one encrypted by msoffcrypto-tool (ECMA-376 agile encryption, as Word does). ``fake_soffice``
writes a shell script that behaves like a broken LibreOffice (hangs with a child, or exits 0
having written nothing), for the time bound and the output check.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
_DOC = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
_SHEET_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ODT_TYPE = "application/vnd.oasis.opendocument.text"


def _zip(entries: list[tuple[str, str]], *, stored_first: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i, (name, text) in enumerate(entries):
            kind = zipfile.ZIP_STORED if stored_first and i == 0 else zipfile.ZIP_DEFLATED
            z.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), text.encode("utf-8"), compress_type=kind)
    return out.getvalue()


def docx(pages: int = 1, text: str = "Page {n}: déjà vu, à bientôt, Noël") -> bytes:
    """A Word document of ``pages`` pages (hard page breaks), each a line of ``text`` (``{n}``: its number)."""
    paragraphs = []
    for n in range(1, pages + 1):
        if n > 1:
            paragraphs.append('<w:p><w:r><w:br w:type="page"/></w:r></w:p>')
        line = escape(text.format(n=n))
        paragraphs.append(f'<w:p><w:r><w:t xml:space="preserve">{line}</w:t></w:r></w:p>')
    return _zip([
        ("[Content_Types].xml", f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
         '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
         '<Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" '
         'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'),
        ("_rels/.rels", f'{_XML}<Relationships xmlns="{_RELS}"><Relationship Id="rId1" Type="{_DOC}" '
         'Target="word/document.xml"/></Relationships>'),
        ("word/document.xml", f'{_XML}<w:document xmlns:w="{_W}"><w:body>{"".join(paragraphs)}</w:body></w:document>'),
    ])  # fmt: skip


def xlsx(rows: list[list[str]]) -> bytes:
    """An Excel workbook of one sheet holding ``rows`` (inline strings)."""
    cells = "".join(
        f'<row r="{r}">' + "".join(f'<c r="{chr(65 + c)}{r}" t="inlineStr"><is><t>{escape(v)}</t></is></c>'
                                   for c, v in enumerate(row)) + "</row>"
        for r, row in enumerate(rows, start=1)
    )  # fmt: skip
    sheet_rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"
    return _zip([
        ("[Content_Types].xml", f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
         '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
         '<Default Extension="xml" ContentType="application/xml"/>'
         '<Override PartName="/xl/workbook.xml" '
         'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
         '<Override PartName="/xl/worksheets/sheet1.xml" '
         'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'),
        ("_rels/.rels", f'{_XML}<Relationships xmlns="{_RELS}"><Relationship Id="rId1" Type="{_DOC}" '
         'Target="xl/workbook.xml"/></Relationships>'),
        ("xl/workbook.xml", f'{_XML}<workbook xmlns="{_SHEET_NS}" xmlns:r="http://schemas.openxmlformats.org/'
         'officeDocument/2006/relationships"><sheets><sheet name="Tarifs" sheetId="1" r:id="rId1"/></sheets>'
         '</workbook>'),
        ("xl/_rels/workbook.xml.rels", f'{_XML}<Relationships xmlns="{_RELS}"><Relationship Id="rId1" '
         f'Type="{sheet_rel}" Target="worksheets/sheet1.xml"/></Relationships>'),
        ("xl/worksheets/sheet1.xml", f'{_XML}<worksheet xmlns="{_SHEET_NS}"><sheetData>{cells}</sheetData>'
         '</worksheet>'),
    ])  # fmt: skip


def odt(paragraphs: list[str]) -> bytes:
    """An OpenDocument text of ``paragraphs`` (its ``mimetype`` entry first and stored, as ODF requires)."""
    body = "".join(f"<text:p>{escape(p)}</text:p>" for p in paragraphs)
    return _zip([
        ("mimetype", ODT_TYPE),
        ("META-INF/manifest.xml", f'{_XML}<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:'
         'xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry manifest:full-path="/" '
         f'manifest:media-type="{ODT_TYPE}"/><manifest:file-entry manifest:full-path="content.xml" '
         'manifest:media-type="text/xml"/></manifest:manifest>'),
        ("content.xml", f'{_XML}<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:'
         'office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
         f"<office:body><office:text>{body}</office:text></office:body></office:document-content>"),
    ], stored_first=True)  # fmt: skip


def encrypted_docx(password: str = "secret") -> bytes:
    """A real password-protected Word document (what Word saves with "Encrypt with Password")."""
    from msoffcrypto.format.ooxml import OOXMLFile

    out = io.BytesIO()
    OOXMLFile(io.BytesIO(docx(1))).encrypt(password, out)
    return out.getvalue()


def damaged_docx() -> bytes:
    """A DOCX package (libmagic still calls it one) whose document part is not XML at all."""
    good = zipfile.ZipFile(io.BytesIO(docx(1)))
    entries = [(n, good.read(n).decode()) for n in good.namelist()]
    return _zip([(n, "\x00\x01 not xml <<<" if n == "word/document.xml" else t) for n, t in entries])


def fake_soffice(directory: Path, behaviour: str) -> Path:
    """A stand-in for soffice: ``"hang"`` (starts a child that sleeps, records its pid, waits) or ``"nothing"``
    (exits 0 at once, having written no PDF, as LibreOffice does on some failures)."""
    script = directory / f"soffice-{behaviour}"
    pidfile = directory / "child.pid"
    if behaviour == "hang":
        body = f"sleep 300 &\necho $! > {pidfile}\nwait\n"
    else:
        body = "echo 'convert document -> document.pdf using filter : writer_pdf_Export'\nexit 0\n"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script

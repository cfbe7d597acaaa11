"""Office documents made on the spot (minimal OOXML and ODF packages written by hand), and stand-ins for soffice.

DOCX, XLSX and ODT hold just the parts LibreOffice needs; a password-protected DOCX is a real
one encrypted by msoffcrypto-tool (ECMA-376 agile encryption, as Word does). ``fake_soffice``
writes a shell script that behaves like a broken LibreOffice (hangs with a child, or exits 0
having written nothing), for the time bound and the output check.

Word and Excel 97-2003 files, with and without a password, are made by the real LibreOffice
(``legacy_office_files``, made once for all the tests): a Basic macro of a profile made for it
(:func:`basic_profile`, :func:`run_basic`) saves new documents with ``storeToURL`` and a ``Password``,
as "Save with password" does. The same way, :data:`OPEN_FOR_EDITING` loads a document as a person
opening it would (in a view, its macros run as the profile's settings say) and exports it as PDF,
and reads back the settings LibreOffice holds: with :func:`macro_odt`, whose Basic macro leaves a
file and changes the text when it runs, the tests show where LibreOffice runs a document's macros.
"""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from tests.support_tools import need_program

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
_DOC = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
_SHEET_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ODT_TYPE = "application/vnd.oasis.opendocument.text"
DOC_TYPE = "application/msword"
XLS_TYPE = "application/vnd.ms-excel"


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


# -- LibreOffice driven by a Basic macro of its own profile ---------------------------------------

_LIBRARIES = ('<?xml version="1.0" encoding="UTF-8"?><library:libraries xmlns:library="http://openoffice.org/2000/'
              'library" xmlns:xlink="http://www.w3.org/1999/xlink"><library:library library:name="Standard" '
              'library:link="false"/></library:libraries>')  # fmt: skip
_LIBRARY = ('<?xml version="1.0" encoding="UTF-8"?><library:library xmlns:library="http://openoffice.org/2000/library"'
            ' library:name="Standard" library:readonly="false" library:passwordprotected="false">{elements}'
            "</library:library>")  # fmt: skip
_MODULE = ('<?xml version="1.0" encoding="UTF-8"?><script:module xmlns:script="http://openoffice.org/2000/script" '
           'script:name="Module1" script:language="StarBasic">{code}</script:module>')  # fmt: skip
_ITEMS = ('<?xml version="1.0" encoding="UTF-8"?>\n<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
          'xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
          "</oor:items>\n")  # fmt: skip
# Set: the profile is taken as installed, so the first start does not copy the default Basic library over ours.
_INSTALLED = ('<item oor:path="/org.openoffice.Setup/Office"><prop oor:name="ooSetupInstCompleted" oor:op="fuse">'
              "<value>true</value></prop></item>")  # fmt: skip


def registry_item(path: str, name: str, value: str) -> str:
    """One setting of a LibreOffice profile (``registrymodifications.xcu``)."""
    return f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse"><value>{value}</value></prop></item>'


def basic_profile(profile: Path, code: str, items: Sequence[str] = ()) -> None:
    """Make ``profile`` a LibreOffice user profile whose Basic ``Standard.Module1`` is ``code``, with ``items``
    (:func:`registry_item`) added to the settings its ``registrymodifications.xcu`` holds already, if any."""
    user = profile / "user"
    (user / "basic" / "Standard").mkdir(parents=True, exist_ok=True)
    for name in ("script.xlc", "dialog.xlc"):
        (user / "basic" / name).write_text(_LIBRARIES, encoding="utf-8")
    (user / "basic" / "Standard" / "script.xlb").write_text(
        _LIBRARY.format(elements='<library:element library:name="Module1"/>'), encoding="utf-8")
    (user / "basic" / "Standard" / "dialog.xlb").write_text(_LIBRARY.format(elements=""), encoding="utf-8")
    (user / "basic" / "Standard" / "Module1.xba").write_text(_MODULE.format(code=escape(code)), encoding="utf-8")
    settings = user / "registrymodifications.xcu"
    text = settings.read_text(encoding="utf-8") if settings.exists() else _ITEMS
    added = "\n".join([_INSTALLED, *items]) + "\n"
    settings.write_text(text.replace("</oor:items>", added + "</oor:items>"), encoding="utf-8")


def basic_call(sub: str, *args: str) -> str:
    """The command-line form of a call to ``Standard.Module1.<sub>`` with string arguments."""
    quoted = ",".join('"' + a.replace('"', '""') + '"' for a in args)
    return f"macro:///Standard.Module1.{sub}({quoted})"


def run_basic(profile: Path, calls: Sequence[str], seconds: float = 60.0) -> str:
    """Run ``calls`` (:func:`basic_call`) in a LibreOffice of ``profile``, killed with its children past ``seconds``;
    what it said. The macros' work is theirs to check (a file written, a document saved)."""
    soffice = need_program("soffice", "libreoffice-writer-nogui")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(profile), "LANG": "C.UTF-8",
           "SAL_USE_VCLPLUGIN": "svp"}  # fmt: skip
    command = ["timeout", "-s", "KILL", f"{seconds:g}", soffice, "--headless", "--norestore", "--nologo",
               "--nodefault", "--nolockcheck", f"-env:UserInstallation={profile.as_uri()}", *calls]  # fmt: skip
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=seconds + 10,
                          start_new_session=True)  # fmt: skip
    said = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode != -9 and done.returncode != 137, f"LibreOffice ran past {seconds:g} s:\n{said}"
    return said


# Saves a new Writer or Calc document holding one line of text with a filter and, unless empty, a password.
_SAVE_WITH_PASSWORD = """
Sub Save(sFactory As String, sFilter As String, sText As String, sOut As String, sPassword As String)
  Dim aLoad(0) As New com.sun.star.beans.PropertyValue
  aLoad(0).Name = "Hidden"
  aLoad(0).Value = True
  oDoc = StarDesktop.loadComponentFromURL("private:factory/" & sFactory, "_blank", 0, aLoad())
  If sFactory = "swriter" Then
    oDoc.Text.String = sText
  Else
    oDoc.Sheets.getByIndex(0).getCellByPosition(0, 0).String = sText
  End If
  Dim aPlain(0) As New com.sun.star.beans.PropertyValue
  aPlain(0).Name = "FilterName"
  aPlain(0).Value = sFilter
  Dim aLocked(1) As New com.sun.star.beans.PropertyValue
  aLocked(0) = aPlain(0)
  aLocked(1).Name = "Password"
  aLocked(1).Value = sPassword
  If sPassword = "" Then
    oDoc.storeToURL(ConvertToURL(sOut), aPlain())
  Else
    oDoc.storeToURL(ConvertToURL(sOut), aLocked())
  End If
  oDoc.close(True)
End Sub
"""
# Excel's built-in password: a workbook encrypted with it opens without asking.
EXCEL_BUILT_IN_PASSWORD = "VelvetSweatshop"
WORD_TEXT, EXCEL_TEXT = "Contrat de maintenance 2026", "Tarifs 2026"
# A text long enough for the WordDocument stream to be in regular sectors, not in the mini stream (4096 bytes).
LONG_TEXT = " ".join(f"Article {n} : le prestataire intervient sous quatre heures." for n in range(400))
# name -> (factory, filter, file name, password)
_LEGACY = {
    "doc": ("swriter", "MS Word 97", "plain.doc", ""),
    "long doc": ("swriter", "MS Word 97", "long.doc", ""),
    "encrypted doc": ("swriter", "MS Word 97", "secret.doc", "secret"),
    "xls": ("scalc", "MS Excel 97", "plain.xls", ""),
    "encrypted xls": ("scalc", "MS Excel 97", "secret.xls", "secret"),
    "built-in xls": ("scalc", "MS Excel 97", "built-in.xls", EXCEL_BUILT_IN_PASSWORD),
}


@pytest.fixture(scope="session")
def legacy_office_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Word and Excel 97-2003 files LibreOffice saved: ``doc``, ``long doc`` (:data:`LONG_TEXT`), ``xls``,
    ``encrypted doc``, ``encrypted xls`` (password "secret") and ``built-in xls`` (Excel's built-in password)."""
    directory = tmp_path_factory.mktemp("legacy-office")
    profile = directory / "profile"
    basic_profile(profile, _SAVE_WITH_PASSWORD)
    texts = {"long.doc": LONG_TEXT, "swriter": WORD_TEXT, "scalc": EXCEL_TEXT}
    calls = [basic_call("Save", factory, filter_name, texts.get(name, texts[factory]), str(directory / name), password)
             for factory, filter_name, name, password in _LEGACY.values()]
    said = run_basic(profile, calls)
    missing = [name for _, _, name, _ in _LEGACY.values() if not (directory / name).is_file()]
    assert not missing, f"LibreOffice did not save {missing}:\n{said}"
    return {key: (directory / name).read_bytes() for key, (_, _, name, _) in _LEGACY.items()}


# -- a document whose macro shows that it ran ---------------------------------------------------

MACRO_RAN = "MACRO RAN"
# The document events a macro is bound to: all those that come with opening and exporting a document
# (OnLoad, OnNew, OnLoadFinished, OnViewCreated, OnFocus, OnLayoutFinished, OnCopyTo, OnCopyToDone), in ODF's names.
MACRO_EVENTS = ("dom:load", "office:new", "office:load-finished", "office:view-created", "dom:DOMFocusIn",
                "office:layout-finished", "office:copy-to", "office:copy-to-done")  # fmt: skip


def macro_odt(marker: Path, text: str) -> bytes:
    """An OpenDocument text of one paragraph, ``text``, with a Basic library whose macro, bound to each of
    :data:`MACRO_EVENTS`, appends the event's name to ``marker`` and makes the text :data:`MACRO_RAN`."""
    code = f"""Sub Fire(Optional oEvent)
  n = FreeFile
  Open "{marker}" For Append As #n
  If IsMissing(oEvent) Then
    Print #n, "(no event)"
  Else
    Print #n, oEvent.EventName
  End If
  Close #n
  ThisComponent.Text.String = "{MACRO_RAN}"
End Sub
"""
    script = "vnd.sun.star.script:Standard.Module1.Fire?language=Basic&amp;location=document"
    listeners = "".join(f'<script:event-listener script:language="ooo:script" script:event-name="{event}" '
                        f'xlink:href="{script}" xlink:type="simple"/>' for event in MACRO_EVENTS)  # fmt: skip
    files = ["content.xml", "Basic/script-lc.xml", "Basic/Standard/script-lb.xml", "Basic/Standard/Module1.xml"]
    manifest = "".join(f'<manifest:file-entry manifest:full-path="{f}" manifest:media-type="text/xml"/>' for f in files)
    return _zip([
        ("mimetype", ODT_TYPE),
        ("META-INF/manifest.xml", f'{_XML}<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:'
         'xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry manifest:full-path="/" '
         f'manifest:media-type="{ODT_TYPE}"/>{manifest}</manifest:manifest>'),
        # dom: must be declared: an event's name is a qualified name, and one of an unknown prefix binds nothing.
        ("content.xml", f'{_XML}<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:'
         'office:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:script="urn:oasis:names:'
         'tc:opendocument:xmlns:script:1.0" xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:ooo="http://'
         'openoffice.org/2004/office" xmlns:dom="http://www.w3.org/2001/xml-events" office:version="1.2">'
         f"<office:scripts><office:event-listeners>{listeners}</office:event-listeners></office:scripts>"
         f"<office:body><office:text><text:p>{escape(text)}</text:p></office:text></office:body>"
         "</office:document-content>"),
        ("Basic/script-lc.xml", _LIBRARIES),
        ("Basic/Standard/script-lb.xml", _LIBRARY.format(elements='<library:element library:name="Module1"/>')),
        ("Basic/Standard/Module1.xml", _MODULE.format(code=escape(code))),
    ], stored_first=True)  # fmt: skip


# Export: the document loaded as a person opening it (a view; its macros as the profile's settings say, the
# MacroExecutionMode USE_CONFIG), saved as PDF. Settings: "path|name" pairs (";" between) and the values
# LibreOffice holds, one "path|name=value" a line (lists as [a b], "(missing)" for a setting it does not have).
OPEN_FOR_EDITING = """
Sub Export(sIn As String, sOut As String)
  Dim aLoad(0) As New com.sun.star.beans.PropertyValue
  aLoad(0).Name = "MacroExecutionMode"
  aLoad(0).Value = com.sun.star.document.MacroExecMode.USE_CONFIG
  oDoc = StarDesktop.loadComponentFromURL(ConvertToURL(sIn), "_blank", 0, aLoad())
  Dim aStore(0) As New com.sun.star.beans.PropertyValue
  aStore(0).Name = "FilterName"
  aStore(0).Value = "writer_pdf_Export"
  oDoc.storeToURL(ConvertToURL(sOut), aStore())
  oDoc.close(True)
End Sub

Sub Settings(sOut As String, sWanted As String)
  oProvider = createUnoService("com.sun.star.configuration.ConfigurationProvider")
  n = FreeFile
  Open sOut For Output As #n
  For Each sItem In Split(sWanted, ";")
    aPart = Split(sItem, "|")
    Print #n, sItem & "=" & Shown(oProvider, aPart(0), aPart(1))
  Next
  Close #n
End Sub

Function Shown(oProvider, sPath As String, sName As String) As String
  On Error GoTo Missing
  Dim aArg(0) As New com.sun.star.beans.PropertyValue
  aArg(0).Name = "nodepath"
  aArg(0).Value = sPath
  oAccess = oProvider.createInstanceWithArguments("com.sun.star.configuration.ConfigurationAccess", aArg())
  v = oAccess.getByName(sName)
  If IsArray(v) Then
    Shown = "[" & Join(v, " ") & "]"
  Else
    Shown = LCase(CStr(v))
  End If
  Exit Function
Missing:
  Shown = "(missing)"
End Function
"""

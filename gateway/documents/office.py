"""Office documents as PDF: LibreOffice headless, one conversion per process, bounded.

In: the bytes of a DOCX, DOC, ODT, RTF, XLSX, XLS or ODS file (its kind told by libmagic), the
document settings and the examination's deadline. Out: the PDF LibreOffice made of it, or
``formats.Unfit`` (``encrypted``: a password protects it; ``corrupt``: LibreOffice made nothing
of it; ``limits``: the time bound passed), or :class:`Busy` (no conversion slot free in time).

How a conversion runs (``documents.office = "auto"``: when ``documents.office_program`` is found):

- one ``soffice --headless --convert-to pdf`` per document, with a user profile of its own made
  fresh in a temporary directory (removed afterwards) whose settings never run macros
  (:data:`PROFILE_SETTINGS`: security level "very high" with no trusted location, macro execution
  disabled, no script callable from a document event, VBA not loaded) and never fetch linked
  content; the input filter is forced from the kind libmagic found, so a file is never read as
  another type. (``--convert-to`` itself loads the document hidden and without leave to run its
  macros: the profile is the second wall, for a document LibreOffice would otherwise let run them;
  tests/test_office.py shows a macro that runs where LibreOffice allows it, and runs in neither);
- under ``timeout -s KILL`` in a session of its own: at the examination's deadline
  (``documents.convert_timeout_seconds``) its whole process group is killed, by us and, should the
  worker die first, by ``timeout`` itself; its address space is the worker's (``RLIMIT_AS``);
- at most ``documents.office_concurrency`` at once on the machine, over every worker process
  (lock files taken with ``flock``; a slot is waited for at most ``documents.queue_seconds``);
- LibreOffice exits 0 on some failures: the output is checked (a PDF pikepdf opens, with pages),
  never the exit code.

Password-protected files are found before LibreOffice sees them: an OOXML file encrypted in a CDF
container; an ODF package whose manifest holds encryption data; a Word 97-2003 document whose File
Information Block says it is encrypted (``fEncrypted``, [MS-DOC]). An Excel 97-2003 workbook with
a ``FILEPASS`` record ([MS-XLS]) is encrypted too, but Excel encrypts some workbooks
(protected sheets or structure) with its built-in password, which opens them without asking, and
LibreOffice knows it: such a workbook is converted as any other, and only when LibreOffice makes
nothing of it is the reason the password rather than damage. Blocking: runs in the document
worker processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pikepdf

from gateway.documents import cfb
from gateway.documents.formats import Unfit
from gateway.documents.outcomes import Busy as Busy
from gateway.settings import DocumentSettings

log = logging.getLogger("gateway.documents")

# libmagic MIME type -> the Office kind it is.
KINDS = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/msword": "doc",
    "application/vnd.oasis.opendocument.text": "odt",
    "text/rtf": "rtf",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
}
# Kind -> (file extension, LibreOffice input filter, what a person calls it).
FILTERS = {
    "docx": ("docx", "MS Word 2007 XML", "Word document"),
    "doc": ("doc", "MS Word 97", "Word document"),
    "odt": ("odt", "writer8", "OpenDocument text"),
    "rtf": ("rtf", "Rich Text Format", "RTF document"),
    "xlsx": ("xlsx", "Calc MS Excel 2007 XML", "Excel workbook"),
    "xls": ("xls", "MS Excel 97", "Excel workbook"),
    "ods": ("ods", "calc8", "OpenDocument spreadsheet"),
}
# What libmagic calls an OOXML file encrypted with a password (a CDF container).
ENCRYPTED = "application/encrypted"
# The Debian packages that provide LibreOffice headless, for the refusal when it is missing.
PACKAGES = "libreoffice-writer-nogui libreoffice-calc-nogui"
# The longest wait for a conversion slot polls this often.
SLOT_POLL_SECONDS = 0.05
# A conversion given less time than this is not started (it could not finish).
MIN_SECONDS = 1.0

# The fresh profile's settings (registry path, name, value; a tuple is a list), each said even where it is
# LibreOffice's default, so that no default decides. Macros never run: none is trusted, none may run at
# any level, no document event may call a script (an empty list; unset, any may), the VBA of Word and
# Excel files is neither read nor runnable. Links to other files or the network are never followed
# (links never updated: Writer's mode 0, Calc's mode 1). No lock files beside the document.
_SCRIPTING = "/org.openoffice.Office.Common/Security/Scripting"
PROFILE_SETTINGS: tuple[tuple[str, str, str | tuple[str, ...]], ...] = (
    (_SCRIPTING, "MacroSecurityLevel", "3"),  # "very high": only macros of trusted locations...
    (_SCRIPTING, "SecureURL", ()),  # ...and there are none
    (_SCRIPTING, "DisableMacrosExecution", "true"),  # no macro at all, whatever the level
    (_SCRIPTING, "AllowedDocumentEventURLs", ()),
    (_SCRIPTING, "BlockUntrustedRefererLinks", "true"),
    ("/org.openoffice.Office.Writer/Filter/Import/VBA", "Load", "false"),
    ("/org.openoffice.Office.Writer/Filter/Import/VBA", "Executable", "false"),
    ("/org.openoffice.Office.Calc/Filter/Import/VBA", "Load", "false"),
    ("/org.openoffice.Office.Calc/Filter/Import/VBA", "Executable", "false"),
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "0"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "1"),
    ("/org.openoffice.Office.Common/Misc", "UseLocking", "false"),
)


def write_profile(profile: Path) -> Path:
    """Make ``profile`` a LibreOffice user profile holding :data:`PROFILE_SETTINGS`; its settings file."""
    items = []
    for path, name, value in PROFILE_SETTINGS:
        shown = "".join(f"<it>{v}</it>" for v in value) if isinstance(value, tuple) else value
        items.append(f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse"><value>{shown}</value></prop>'
                     "</item>\n")  # fmt: skip
    settings = profile / "user" / "registrymodifications.xcu"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<oor:items xmlns:oor="http://openoffice.org/2001/'
                        'registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/'
                        'XMLSchema-instance">\n' + "".join(items) + "</oor:items>\n", encoding="utf-8")  # fmt: skip
    return settings




def program(settings: DocumentSettings) -> str | None:
    """The LibreOffice program to run, or None when conversion is off or LibreOffice is not installed."""
    if settings.office == "off":
        return None
    return shutil.which(settings.office_program)


def unavailable(settings: DocumentSettings) -> str:
    """Why Office files are not converted, and what turns it on (for the refusal)."""
    if settings.office == "off":
        return 'the gateway has it off (documents.office = "off"; "auto" turns it on)'
    return (f"LibreOffice ({settings.office_program}) is not installed on the gateway "
            f"(Debian packages {PACKAGES})")  # fmt: skip


def is_encrypted(kind: str, data: bytes) -> bool:
    """Whether a password protects the file (seen without LibreOffice)."""
    if kind in ("odt", "ods"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                manifest = z.read("META-INF/manifest.xml") if "META-INF/manifest.xml" in z.namelist() else b""
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
            return False
        return b"encryption-data" in manifest[:10_000_000]
    if kind == "doc":
        return encrypted_word(data)
    return False


# The File Information Block's first bytes: its magic number (Word 97-2003, Word 6/95), and at 0x0A the
# flags, of which fEncrypted (with fObfuscated, XOR instead of RC4: a password either way).
_WORD_IDENTS = (0xA5EC, 0xA5DC)
_WORD_ENCRYPTED = 0x0100
# BIFF records: BOF, EOF, FILEPASS; FILEPASS follows BOF within the first records of the globals.
_BOF, _EOF, _FILEPASS = 0x0809, 0x000A, 0x002F
_BIFF_SCAN = 4096


def encrypted_word(data: bytes) -> bool:
    """A Word 97-2003 document saved with a password to open."""
    try:
        fib = cfb.stream(data, "WordDocument", 12)
    except cfb.Damaged:
        return False
    if fib is None or len(fib) < 12:
        return False
    ident, flags = struct.unpack_from("<H", fib, 0)[0], struct.unpack_from("<H", fib, 0x0A)[0]
    return ident in _WORD_IDENTS and bool(flags & _WORD_ENCRYPTED)


def encrypted_workbook(data: bytes) -> bool:
    """An Excel 97-2003 workbook encrypted (a FILEPASS record after its first BOF): with a password to open, or
    with Excel's built-in one."""
    try:
        book = cfb.stream(data, "Workbook", _BIFF_SCAN) or cfb.stream(data, "Book", _BIFF_SCAN)
    except cfb.Damaged:
        return False
    offset, first = 0, True
    while book is not None and offset + 4 <= len(book):
        record, length = struct.unpack_from("<HH", book, offset)
        if first and record != _BOF:
            return False
        if record == _FILEPASS:
            return True
        if record == _EOF or (record == _BOF and not first):
            return False
        offset, first = offset + 4 + length, False
    return False


def encrypted_ooxml(data: bytes) -> bool:
    """An OOXML file saved with a password: a CDF container holding an ``EncryptedPackage`` stream."""
    return data.startswith(bytes.fromhex("d0cf11e0a1b11ae1")) and "EncryptedPackage".encode("utf-16-le") in data


def convert(data: bytes, kind: str, settings: DocumentSettings, deadline: float) -> bytes:
    """The PDF of an Office file (see the module docstring); ``deadline`` is on ``time.monotonic``."""
    soffice = program(settings)
    if soffice is None:  # pragma: no cover - the policy asks program() first
        raise RuntimeError("LibreOffice is not available")
    if is_encrypted(kind, data):
        raise Unfit("encrypted", "it needs a password to open")
    with _slot(settings, deadline), tempfile.TemporaryDirectory(prefix="fax-gateway-office-") as tmp:
        try:
            return _run(soffice, data, kind, Path(tmp), settings, deadline)
        except Unfit as exc:
            if exc.reason == "corrupt" and kind == "xls" and encrypted_workbook(data):
                raise Unfit("encrypted", "it needs a password to open") from None  # not Excel's built-in one
            raise


def _run(soffice: str, data: bytes, kind: str, tmp: Path, settings: DocumentSettings, deadline: float) -> bytes:
    extension, infilter, _ = FILTERS[kind]
    source, out, profile = tmp / f"document.{extension}", tmp / "out", tmp / "profile"
    write_profile(profile)
    source.write_bytes(data)
    seconds = deadline - time.monotonic()
    if seconds < MIN_SECONDS:
        raise _overdue(settings)
    command = ["timeout", "-s", "KILL", f"{seconds + 1:.1f}", soffice, "--headless", "--invisible", "--norestore",
               "--nolockcheck", "--nodefault", "--nologo", "--nofirststartwizard",
               f"-env:UserInstallation={profile.as_uri()}", f"--infilter={infilter}",
               "--convert-to", "pdf", "--outdir", str(out), str(source)]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "LANG": "C.UTF-8",
           "SAL_USE_VCLPLUGIN": "svp", "TMPDIR": str(tmp)}  # fmt: skip
    started = time.monotonic()
    with open(tmp / "log", "wb") as said:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=said, stderr=said, env=env, cwd=tmp,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.warning("LibreOffice was still converting a %s after %.1f s: stopped", kind, seconds)
            raise _overdue(settings) from None
        finally:
            _kill_group(proc)  # anything it left running
    log.info("LibreOffice converted a %s (%d bytes) in %.2f s (exit code %s)", kind, len(data),
             time.monotonic() - started, proc.returncode)  # fmt: skip
    pdf = out / "document.pdf"
    result = pdf.read_bytes() if pdf.is_file() else b""
    if not result.startswith(b"%PDF-"):
        said_text = (tmp / "log").read_bytes()[:300].decode("utf-8", "replace").strip()
        log.info("LibreOffice made no PDF of a %s (exit code %s): %s", kind, proc.returncode, said_text)
        raise Unfit("corrupt", "damaged, or not a real " + FILTERS[kind][2])
    try:
        with pikepdf.open(io.BytesIO(result)) as doc:
            pages = len(doc.pages)
    except Exception:  # pikepdf raises many types; LibreOffice's own output should always open
        raise Unfit("corrupt", "LibreOffice made a damaged PDF of it") from None
    if pages < 1:
        raise Unfit("empty", "it has no pages")
    return result


def _overdue(settings: DocumentSettings) -> Unfit:
    return Unfit("limits", f"converting it took longer than {settings.convert_timeout_seconds:g} s "
                           "(documents.convert_timeout_seconds)")  # fmt: skip


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def slot_directory() -> Path:
    """Where the conversion slots' lock files are (one directory per user of the machine)."""
    return Path(tempfile.gettempdir()) / f"fax-gateway-office-slots.{os.getuid()}"


@contextlib.contextmanager
def _slot(settings: DocumentSettings, deadline: float) -> Iterator[int]:
    """Hold one of ``office_concurrency`` conversion slots (a lock file), waiting a bounded time."""
    directory = slot_directory()
    directory.mkdir(mode=0o700, exist_ok=True)
    until = min(deadline, time.monotonic() + settings.queue_seconds)
    while True:
        for index in range(settings.office_concurrency):
            fd = os.open(directory / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield index
            finally:
                os.close(fd)  # the lock goes with the descriptor (and with the process, if it dies)
            return
        if time.monotonic() >= until:
            raise Busy(f"no LibreOffice conversion slot free within {settings.queue_seconds:g} s "
                       f"(documents.office_concurrency = {settings.office_concurrency})")  # fmt: skip
        time.sleep(SLOT_POLL_SECONDS)

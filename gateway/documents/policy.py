"""Documents: find what to fax in a mail, check it, and build the one document sent.

In: the raw bytes of a message and the document settings. Out: an
:class:`Extraction` (the fax document, always a PDF, its page count, what went
into it and what was left out), or :class:`DocumentRefused` carrying the SMTP
answer (:class:`gateway.replies.Answer`) that tells the sender what to change. Called by SMTP intake in its DATA
step, before the 250. Blocking (parser, libmagic, pikepdf, Pillow): callers
run it off the event loop.

Replies it can give (``gateway.replies``): NO_DOCUMENT and DOC_TNEF (554
5.6.0/5.6.1, nothing to fax), DOC_TYPE and DOC_NOT_PDF (554 5.6.1: the
latter for a file named .pdf that is not one), DOC_EMPTY (554 5.6.0),
DOC_ENCODING, DOC_CORRUPT and DOC_ENCRYPTED (554 5.6.5), DOC_LIMITS (554
5.6.0), DOC_TOO_BIG (552 5.3.4, with ``documents.fit = "off"``: the file, its
size, the limit and how many pages would fit), DOC_TOO_BIG_FITTED and
DOC_FIT_TIMEOUT (552 5.3.4: over the limit even once fitted, or not fitted in
time; ``gateway.documents.fit`` makes a fax document over the limit fit
first). Which parts are candidates and the order of
the checks follow document policy v1: checks run in MIME order and the first
candidate that fails decides. With ``documents.unsupported = "skip"`` a part
of a type that cannot be faxed is left out instead and listed in
``Extraction.skipped`` (the receipts name it); when nothing else is left,
DOC_TYPE names the first such part.
"""

from __future__ import annotations

import re
import time
import unicodedata
from email.message import Message
from typing import Any

import tnefparse

from gateway import replies
from gateway.documents import bounds, cover, fit, formats, mime, office, textpages
from gateway.documents.cover import Envelope
from gateway.documents.formats import Document, Unfit
from gateway.documents.outcomes import DocumentRefused as DocumentRefused
from gateway.documents.outcomes import Extraction as Extraction
from gateway.settings import DocumentSettings
from gateway.text import display

# Policy reason -> the reply that explains it.
REASON_REPLIES = {
    "type": replies.DOC_TYPE,
    "empty": replies.DOC_EMPTY,
    "encoding": replies.DOC_ENCODING,
    "corrupt": replies.DOC_CORRUPT,
    "encrypted": replies.DOC_ENCRYPTED,
    "limits": replies.DOC_LIMITS,
}


def extract(raw: bytes, settings: DocumentSettings, envelope: Envelope | None = None) -> Extraction:
    """The fax document of a message, or :class:`DocumentRefused`.

    ``envelope`` (numbers, time received, language) is what a cover page says beyond the mail itself.
    """
    try:
        msg = mime.parse(raw, settings.max_mime_depth, settings.max_parts)
    except mime.LimitExceeded as exc:
        raise _refused("limits", "", "", str(exc), settings) from None
    run = _Run(settings)
    for part in mime.candidates(msg):
        run.take(part, 0)
    run.cover(msg, envelope or Envelope())
    return run.finish()


def for_reply(name: str) -> str:
    """A display name in ASCII, for an SMTP reply line (RFC 5321 replies are ASCII)."""
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return folded.encode("ascii", "replace").decode("ascii")


# libmagic MIME type -> the kind converted to PDF before faxing (documents.convert_types).
CONVERTED = {**office.KINDS, "text/plain": "text"}


def accepted_list(settings: DocumentSettings) -> str:
    return ", ".join(kind.upper() for kind in settings.accepted_types)


def _refused(reason: str, name: str, found: str, detail: str, settings: DocumentSettings) -> DocumentRefused:
    target = "PDF" if "pdf" in settings.accepted_types else settings.accepted_types[0].upper()
    entry = REASON_REPLIES[reason]
    if reason == "type" and _NAMED_PDF.search(name):  # not "convert it to PDF" about a file named .pdf
        entry = replies.DOC_NOT_PDF
    reply = entry.format(
        name=for_reply(name), found=found, reason=detail, accepted=accepted_list(settings), target=target
    )
    return DocumentRefused(reply, reason)


# A candidate's label whose file name ends in .pdf ("scan.pdf", "scan.pdf (in winmail.dat)").
_NAMED_PDF = re.compile(r"\.pdf(?: \(in .*\))?$", re.IGNORECASE | re.DOTALL)


def _too_big(size: int, documents: list[Document], pages: int, settings: DocumentSettings) -> DocumentRefused:
    """DOC_TOO_BIG: which file, its size, the limit, and how many pages would fit at this density."""
    limit, n = settings.max_fax_bytes, len(documents)
    name = documents[0].name if n == 1 else f"{documents[0].name} and {n - 1} more"
    most = min(pages * limit // size, settings.max_pdf_pages)
    if most >= 1:
        advice = f"scan in black and white at 200 dpi, or send at most {most} page{'s' if most > 1 else ''} per mail"
    else:
        advice = "even one page is over it: scan in black and white at 200 dpi"
    what = f" ({n} documents together)" if n > 1 else ""
    reply = replies.DOC_TOO_BIG.format(name=for_reply(name), size=size, what=what, limit=limit, advice=advice)
    return DocumentRefused(reply, "too-big")


class _Run:
    """The checks over one message's candidates, in MIME order."""

    def __init__(self, settings: DocumentSettings) -> None:
        self.settings = settings
        # Fitting gives up between pages past this (documents.convert_timeout_seconds).
        self.deadline = time.monotonic() + settings.convert_timeout_seconds
        self.documents: list[Document] = []
        self.skipped: list[dict[str, Any]] = []
        self.count = 0
        self.decoded = 0
        self.pages = 0
        self.tnef_seen = False
        # Decoded stream bytes and pixels, over every document of the mail.
        self.budget = bounds.Budget(settings)
        # The refusal a skipped part would have given: said when nothing else is left to fax.
        self.first_skip: DocumentRefused | None = None

    def take(self, part: mime.Part, level: int) -> None:
        """Check one candidate; keep it, ignore it, unpack it, or refuse the message."""
        s = self.settings
        label = self._count(part)
        if not part.data:
            raise _refused("empty", label, "", "", s)
        if not part.clean:
            raise _refused("encoding", label, "", "", s)
        if formats.is_enveloped(part.declared, part.smime_type, part.data):
            raise _refused("encrypted", label, "S/MIME", "S/MIME encrypted mail", s)
        found = formats.sniff(part.data)
        if found in mime.NEVER_DOCUMENTS:
            return
        if found == formats.TNEF:
            self._unpack(part, label, level)
            return
        if found == office.ENCRYPTED and office.encrypted_ooxml(part.data) and set(s.convert_types) - {"text"}:
            what = _office_name(part.name)
            raise DocumentRefused(replies.DOC_OFFICE_ENCRYPTED.format(name=for_reply(label), found=what), "encrypted")
        converted = CONVERTED.get(found)
        if converted == "text" and not _says_text(part):
            converted = None  # a text file named .pdf is a mistake to tell, not a fax to print
        if converted is not None and converted in s.convert_types:
            self._convert(part, converted, found, label)
            return
        kind = formats.KINDS.get(found)
        if kind is None or kind not in s.accepted_types:
            refusal = _refused("type", label, formats.describe(found), "", s)
            if s.unsupported == "skip":
                self.skipped.append({"name": part.name or f"attachment {self.count}", "type": found, "reason": "type"})
                self.first_skip = self.first_skip or refusal
                return
            raise refusal
        self._keep(part, kind, label)

    def _count(self, part: mime.Part) -> str:
        """Apply the bounds on candidates and bytes; the candidate's label for replies."""
        s = self.settings
        self.count += 1
        self.decoded += len(part.data)
        if self.count > s.max_parts:
            raise _refused("limits", "", "", f"more than {s.max_parts} attachments", s)
        if self.decoded > s.max_decoded_bytes:
            raise _refused("limits", "", "", f"attachments larger than {s.max_decoded_bytes} bytes in all", s)
        label = part.name or f"attachment {self.count} (no file name)"
        return f"{label} (in {part.within})" if part.within else label

    def _keep(self, part: mime.Part, kind: str, label: str) -> None:
        """A faxable kind: prove it readable and count its pages (tracking pixels are dropped)."""
        s = self.settings
        try:
            if kind == "pdf":
                bounds.pdf_streams(part.data, self.budget)
                pages = formats.pdf_pages(part.data, self.budget.images)
            else:
                pages = formats.image_frames(part.data, s.min_image_pixels, s.max_pdf_pages, self.budget.images)
        except Unfit as exc:
            raise _refused(exc.reason, label, kind.upper(), exc.detail, s) from None
        if pages == 0:  # a tracking pixel
            return
        if kind in ("jpeg", "png", "gif"):
            pages = 1  # an animation is faxed as its first frame
        self.pages += pages
        if self.pages > s.max_pdf_pages:
            raise _refused("limits", "", "", f"more than {s.max_pdf_pages} pages", s)
        self.documents.append(Document(part.name or f"attachment {self.count}", kind, part.data, pages))

    def _convert(self, part: mime.Part, kind: str, found: str, label: str) -> None:
        """An Office file (LibreOffice) or a text file (drawn directly) made a PDF, then kept as a PDF is."""
        s = self.settings
        what = office.FILTERS[kind][2] if kind in office.FILTERS else "text file"
        try:
            if kind == "text":
                if not textpages.decode(part.data).strip():
                    return  # nothing to print: left out, like a tracking pixel
                data, pages = textpages.text_pdf(part.data, s.page_size, max(1, s.max_pdf_pages - self.pages))
            else:
                if office.program(s) is None:
                    if s.unsupported == "skip":
                        self.skipped.append({"name": part.name or f"attachment {self.count}", "type": found,
                                             "reason": "type"})  # fmt: skip
                        self.first_skip = self.first_skip or _office_off(label, what, s)
                        return
                    raise _office_off(label, what, s)
                data = office.convert(part.data, kind, s, self.deadline)
                bounds.pdf_streams(data, self.budget)
                pages = formats.pdf_pages(data, self.budget.images)
        except Unfit as exc:
            if exc.reason == "encrypted":
                reply = replies.DOC_OFFICE_ENCRYPTED.format(name=for_reply(label), found=what)
            elif exc.reason == "corrupt":
                reply = replies.DOC_OFFICE_CORRUPT.format(name=for_reply(label), found=what, reason=exc.detail)
            else:
                raise _refused(exc.reason, label, what, exc.detail, s) from None
            raise DocumentRefused(reply, exc.reason) from None
        self.pages += pages
        if self.pages > s.max_pdf_pages:
            raise _refused("limits", "", "", f"more than {s.max_pdf_pages} pages", s)
        self.documents.append(Document(part.name or f"attachment {self.count}", kind, data, pages))

    def _unpack(self, part: mime.Part, label: str, level: int) -> None:
        """Outlook's winmail.dat: its attachments are candidates; embedded messages are TNEF again."""
        s = self.settings
        if level >= s.max_mime_depth:
            raise _refused("limits", "", "", f"winmail.dat nested more than {s.max_mime_depth} deep", s)
        self.tnef_seen = True
        try:
            attachments = [(_tnef_name(a), bytes(a.data or b"")) for a in tnefparse.TNEF(part.data).attachments]
        except MemoryError:
            raise
        except Exception as exc:  # tnefparse raises many types on damaged streams
            raise _refused("corrupt", label, "TNEF (winmail.dat)", f"damaged: {type(exc).__name__}", s) from None
        within = part.within or part.name or "winmail.dat"
        for name, data in attachments:
            self.take(mime.Part(name, data, True, "application/octet-stream", "", within), level + 1)

    def cover(self, msg: Message, envelope: Envelope) -> None:
        """The cover page before the documents, or the mail's own text as the fax (documents.cover_page,
        documents.body_without_attachment, [cover] and [nocover] in the subject)."""
        s = self.settings
        subject = display(" ".join(str(msg.get("Subject", "") or "").split()))
        said = cover.keyword(subject)
        faxing_body = not self.documents and s.body_without_attachment == "fax" and self.first_skip is None
        if s.cover_page == "off" and said is None and not faxing_body:
            return
        body = cover.body_text(msg)
        if faxing_body and not body.strip():
            return  # no text either: NO_DOCUMENT
        if not (cover.wanted(s, subject, body) or (faxing_body and said is None and s.cover_page != "off")):
            if faxing_body:  # the text alone, as a legacy application means it
                data, pages = textpages.Layout(s.page_size).pdf(textpages.text_lines(body, 80), s.max_pdf_pages)
                self._prepend(Document("mail text", "text", data, pages))
            return
        try:
            data, pages = cover.cover_pdf(envelope, msg, cover.without_keywords(subject), body, self.pages, s)
        except Unfit as exc:
            raise _refused(exc.reason, "the mail text", "text", exc.detail, s) from None
        self._prepend(Document("cover page", "cover", data, pages))

    def _prepend(self, document: Document) -> None:
        self.pages += document.pages
        if self.pages > self.settings.max_pdf_pages:
            raise _refused("limits", "", "", f"more than {self.settings.max_pdf_pages} pages", self.settings)
        self.documents.insert(0, document)

    def finish(self) -> Extraction:
        s = self.settings
        if not self.documents and self.first_skip is not None:
            raise self.first_skip  # everything was skipped: say what to convert, not "attach a file"
        if not self.documents:
            reply = replies.DOC_TNEF if self.tnef_seen else replies.NO_DOCUMENT
            raise DocumentRefused(reply.format(accepted=accepted_list(s)), "no-document")
        fax = formats.build(self.documents, s.page_size)
        fitted = self._fit(fax) if fit.needed(len(fax), s) else None
        fax = fitted.document if fitted is not None else fax
        if len(fax) > s.max_fax_bytes:
            raise _too_big(len(fax), self.documents, self.pages, s)
        listed = [{"name": d.name, "type": d.kind, "pages": d.pages, "bytes": len(d.data)} for d in self.documents]
        if fitted is not None:  # what fitting did, for the receipt
            for entry in listed:
                entry.update(fitted=fitted.words, fit=fitted.how)
        return Extraction(fax, "pdf", self.pages, listed, self.skipped)

    def _fit(self, fax: bytes) -> fit.Fitted:
        """The fax made to fit (gateway.documents.fit), or the refusal that says what to change."""
        s = self.settings
        n = len(self.documents)
        name = self.documents[0].name if n == 1 else f"{n} documents together"
        try:
            return fit.fit(fax, [fit.Part(d.name, d.pages) for d in self.documents], s, self.deadline)
        except fit.TooBig as exc:
            advice = (f"send at most {exc.most} page{'s' if exc.most > 1 else ''} per mail" if exc.most else
                      "even one page is over it: scan in black and white at 200 dpi")  # fmt: skip
            reply = replies.DOC_TOO_BIG_FITTED.format(name=for_reply(name), pages=exc.pages, size=exc.size,
                                                      limit=s.max_fax_bytes, advice=advice)  # fmt: skip
            raise DocumentRefused(reply, "too-big") from None
        except fit.Overdue as exc:
            reply = replies.DOC_FIT_TIMEOUT.format(name=for_reply(name), pages=exc.pages, limit=s.max_fax_bytes,
                                                   seconds=f"{exc.seconds:g}")  # fmt: skip
            raise DocumentRefused(reply, "too-big") from None
        except Unfit as exc:
            raise _refused(exc.reason, name, "PDF", exc.detail, s) from None


def _says_text(part: mime.Part) -> bool:
    """Whether a part presents itself as text: declared text/*, or named .txt (or nothing at all)."""
    extension = part.name.rpartition(".")[2].lower() if "." in part.name else ""
    return part.declared.startswith("text/") or extension in ("txt", "text", "log", "")


def _office_off(label: str, what: str, settings: DocumentSettings) -> DocumentRefused:
    reply = replies.DOC_OFFICE_OFF.format(name=for_reply(label), found=what, why=office.unavailable(settings))
    return DocumentRefused(reply, "type")


def _office_name(name: str) -> str:
    """What a password-protected OOXML file is, by its name (its content says only "encrypted")."""
    extension = name.rpartition(".")[2].lower()
    for kind, (ext, _, words) in office.FILTERS.items():
        if extension in (ext, kind) or (extension in ("docm", "dotx") and kind == "docx"):
            return words
    return "Office document"


def _tnef_name(attachment: Any) -> str:
    try:
        name = attachment.long_filename() or attachment.name or ""
    except Exception:  # a damaged name property: the short name will do
        name = getattr(attachment, "name", "") or ""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return mime.sanitise(str(name))

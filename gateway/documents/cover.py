"""The cover page and the mail's own text: what a fax machine's first page says, in the receipt language.

In: the parsed message, its :class:`Envelope` (the fax numbers, when it was received, the language
and zone of receipts), the document settings and the pages that follow. Out: the body text a
person wrote (plain, or HTML made text; the signature after ``-- `` and quoted replies cut), and
the cover as fax pages (``textpages``): recipient (the To display name and the number), sender,
date and zone, subject, number of pages, then the body text, continued on further pages.

Which mails get one (``documents.cover_page``): "off", "always", "when-body" (the body has text
beyond a signature); ``[cover]`` or ``[nocover]`` in the subject decides for one mail.
``documents.body_without_attachment = "fax"``: a mail with text and no attachment is faxed as its
text (on a cover page, unless covers are off: then the text alone). Pure but for Pillow's drawing.
"""

from __future__ import annotations

import email.utils
import html.parser
import re
from email.message import Message

from gateway import dates
from gateway.documents import mime, textpages
from gateway.documents.outcomes import KEYWORD as KEYWORD
from gateway.documents.outcomes import Envelope as Envelope
from gateway.documents.outcomes import without_keywords as without_keywords
from gateway.documents.textpages import Line
from gateway.settings import DocumentSettings
from gateway.text import clean, display

# Where a quoted reply starts: "On ... wrote:", "Le ... a écrit :", Outlook's separator and header block.
_QUOTE_START = re.compile(
    r"^(On .{0,200} wrote:|Le .{0,200} a écrit\s?:|-{2,}\s*(Original Message|Message d'origine)\s*-{2,}"
    r"|_{10,}|(From|De)\s?: .+)\s*$", re.IGNORECASE)  # fmt: skip
BODY_LIMIT = 200_000  # characters of body text laid out at most (the rest is cut)

WORDS = {
    "en": {"title": "FAX", "to": "To", "from": "From", "date": "Date", "subject": "Subject", "pages": "Pages",
           "included": "this page included", "none": "(none)"},
    "fr": {"title": "TÉLÉCOPIE", "to": "À", "from": "De", "date": "Date", "subject": "Objet", "pages": "Pages",
           "included": "celle-ci comprise", "none": "(aucun)"},
}  # fmt: skip


def keyword(subject: str) -> bool | None:
    """True for ``[cover]``, False for ``[nocover]`` (the last one wins), None for neither."""
    found = [m[1] for m in KEYWORD.finditer(subject)]
    return None if not found else found[-1] is None


def wanted(settings: DocumentSettings, subject: str, body: str) -> bool:
    """Whether this mail gets a cover page."""
    said = keyword(subject)
    if said is not None:
        return said
    if settings.cover_page == "always":
        return True
    return settings.cover_page == "when-body" and bool(body.strip())


# -- the body -----------------------------------------------------------------------------------


def body_text(msg: Message) -> str:
    """The text the sender wrote: the first plain-text body, else the first HTML body made text; cut."""
    plain, markup = _bodies(msg)
    if plain is not None:
        text = plain
    elif markup is not None:
        text = html_text(markup)
    else:
        return ""
    return cut(text[:BODY_LIMIT])


def _bodies(msg: Message) -> tuple[str | None, str | None]:
    plain: str | None = None
    markup: str | None = None
    stack = [msg]
    while stack:
        part = stack.pop()
        ctype = part.get_content_type()
        if part.is_multipart():
            stack.extend(reversed(mime.children(part)))
            continue
        if ctype not in ("text/plain", "text/html") or mime.has_filename(part):
            continue
        if part.get_content_disposition() == "attachment":
            continue
        data, _ = mime.decode(part)
        charset = part.get_content_charset() or "utf-8"
        try:
            text = data.decode(charset, "replace")
        except LookupError:
            text = textpages.decode(data)
        if ctype == "text/plain" and plain is None:
            plain = text
        elif ctype == "text/html" and markup is None:
            markup = text
    return plain, markup


def cut(text: str) -> str:
    """The body without its signature (after a ``-- `` line) and quoted replies; trailing blank lines gone."""
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.rstrip() == "--" or line == "-- ":
            break
        if _QUOTE_START.match(line.strip()):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line.rstrip())
    while kept and not kept[-1].strip():
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)
    return "\n".join(kept)


class _Text(html.parser.HTMLParser):
    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote"})
    SKIP = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.quoted = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        if tag == "blockquote":
            self.quoted += 1
        if tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        if tag == "blockquote" and self.quoted:
            self.quoted -= 1
        if tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping and not self.quoted:
            self.out.append(re.sub(r"\s+", " ", data))


def html_text(markup: str) -> str:
    """An HTML body as the text a person reads (no styles or scripts, quoted replies left out)."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip()


# -- the page -----------------------------------------------------------------------------------


def recipients(to_header: str, numbers: tuple[str, ...]) -> list[str]:
    """Each fax number with the display name the To header gives it (``"Cabinet Martin" <0145...@fax>``)."""
    named: dict[str, str] = {}
    for name, address in email.utils.getaddresses([to_header]):
        local = re.sub(r"[^0-9+]", "", address.partition("@")[0])
        if name and local:
            named[local.lstrip("+")] = display(name)
    out = []
    for number in numbers:
        name = named.get(re.sub(r"[^0-9]", "", number), "")
        out.append(f"{clean(name, 80)} ({number})" if name else number)
    return out


def lines(env: Envelope, msg: Message, subject: str, body: str, total_pages: int, columns: int) -> list[Line]:
    """The cover's lines (the page count given); the body text after the header block."""
    w = WORDS.get(env.language, WORDS["en"])
    sender = display(str(msg.get("From", "") or ""))
    to = recipients(display(str(msg.get("To", "") or "")), env.numbers) or [w["none"]]
    when = dates.at(env.received, env.language, dates.zone(env.timezone)) if env.received else ""
    colon = " : " if env.language == "fr" else ": "
    pages = f"{total_pages} ({w['included']})"
    out = [Line(w["title"], 24.0, "sans-bold"), Line("", 10.0)]
    fields = [(w["to"], ", ".join(to)), (w["from"], clean(sender, 200)), (w["date"], when),
              (w["subject"], clean(subject, 200) or w["none"]), (w["pages"], pages)]  # fmt: skip
    for label, value in fields:
        out.extend(Line(piece, 12.0, "sans") for piece in _wrapped(f"{label}{colon}{value}", columns * 5 // 6))
    out.append(Line("_" * columns))
    out.append(Line(""))
    out.extend(textpages.text_lines(body, columns) if body else [])
    return out


def _wrapped(text: str, width: int) -> list[str]:
    pieces = []
    while len(text) > width:
        at = text.rfind(" ", 0, width)
        at = at if at > width // 2 else width
        pieces.append(text[:at])
        text = "    " + text[at:].lstrip()
    return [*pieces, text]


def cover_pdf(
    env: Envelope, msg: Message, subject: str, body: str, following: int, settings: DocumentSettings
) -> tuple[bytes, int]:
    """The cover as fax pages, counting the ``following`` pages of the documents: (PDF, cover pages)."""
    layout = textpages.Layout(settings.page_size)
    columns = layout.columns()
    first = layout.paginate(lines(env, msg, subject, body, 1 + following, columns))
    final = lines(env, msg, subject, body, len(first) + following, columns)  # the same lines, the count known
    return layout.pdf(final, max(1, settings.max_pdf_pages - following))

"""MIME: bound the work, parse, and list the parts that may be documents.

In: the raw bytes of a message. Out: the :class:`Part` objects that are
candidates (decoded bytes, display name, whether the transfer encoding decoded
cleanly), in MIME order; or :class:`LimitExceeded` when the message is too deep
or has too many parts. Which parts are candidates is document policy v1: the
body text, resources of an HTML body (``multipart/related``, ``cid:``
targets), signatures, calendars, vCards and report parts are not; forwarded
mail (``message/rfc822``) is walked; ``message/partial`` and
``message/external-body`` are never reassembled or fetched.

The stdlib parser recurses once per nesting level and slows down badly with
thousands of parts, so :func:`prescan` measures depth and part count on the
raw bytes first, in one pass without recursion. Every walk here uses an
explicit stack.

The stdlib parser also keeps several copies of a large body (the text of the
whole message, its lines, the joined payload), so :func:`parse` does not give
it the large ones: each run of at least :data:`RAW_BODY_MIN` bytes of lines
made of base64 characters alone is replaced by one token line before parsing,
and a part whose body turns out to be exactly such a token keeps a reference
to its bytes in the raw message (:class:`RawBody`) instead; :func:`decode`
then decodes it from there, in one pass and without a copy. Such lines can be
no boundary, header or blank line, so the parser reads the same structure
either way; when a token lands anywhere but alone in a part's body, the whole
message is parsed as it is.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.headerregistry
import email.policy
import quopri
import re
import secrets
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Any
from urllib.parse import unquote, unquote_to_bytes


class LimitExceeded(Exception):
    """The message is past a structure bound; the text says which."""


@dataclass(frozen=True)
class Part:
    """A candidate document: what the sender attached, decoded."""

    name: str  # sanitised display name; never a path or a storage key
    data: bytes
    clean: bool  # the transfer encoding decoded without a defect
    declared: str  # the Content-Type as declared (lower case), for rule-2 and S/MIME checks
    smime_type: str  # the smime-type parameter, lower case, or ""
    within: str = ""  # the display name of the container it came out of (winmail.dat)


# Types that are never documents and never a cause of refusal (policy v1, rule 2), whether the
# part declares them or libmagic finds them in its bytes.
NEVER_DOCUMENTS = frozenset(
    {
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
        "application/pgp-signature",
        "application/pgp-keys",
        "text/calendar",
        "text/vcard",
        "text/x-vcard",
        "text/rfc822-headers",
    }
)
# message/* subtypes that hold a forwarded message to walk; every other one is a report part.
FORWARD_SUBTYPES = frozenset({"rfc822", "global", "news"})
BODY_TEXT_SUBTYPES = frozenset({"plain", "html", "enriched", "richtext"})
_UU_ENCODINGS = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})

# -- bounds on the raw bytes ----------------------------------------------------------

_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:[ \t]*([^;\s]*)(.*)$", re.IGNORECASE | re.DOTALL)
# boundary=, and the RFC 2231 forms boundary*=charset'lang'value and boundary*0=, *1=...
_BOUNDARY = re.compile(rb"""(?<![\w-])boundary[ \t]*(?:\*(\d+))?(\*)?[ \t]*=[ \t]*(?:"([^"]*)"|([^\s;]+))""", re.I)


def _boundary(params: bytes) -> bytes | None:
    pieces: dict[int, bytes] = {}
    for m in _BOUNDARY.finditer(params):
        index = int(m[1]) if m[1] else 0
        value = m[3] if m[3] is not None else m[4]
        if m[2]:  # extended: percent-encoded, the first piece after charset'language'
            if index == 0 and value.count(b"'") >= 2:
                value = value.split(b"'", 2)[2]
            value = unquote_to_bytes(value)
        pieces.setdefault(index, value)
    boundary = b"".join(pieces[i] for i in sorted(pieces)).rstrip()
    return boundary or None


def _header_type(lines: list[bytes], default: bytes) -> tuple[bytes, bytes | None]:
    """The content type and boundary of one header block (first Content-Type wins)."""
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and unfolded:
            unfolded[-1] += b" " + line.strip()
        else:
            unfolded.append(line)
    for header in unfolded:
        m = _CONTENT_TYPE.match(header)
        if m:
            return (m[1].lower() if b"/" in m[1] else default), _boundary(m[2])
    return default, None


def prescan(raw: bytes, max_depth: int, max_parts: int) -> None:
    """Raise :class:`LimitExceeded` if the message nests deeper or has more parts than allowed.

    One pass over the lines, following the boundaries the way the stdlib's
    feed parser does (an outer boundary also ends every inner part). Depth is
    counted like the parsed tree (root 0; a forwarded message is one level
    below its ``message/rfc822`` part), parts like ``walk()``.
    """
    stack: list[tuple[bytes, int, bool]] = []  # (delimiter, depth of the multipart, is a digest)
    depth, parts = 0, 1
    headers: list[bytes] | None = []
    default = b"text/plain"
    lines = raw.split(b"\n")
    if lines[0].startswith(b"From "):  # an mbox separator line, as the parser allows
        lines[0] = b"X-Unix-From: -"
    for raw_line in lines:
        if headers is None and (not stack or not raw_line.startswith(b"--")):
            continue  # a body line (the most of them): only a delimiter matters there
        line = raw_line.rstrip(b"\r")
        if headers is not None:
            if line and (line[:1] in (b" ", b"\t") or b":" in line):
                headers.append(line)
                continue
            ctype, boundary = _header_type(headers, default)
            headers = None
            if ctype.startswith(b"multipart/") and boundary:
                stack.append((b"--" + boundary, depth, ctype == b"multipart/digest"))
            elif ctype.startswith(b"message/") and ctype != b"message/delivery-status":
                depth, parts, headers, default = depth + 1, parts + 1, [], b"text/plain"
                _check(depth, parts, max_depth, max_parts)
                if line:
                    headers.append(line)
                continue
        if not line.startswith(b"--") or not stack:
            continue
        stripped = line.rstrip(b" \t")
        for i in range(len(stack) - 1, -1, -1):
            delimiter, level, digest = stack[i]
            if stripped == delimiter:
                del stack[i + 1 :]
                depth, parts, headers = level + 1, parts + 1, []
                default = b"message/rfc822" if digest else b"text/plain"
                _check(depth, parts, max_depth, max_parts)
                break
            if stripped == delimiter + b"--":
                del stack[i:]
                depth = level
                break


def _check(depth: int, parts: int, max_depth: int, max_parts: int) -> None:
    if depth > max_depth:
        raise LimitExceeded(f"MIME parts nested more than {max_depth} deep")
    if parts > max_parts:
        raise LimitExceeded(f"more than {max_parts} MIME parts")


class _ParsedOnce:
    """A header factory that parses each distinct header once per message.

    With ``policy.default`` every ``get()`` parses the header again (the
    walk asks each part for its type several times); header objects are
    immutable, so one per (name, value) serves every later ask.
    """

    def __init__(self) -> None:
        self._registry = email.headerregistry.HeaderRegistry()
        self._parsed: dict[tuple[str, str], Any] = {}

    def __call__(self, name: str, value: str) -> Any:
        key = (name.lower(), value)
        header = self._parsed.get(key)
        if header is None:
            header = self._parsed[key] = self._registry(name, value)
        return header

    def __getattr__(self, name: str) -> Any:  # map_to_type() and the rest of the registry's interface
        return getattr(self._registry, name)


# -- large bodies left in the raw bytes ---------------------------------------------------

# Runs of base64 lines at least this long (bytes, line ends included) are not given to the parser.
RAW_BODY_MIN = 64 * 1024
# Whole lines of base64 characters alone, from a line start to a line end as the parser reads them (a lone CR
# ends a line too), or to the end of the message. Possessive: the engine keeps no backtracking state per line.
_BASE64_LINES = re.compile(rb"(?:^|(?<=\r))(?:[A-Za-z0-9+/=]++(?:\r\n|\r|\n|\Z))++", re.MULTILINE)
_LINE_ENDS = b"\r\n"


@dataclass(frozen=True)
class RawBody:
    """The body of a part, as it is in the raw message: ``head`` + ``raw[start:stop]`` + ``tail``.

    ``raw[start:stop]`` are whole lines of base64 characters (the last one without its line end);
    ``head`` and ``tail`` are the line ends the parser put around them in the part's payload.
    """

    raw: bytes
    start: int
    stop: int
    head: bytes
    tail: bytes

    def body(self) -> bytes:
        """The body as the parser's payload would have held it (a copy)."""
        return self.head + self.raw[self.start : self.stop] + self.tail

    def base64(self) -> tuple[bytes, bool]:
        """What :func:`_decode_base64` gives for the body without its line ends, decoded where it lies.

        The lines hold base64 characters and line ends alone, so the body is valid base64 (what
        ``b64decode(validate=True)`` takes) exactly when its characters are a multiple of 4 and
        its padding (at most two ``=``) ends it. Then ``a2b_base64``, which passes over line ends,
        decodes it straight from the raw bytes; otherwise the stripped copy goes the usual way.
        """
        raw, start, stop = self.raw, self.start, self.stop
        size = stop - start - raw.count(b"\r", start, stop) - raw.count(b"\n", start, stop)
        pads = raw.count(b"=", start, stop)
        # Every line holds a character, so the last 8 bytes hold at least the last 2 characters.
        last = raw[max(start, stop - 8) : stop].translate(None, _LINE_ENDS)
        if size % 4 == 0 and pads <= 2 and last.endswith(b"=" * pads):
            return binascii.a2b_base64(memoryview(raw)[start:stop]), True
        return _decode_base64(raw[start:stop].translate(None, _LINE_ENDS))


class ParsedMessage(EmailMessage):
    """A part as :func:`parse` gives it; ``raw_body`` is set when its body stayed in the raw message."""

    raw_body: RawBody | None = None


def _parsed(data: bytes) -> ParsedMessage:
    policy = email.policy.default.clone(header_factory=_ParsedOnce(), message_factory=ParsedMessage)
    try:
        msg = email.message_from_bytes(data, policy=policy)
    except RecursionError:
        # Reachable only where the pre-scan and the parser read a structure differently.
        raise LimitExceeded("MIME parts nested too deep to read") from None
    assert isinstance(msg, ParsedMessage)
    return msg


def _parsed_leaving_bodies(raw: bytes, least: int) -> ParsedMessage | None:
    """The message parsed with its long base64 runs left in ``raw`` (see the module docstring).

    None when there is no such run, or when a run's token is not alone in the body of a part
    (a preamble, two runs in one body, text around it): the caller then parses ``raw`` as it is.
    """
    runs = []
    for m in _BASE64_LINES.finditer(raw):
        if m.end() - m.start() >= least:
            end = m.end()
            # The run's last line end stays in the text the parser reads: it may be the boundary's.
            ending = 2 if raw[end - 2 : end] == b"\r\n" else 1 if raw[end - 1 : end] in (b"\r", b"\n") else 0
            runs.append((m.start(), end - ending, end))
    if not runs:
        return None
    nonce = secrets.token_hex(16)  # a sender cannot write a token in advance
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    at = 0
    for index, (start, stop, end) in enumerate(runs):
        pieces += [view[at:start], f"{nonce}n{index}".encode("ascii"), view[stop:end]]
        at = end
    pieces.append(view[at:])
    msg = _parsed(b"".join(pieces))
    token = re.compile(rf"([\r\n]*){nonce}n([0-9]+)([\r\n]*)")
    found: dict[int, tuple[ParsedMessage, str, str]] = {}
    stack: list[Message] = [msg]
    while stack:
        node = stack.pop()
        stack.extend(children(node))
        payload = vars(node).get("_payload")
        if isinstance(payload, str) and nonce in payload:
            alone = token.fullmatch(payload)
            index = int(alone[2]) if alone else len(runs)
            if alone is None or not isinstance(node, ParsedMessage) or index in found or index >= len(runs):
                return None
            found[index] = (node, alone[1], alone[3])
    if len(found) != len(runs):
        return None  # a token outside every body: in a preamble, an epilogue, an unsplit multipart
    for index, (node, head, tail) in found.items():
        start, stop, _ = runs[index]
        node.set_payload("")
        node.raw_body = RawBody(raw, start, stop, head.encode("ascii"), tail.encode("ascii"))
    return msg


def parse(raw: bytes, max_depth: int, max_parts: int, raw_body_min: int = RAW_BODY_MIN) -> EmailMessage:
    """Parse after the pre-scan, then check the bounds again on the tree itself.

    Base64 runs of ``raw_body_min`` bytes or more stay in ``raw`` (see the module docstring), which
    the returned tree then refers to.
    """
    prescan(raw, max_depth, max_parts)
    msg = _parsed_leaving_bodies(raw, raw_body_min) or _parsed(raw)
    parts = 0
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        node, depth = stack.pop()
        parts += 1
        _check(depth, parts, max_depth, max_parts)
        stack.extend((child, depth + 1) for child in children(node))
    return msg


def children(part: Message) -> list[Message]:
    """The sub-parts of a multipart or forwarded message; [] for a leaf or an unsplit multipart."""
    payload = part.get_payload() if part.is_multipart() else None
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


# -- decoding ---------------------------------------------------------------------------


def transfer_encoding(part: Message) -> str:
    """The Content-Transfer-Encoding token as the header parser reads it (``base64 `` -> base64)."""
    header = part.get("content-transfer-encoding")
    if header is None:
        return "7bit"
    return str(getattr(header, "cte", header)).strip().lower()


def decode(part: Message) -> tuple[bytes, bool]:
    """The decoded body of a leaf part and whether it decoded without a defect.

    Mirrors ``get_payload(decode=True)`` but keys on the parsed transfer
    encoding token, and treats base64 strictly: anything the email package
    would flag as an ``InvalidBase64*`` defect is not clean (a truncated
    document is never faxed).
    """
    held = part.raw_body if isinstance(part, ParsedMessage) else None
    cte = transfer_encoding(part)
    if held is not None:
        if cte == "base64":
            return held.base64()
        body = held.body()
    else:
        # The stored payload: a str that carries undecodable bytes as surrogates.
        payload = vars(part).get("_payload")
        if isinstance(payload, bytes):
            body = payload
        elif isinstance(payload, str):
            try:
                body = payload.encode("ascii", "surrogateescape")
            except UnicodeEncodeError:
                body = payload.encode("raw-unicode-escape")
        else:
            return b"", True
    if cte == "base64":
        return _decode_base64(b"".join(body.splitlines()))
    if cte == "quoted-printable":
        return quopri.decodestring(body), True
    if cte in _UU_ENCODINGS:
        try:
            return _decode_uu(body), True
        except (ValueError, binascii.Error):
            return body, True
    return body, True


def _decode_base64(encoded: bytes) -> tuple[bytes, bool]:
    if len(encoded) % 4 == 0:
        try:
            return base64.b64decode(encoded, validate=True), True
        except binascii.Error:
            pass
    for attempt in (encoded, encoded + b"=="):
        try:
            return base64.b64decode(attempt, validate=False), False
        except binascii.Error:
            continue
    return encoded, False


def _decode_uu(encoded: bytes) -> bytes:
    lines = iter(encoded.splitlines())
    for line in lines:
        if line.startswith(b"begin "):
            mode = line.removeprefix(b"begin ").partition(b" ")[0]
            try:
                int(mode, base=8)
            except ValueError:
                continue
            break
    else:
        raise ValueError("no begin line")
    out: list[bytes] = []
    for line in lines:
        if not line:
            raise ValueError("truncated")
        if line.strip(b" \t\r\n\f") == b"end":
            break
        try:
            out.append(binascii.a2b_uu(line))
        except binascii.Error:
            out.append(binascii.a2b_uu(line[: (((line[0] - 32) & 63) * 4 + 5) // 3]))
    return b"".join(out)


# -- names ------------------------------------------------------------------------------

_RAW_NAME = re.compile(r"""(?:^|;)\s*(?:file)?name\s*=\s*"?([^";]*)""", re.IGNORECASE)
_BIDI_AND_FORMAT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def sanitise(name: str, limit: int = 120) -> str:
    """A file name fit for display: no control or bidi characters, no path, bounded length."""
    text = "".join(ch if unicodedata.category(ch) not in _BIDI_AND_FORMAT else " " for ch in name)
    text = " ".join(text.replace("\\", "/").rsplit("/", 1)[-1].split())
    if text in (".", ".."):
        return ""
    if len(text) > limit:
        stem, dot, ext = text.rpartition(".")
        ext = dot + ext if stem and len(ext) <= 10 else ""
        text = text[: limit - len(ext) - 3] + "..." + ext
    return text


def filename(part: Message) -> str:
    """The sanitised display name of a part (RFC 2231 and RFC 2047 decoded), or ""."""
    try:
        name = part.get_filename()
    except (ValueError, LookupError, TypeError):
        name = None
    if not name:
        # RFC 2047 words in a parameter (not allowed, but common) leave the parser empty-handed.
        for key, value in part.raw_items():
            m = _RAW_NAME.search(str(value)) if key.lower() in ("content-disposition", "content-type") else None
            if m and m[1].strip():
                name = m[1].strip()
                break
    if not name:
        return ""
    if "=?" in name:
        try:
            name = str(email.header.make_header(email.header.decode_header(name)))
        except (ValueError, LookupError, UnicodeError):
            pass
    return sanitise(name)


def has_filename(part: Message) -> bool:
    try:
        return bool(part.get_filename()) or bool(part.get_param("name"))
    except (ValueError, LookupError, TypeError):
        return False


# -- the walk ---------------------------------------------------------------------------


def _cids(msg: Message) -> set[str]:
    """Content-IDs that an HTML part refers to with a ``cid:`` URL (RFC 2392)."""
    found: set[str] = set()
    stack = [msg]
    while stack:
        node = stack.pop()
        if node.is_multipart():
            stack.extend(children(node))
        elif node.get_content_type() == "text/html":
            body, _ = decode(node)
            for m in re.finditer(rb"""cid:([^\s"'<>()]+)""", body, re.IGNORECASE):
                found.add(unquote(m[1].decode("ascii", "replace")).strip("<>").lower())
    return found


def _content_id(part: Message) -> str:
    value = part.get("content-id")
    return str(value).strip().strip("<>").strip().lower() if value is not None else ""


def _is_body_text(part: Message, maintype: str, subtype: str) -> bool:
    return (
        maintype == "text"
        and subtype in BODY_TEXT_SUBTYPES
        and not has_filename(part)
        and part.get_content_disposition() != "attachment"
    )


def candidates(msg: Message) -> Iterator[Part]:
    """The parts that may be documents, in MIME order."""
    cids = _cids(msg)
    stack: list[tuple[Message, bool]] = [(msg, False)]  # (part, is an alternative form of the body)
    while stack:
        part, alternative = stack.pop()
        ctype = part.get_content_type()
        maintype, _, subtype = ctype.partition("/")
        if maintype == "multipart":
            # A multipart the parser could not split has no children; related = HTML resources.
            if subtype != "related":
                stack.extend(
                    (child, subtype == "alternative" and child.get_content_maintype() != "multipart")
                    for child in reversed(children(part))
                )
            continue
        if maintype == "message":
            if subtype in FORWARD_SUBTYPES:
                stack.extend((inner, False) for inner in reversed(children(part)))
            continue
        if alternative or _is_body_text(part, maintype, subtype) or ctype in NEVER_DOCUMENTS:
            continue
        if cids and _content_id(part) in cids:
            continue
        data, clean = decode(part)
        smime = part.get_param("smime-type")
        yield Part(filename(part), data, clean, ctype, str(smime).lower() if isinstance(smime, str) else "")

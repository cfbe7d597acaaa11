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


def parse(raw: bytes, max_depth: int, max_parts: int) -> EmailMessage:
    """Parse after the pre-scan, then check the bounds again on the tree itself."""
    prescan(raw, max_depth, max_parts)
    policy = email.policy.default.clone(header_factory=_ParsedOnce())
    try:
        msg = email.message_from_bytes(raw, policy=policy)
    except RecursionError:
        # Reachable only where the pre-scan and the parser read a structure differently.
        raise LimitExceeded("MIME parts nested too deep to read") from None
    assert isinstance(msg, EmailMessage)
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
    cte = transfer_encoding(part)
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

"""Split mails (``message/partial``, RFC 2046 5.2.2): what part a mail is, and the whole put back together.

In: the raw bytes of a mail (:func:`fragment_of` reads only its header block), or the raw bytes of
every part of one set in order (:func:`reassemble`). Out: the part's set id, number and total
(:class:`Fragment`, None for a mail that is not a usable part), or the enclosed message as bytes,
rebuilt as RFC 2046 5.2.2.2 says: the first part's outer headers except ``Content-*``, ``Subject``,
``Message-ID``, ``Encrypted`` and ``MIME-Version``, then those fields of the enclosed message's own
header block (at the start of the first part's body), then the bodies of the parts in order. The
headers of the second and later parts are dropped. Nothing here keeps parts: the SMTP stage does,
in the store (``partial_parts``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

# Most parts a set may have (printers split a scan in a handful), and the longest set id kept.
MAX_PARTS = 100
MAX_ID_LENGTH = 250
# The header block read to tell a part: more is not a printer's header.
_HEAD_LIMIT = 64 * 1024
_BLANK = re.compile(rb"\r?\n\r?\n")
# Fields of the enclosed message that replace the first part's (RFC 2046 5.2.2.2).
_ENCLOSED = ("subject", "message-id", "encrypted", "mime-version")


@dataclass(frozen=True)
class Fragment:
    """One mail of a ``message/partial`` set: its ``id``, ``number`` (from 1) and ``total`` (None when not given)."""

    id: str
    number: int
    total: int | None


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """The header block (with its line ends) and the body of ``raw``."""
    if raw.startswith((b"\r\n", b"\n")):  # no header at all
        return b"", raw[2:] if raw.startswith(b"\r\n") else raw[1:]
    found = _BLANK.search(raw)
    if found is None:
        return raw, b""
    line_end = b"\r\n" if raw[found.start() : found.start() + 2] == b"\r\n" else b"\n"
    return raw[: found.start()] + line_end, raw[found.end() :]


def fragment_of(raw: bytes) -> Fragment | None:
    """What part of which set ``raw`` is, if it is a ``message/partial`` mail with a usable id and number."""
    head, _ = _split(raw[:_HEAD_LIMIT])
    msg: Message = BytesHeaderParser(policy=compat32).parsebytes(head)
    if msg.get_content_type() != "message/partial":
        return None
    set_id = msg.get_param("id")
    number, total = _count(msg.get_param("number")), _count(msg.get_param("total"))
    if not isinstance(set_id, str) or not 0 < len(set_id) <= MAX_ID_LENGTH or not set_id.isprintable():
        return None
    if number is None or number > MAX_PARTS or (total is not None and not number <= total <= MAX_PARTS):
        return None
    return Fragment(set_id, number, total)


def _count(value: object) -> int | None:
    if not isinstance(value, str) or not value.strip().isdigit():
        return None
    n = int(value.strip())
    return n if n > 0 else None


def _fields(head: bytes) -> list[tuple[str, bytes]]:
    """The header fields of a block, each as (lower-case name, the field's lines as they came)."""
    fields: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, text = fields[-1]
            fields[-1] = (name, text + line)
        elif b":" in line:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), line))
    return fields


def _enclosed(name: str) -> bool:
    return name.startswith("content-") or name in _ENCLOSED


def reassemble(parts: Sequence[bytes]) -> bytes:
    """The message enclosed in ``parts`` (the raw mails of one set, numbers 1 to total, in order)."""
    if not parts:
        raise ValueError("no part to reassemble")
    outer, _ = _split(parts[0])
    body = b"".join(_split(raw)[1] for raw in parts)
    inner, content = _split(body)
    line_end = b"\r\n" if b"\r\n" in outer[:1024] or not outer else b"\n"
    head = [text for name, text in _fields(outer) if not _enclosed(name)]
    head += [text for name, text in _fields(inner) if _enclosed(name)]
    return b"".join(line if line.endswith(b"\n") else line + line_end for line in head) + line_end + content

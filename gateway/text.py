"""Header text as a person should read it.

In: a header value as the mail parser left it: RFC 2047 encoded words
(``=?utf-8?b?...?=``, what every client sends for accents or ``n°``), or raw
8-bit bytes (``BODY=8BITMIME``; the parser keeps them as surrogate escapes).
Out: the text decoded: encoded words in their charset, raw bytes as UTF-8 and,
where they are not valid UTF-8, as Latin-1. A value that cannot be decoded is
returned as it came. Pure.
"""

from __future__ import annotations

import email.errors
import email.header

_SURROGATES = range(0xDC80, 0xDD00)


def _from_raw_bytes(value: str) -> str:
    if not any(ord(ch) in _SURROGATES for ch in value):
        return value
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def display(value: str) -> str:
    """``value`` decoded for a person (see the module docstring)."""
    text = _from_raw_bytes(value)
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
        return text

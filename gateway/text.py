"""Text that reaches a person or a log: made safe for one line, headers decoded, numbers written out.

:func:`clean` and :func:`has_control`: nothing a client sent can break a reply
or a log line (control characters, line and paragraph separators replaced).
:func:`pretty_number`: a fax number as a person writes it.
:func:`display`: a header value as the mail parser left it: RFC 2047 encoded
words (``=?utf-8?b?...?=``, what every client sends for accents or ``n°``), or
raw 8-bit bytes (``BODY=8BITMIME``; the parser keeps them as surrogate
escapes). Out: the text decoded: encoded words in their charset, raw bytes as
UTF-8 and, where they are not valid UTF-8, as Latin-1. A value that cannot be
decoded is returned as it came. Pure.
"""

from __future__ import annotations

import email.errors
import email.header
import re

import phonenumbers

# C0, DEL, C1 (NEL \x85 breaks lines too) and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(value: str) -> bool:
    """Whether ``value`` holds a character that :func:`clean` would replace."""
    return _CONTROL.search(value) is not None


def clean(value: object, limit: int = 200) -> str:
    """A value safe to put in one reply or log line."""
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def pretty_number(number: str) -> str:
    """``+33145678900`` as a person writes it: ``+33 1 45 67 89 00`` (as it came, cleaned, if it is no number)."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return clean(number, 30)
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL))

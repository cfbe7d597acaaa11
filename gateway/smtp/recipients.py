"""Recipients: the strict RCPT path parser, fax-number normalisation and the destination policy.

In: the raw argument of ``RCPT TO:`` as the client sent it. Out: a
:class:`FaxRecipient` (an E.164 number, the only part of the address that may
ever reach a URL), a :class:`ReceiptRecipient` (the gateway's own receipt
address), or the answer (from :mod:`gateway.replies`) that refuses it:

- 501 5.5.4 the path is not ``<address>`` at all;
- 550 5.7.1 relaying: not a fax domain, or a relay trick (source route,
  percent hack, bang path, quoted ``@``, IP literal, trailing dot, look-alike);
- 553 5.1.3 the local part is not written with ASCII digits, dots and dashes;
- 550 5.1.1 a well-formed number that does not exist (with the reason);
- 550 5.7.1 a destination the policy forbids (country, premium rate, shared
  cost, short and emergency numbers), judged after normalisation so that
  every spelling of a number gets the same answer.

Pure functions: no I/O, no clock. The SMTP handler calls :func:`classify` once
per recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult, shortnumberinfo

from gateway import replies
from gateway.replies import Answer
from gateway.settings import NumberSettings

# What people type: ASCII digits, dots and dashes between digits, a leading +
# (or 00). `[0-9]` and not `\d`: `\d` also matches other scripts' digits.
_SPELLING = re.compile(r"\+?[0-9]+(?:[.\-][0-9]+)*")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_RECEIPT_LOCAL = re.compile(r"ar-(?P<token>[0-9a-f]{32})")
# A `%` or `!` beside a host name or an IPv4 address is routing (percent hack,
# bang path: `n%host`, `n%127.0.0.1`, `host!n`), not a typo in a number.
_ROUTE_SEPARATOR = re.compile(r"[%!]")
_HOST = re.compile(r".*[A-Za-z].*|[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
MAX_LOCAL_LENGTH = 64  # RFC 5321 4.5.3.1.1

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_LENGTH_REASONS = {
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "wrong number of digits",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "local number: add the area code",
}
# Number type -> (setting that blocks it, words for the sender).
_BLOCKED_TYPES = {
    PhoneNumberType.PREMIUM_RATE: ("block_premium_rate", "premium-rate number"),
    PhoneNumberType.SHARED_COST: ("block_shared_cost", "shared-cost number"),
}


@dataclass(frozen=True)
class FaxRecipient:
    number: str  # E.164, e.g. +33145678900


@dataclass(frozen=True)
class ReceiptRecipient:
    token: str  # the job's ar_token


Recipient = FaxRecipient | ReceiptRecipient


@dataclass(frozen=True)
class Domains:
    """Which domains are ours: fax domains, and the receipt domain when that mode is on."""

    fax: tuple[str, ...]
    receipts: str = ""


def split_path(arg: str) -> tuple[str, str] | Answer:
    """``<address> [params]`` (the text after ``TO:``) -> (address, params), strictly.

    The address is taken verbatim between the angle brackets: no comment,
    quoting or route is interpreted away, so that :func:`classify` judges
    exactly what the client wrote.
    """
    text = arg.strip()
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            return replies.BAD_SYNTAX.format(detail="missing '>' after the address")
        address, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(" "):
            return replies.BAD_SYNTAX.format(detail="text after '>' must be parameters")
    else:
        address, _, rest = text.partition(" ")
    if not address or "<" in address or ">" in address:
        return replies.BAD_SYNTAX.format(detail="expected <number@domain>")
    return address, rest.strip()


def classify(address: str, domains: Domains, numbers: NumberSettings) -> Recipient | Answer:
    """Judge one recipient address (the text between the angle brackets)."""
    relay = replies.RELAY_DENIED.format(domain=domains.fax[0])
    # Source routes (<@a,@b:user@c>), several @ (quoted "a@b"@fax.local), IP
    # literals and non-ASCII domains (look-alike letters) are never ours.
    if address.startswith("@") or ":" in address or "[" in address:
        return relay
    local, at, domain = address.rpartition("@")
    if not at or "@" in local or not domain.isascii():
        return relay
    domain = domain.lower()
    if domain in (d.lower() for d in domains.fax):
        if _routed(local):
            return relay
        return parse_number(local, numbers)
    if domains.receipts and domain == domains.receipts.lower():
        if m := _RECEIPT_LOCAL.fullmatch(local):
            return ReceiptRecipient(m["token"])
        return replies.UNKNOWN_RECEIPT_ADDRESS.answer()
    return relay


def _routed(local: str) -> bool:
    parts = _ROUTE_SEPARATOR.split(local)
    return len(parts) > 1 and any(_HOST.fullmatch(part) for part in parts)


def parse_number(local: str, settings: NumberSettings) -> FaxRecipient | Answer:
    """The local part of a fax address -> the E.164 number, or the refusal."""
    if len(local) > MAX_LOCAL_LENGTH or not _SPELLING.fullmatch(local):
        return replies.BAD_NUMBER_SYNTAX.format(local=local)
    digits = local.replace(".", "").replace("-", "")
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    try:
        parsed = phonenumbers.parse(digits, settings.default_region)
    except NumberParseException as exc:
        return replies.INVALID_NUMBER.format(local=local, reason=_PARSE_REASONS.get(exc.error_type, "not a number"))
    number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    short = shortnumberinfo.is_valid_short_number(parsed)
    if settings.block_short_codes and (short or shortnumberinfo.is_emergency_number(digits, settings.default_region)):
        return replies.DESTINATION_DENIED.format(number=local, reason="short or emergency number")
    if not phonenumbers.is_valid_number(parsed):
        possible = phonenumbers.is_possible_number_with_reason(parsed)
        why = _LENGTH_REASONS.get(possible, "no such number in the numbering plan")
        return replies.INVALID_NUMBER.format(local=local, reason=why)
    return _policy(parsed, number, settings)


def _policy(parsed: phonenumbers.PhoneNumber, number: str, settings: NumberSettings) -> FaxRecipient | Answer:
    region = phonenumbers.region_code_for_number(parsed)
    allowed = settings.allowed_regions or (settings.default_region,)
    if region not in allowed:
        where = region if region and region != "001" else f"+{parsed.country_code}"
        return replies.DESTINATION_DENIED.format(number=number, reason=f"faxes to {where} are not allowed")
    blocked = _BLOCKED_TYPES.get(phonenumbers.number_type(parsed))
    if blocked is not None and getattr(settings, blocked[0]):
        return replies.DESTINATION_DENIED.format(number=number, reason=blocked[1])
    if not _E164.fullmatch(number):  # only digits and one + may ever reach a URL
        return replies.INVALID_NUMBER.format(local=number, reason="not an E.164 number")
    return FaxRecipient(number)

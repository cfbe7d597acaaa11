"""Dates and times for a person: in one language, in a named zone, with the zone said.

In: a Unix time (or an RFC 5322 Date header), a language (``en``, ``fr``) and
a zone (``notify.timezone``: an IANA name such as ``Europe/Paris``; empty, the
system's). Out: ``Friday 4 December 2026, 18:20 CET (UTC+01:00)`` or
``vendredi 4 décembre 2026 à 18:20 CET (UTC+01:00)``. Month and day names are
written here, not taken from the process locale, so a receipt reads the same
on every machine. Pure.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "fr": ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
}
_MONTHS = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"),
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
           "novembre", "décembre"),
}  # fmt: skip


def zone(name: str) -> dt.tzinfo:
    """The zone called ``name``; the system's when empty. Raises ValueError for an unknown name."""
    if not name:
        local = dt.datetime.now().astimezone().tzinfo
        return local if local is not None else dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris, or UTC)") from None


def _offset(moment: dt.datetime) -> str:
    delta = moment.utcoffset() or dt.timedelta(0)
    minutes = int(delta.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def words(moment: dt.datetime, lang: str) -> str:
    """``moment`` (aware) as a person reads it, with its zone."""
    day, month = _DAYS[lang][moment.weekday()], _MONTHS[lang][moment.month - 1]
    name = moment.tzname() or ""
    zone_said = f"{name} ({_offset(moment)})" if name and not name.startswith(("+", "-", "UTC")) else _offset(moment)
    if lang == "fr":
        date = f"{day} {'1er' if moment.day == 1 else moment.day} {month} {moment.year}"
        return f"{date} à {moment:%H:%M} {zone_said}"
    return f"{day} {moment.day} {month} {moment.year}, {moment:%H:%M} {zone_said}"


def at(ts: float, lang: str, tz: dt.tzinfo) -> str:
    """A Unix time in ``tz``, in words."""
    return words(dt.datetime.fromtimestamp(ts, tz), lang)


def header_date(value: str, lang: str, tz: dt.tzinfo) -> str:
    """An RFC 5322 Date header in words, in ``tz``; "" when it cannot be read."""
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return ""
    if moment.tzinfo is None:  # "-0000": the time is UTC, its zone unknown (RFC 5322 3.3)
        moment = moment.replace(tzinfo=dt.UTC)
    return words(moment.astimezone(tz), lang)

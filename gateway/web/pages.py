"""The web pages' common parts: templates, times and numbers for a person, and the answers' headers.

In: a template name, the values it shows and a language. Out: an aiohttp response of
HTML made by Jinja2 with autoescaping on for every template (a subject or a file name is
shown as text, never run), with headers that keep it so: a Content-Security-Policy that
allows no script at all and only this site's stylesheet, no framing, no referrer (a
status page's address is its key), no caching. The stylesheet is served beside the pages.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from gateway import dates

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.web", "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
CSS = resources.files("gateway.web").joinpath("static/style.css").read_bytes()


def page(template: str, *, status: int = 200, **values: Any) -> web.Response:
    """``template`` rendered with ``values``, as an HTML answer with the pages' headers."""
    body = ENV.get_template(template).render(**values)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)


async def stylesheet(request: web.Request) -> web.Response:
    headers = {**HEADERS, "Cache-Control": "max-age=3600"}
    return web.Response(body=CSS, content_type="text/css", charset="utf-8", headers=headers)




class Clock:
    """Times in words, in one language and zone (``notify.timezone``)."""

    def __init__(self, lang: str, zone: dt.tzinfo) -> None:
        self.lang, self.zone = lang, zone

    def words(self, ts: float) -> str:
        return dates.at(ts, self.lang, self.zone) if ts else "-"

    def short(self, ts: float) -> str:
        """``2026-11-30 09:00`` in the zone: for tables."""
        return dt.datetime.fromtimestamp(ts, self.zone).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"

"""The sender's status page: ``GET /fax/<token>``, the link every receipt and notice carries.

In: a token from a link (:mod:`gateway.store.links` knows which job it was given out for)
and the store. Out: one page, in the receipts' language (``notify.language``) with times
in ``notify.timezone``: the fax's number, the mail's subject, the pages, where the fax is
now, its story in plain words (from the job's timeline: accepted, handed to the provider,
delivered, or not with the reason and what to do) and the job id. Nothing else: no
document, no other job, no address, no internal detail.

A token that is no token, or that no link was given out with, gets the listener's own
404, the same as any unknown path; the lookup is by the token's hash, so a wrong token
costs what a right one costs. ``notify.status_days`` after the job's final state the
page answers 410 (Gone) with no fact about the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import dates
from gateway.arcodes import lookup
from gateway.outcomes import HoldKind
from gateway.settings import Settings
from gateway.store import FINAL_STATES, AsyncStore, Job, State, Store
from gateway.store.links import TOKEN
from gateway.text import clean, display, pretty_number
from gateway.web import texts
from gateway.web.pages import Clock, page, stylesheet

log = logging.getLogger("gateway.web")


@dataclass
class View:
    """What the sender's page shows."""

    job_id: str
    number: str
    subject: str
    pages: int
    state: str
    word: str
    now: str
    next_step: str
    updated_at: float
    story: list[tuple[float, str]] = field(default_factory=list)


def _now_key(job: Job) -> str:
    if job.state == State.DELIVERED and not job.receipt_code:
        return "confirmed"
    if job.state == State.HELD and job.hold_kind == HoldKind.CREDIT:
        return "held-credit"
    return str(job.state)


def _next_key(job: Job) -> str:
    if job.state == State.DELIVERED:
        return "delivered"
    if job.state == State.CANCELLED:
        return "cancelled"
    if job.state == State.FAILED:
        code = lookup(job.receipt_code) if job.receipt_code else None
        return str(code.category) if code is not None and not code.delivered else "failed"
    return "waiting"


def _failure(job: Job, detail: str, lang: str) -> str:
    """Why it failed: the provider's receipt in words when one decided it, else the recorded reason."""
    if job.receipt_code:
        code = lookup(job.receipt_code)
        return code.french if lang == "fr" else code.english
    return clean(detail, 200)


def story(job: Job, timeline: list[Any], lang: str) -> list[tuple[float, str]]:
    """The events a sender cares about, in words, oldest first (repeats said once)."""
    words = texts.STORY[lang]
    told: list[tuple[float, str]] = []
    for event in timeline:
        kind = str(event["kind"])
        if kind not in words:
            continue
        text = words[kind].format(detail=_failure(job, str(event["detail"]), lang) if kind == "failed" else "")
        if not told or told[-1][1] != text:
            told.append((float(event["at"]), text))
    return told


def view_of(store: Store, token: str, lang: str) -> tuple[Job, View] | None:
    """The job ``token`` stands for and its page (store thread); None for no such link."""
    job = store.job_by_status_token(token)
    message = store.message(job.message_id) if job is not None else None
    if job is None or message is None:
        return None
    pages = job.pages_sent if job.state == State.DELIVERED and job.pages_sent else int(job.doc_pages or 0)
    now = texts.NOW[lang][_now_key(job)].format(reason=_failure(job, job.reason, lang).rstrip("."))
    view = View(
        job_id=job.id, number=pretty_number(job.number), subject=clean(display(message["subject"]), 200),
        pages=pages, state=str(job.state), word=texts.WORD[lang][_now_key(job)], now=now,
        next_step=texts.NEXT[lang][_next_key(job)], updated_at=job.updated_at,
        story=story(job, store.timeline(job.id), lang),
    )  # fmt: skip
    return job, view


class StatusPage:
    """The ``/fax/`` routes on the shared HTTP listener."""

    def __init__(self, settings: Settings, store: AsyncStore, *, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.lang = settings.notify.language
        self.times = Clock(self.lang, dates.zone(settings.notify.timezone))

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/fax/style.css", stylesheet), web.get("/fax/{token}", self.show)]

    def expired(self, job: Job) -> bool:
        days = self.settings.notify.status_days
        return job.state in FINAL_STATES and self.clock() > job.final_at + days * 86400.0

    async def show(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not TOKEN.fullmatch(token):
            raise web.HTTPNotFound()  # the listener's own 404, as for any unknown path
        found = await self.store.run(lambda s: view_of(s, token, self.lang))
        if found is None:
            raise web.HTTPNotFound()
        job, view = found
        t = texts.SENDER[self.lang]
        if self.expired(job):
            return page("gone.html", status=410, lang=self.lang, t=t, days=self.settings.notify.status_days)
        return page("status.html", lang=self.lang, t=t, v=view, times=self.times)

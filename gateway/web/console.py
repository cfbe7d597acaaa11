"""The administrator's console at ``/admin/``: the queue, the jobs, one job's story, the actions.

In: requests from ``http.status_networks`` (anyone else gets the listener's own 404), a
session from :mod:`gateway.web.sessions`, and the store. Out: pages in English or French
(the browser's ``Accept-Language``, else ``notify.language``):

- ``/admin/``: jobs by state, the jobs waiting for a person first (held, ambiguous,
  quarantined), health as ``/healthz`` tells it, and the provider's last answers;
- ``/admin/jobs``: the job list with ``fax-gateway jobs``'s filters (state, since,
  number, sender, limit);
- ``/admin/jobs/<id>``: the job's whole story as ``fax-gateway show`` tells it, with a
  button for each action that applies to it now;
- ``POST /admin/jobs/<id>``: retry, release, cancel, resolve sent / not sent, through
  :mod:`gateway.ops.actions` (the CLI's own code), on the timeline with the admin's name.

Every form carries the session's CSRF token; a POST without a live session or without the
token is refused (403), one for another job than its address names (400) or for a job
that changed since the page was shown (409) changes nothing. Query strings longer than
:data:`MAX_QUERY` are refused (414), and so is any field longer than :data:`MAX_FIELD` (400).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from gateway import dates
from gateway.networks import Networks
from gateway.ops import actions as admin
from gateway.ops.jobs import UsageError, number_filter, parse_since
from gateway.settings import Settings
from gateway.store import AsyncStore, Job, State, Store
from gateway.text import clean, display, pretty_number
from gateway.web import texts
from gateway.web.pages import Clock, page, stylesheet
from gateway.web.sessions import LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions, same

log = logging.getLogger("gateway.web")

MAX_QUERY = 1024
MAX_FIELD = 256
MAX_LIMIT = 1000
WAITING = (State.HELD, State.AMBIGUOUS, State.QUARANTINED)


def _release(s: Store, job_id: str, who: str) -> object:
    return admin.release(s, [job_id], actor=who)


# Each action: the states it applies to, and the call (store, job id, who) through ops/actions.py.
ACTIONS: dict[str, tuple[Sequence[State], Callable[[Store, str, str], object]]] = {
    "retry": (admin.RETRYABLE, lambda s, j, who: admin.retry(s, j, actor=who)),
    "release": ((State.HELD,), _release),
    "cancel": (admin.CANCELLABLE, lambda s, j, who: admin.cancel(s, j, actor=who)),
    "resolve-sent": ((State.AMBIGUOUS,), lambda s, j, who: admin.resolve(s, j, sent=True, actor=who)),
    "resolve-not-sent": ((State.AMBIGUOUS,), lambda s, j, who: admin.resolve(s, j, sent=False, actor=who)),
}


class Refused(Exception):
    """A request refused with ``status``; the page says ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def actions_for(job: Job) -> list[str]:
    return [name for name, (states, _) in ACTIONS.items() if job.state in states]


def _field(values: MultiMapping[Any], name: str) -> str:
    value = values.get(name, "")
    value = value if isinstance(value, str) else ""
    if len(value) > MAX_FIELD:
        raise Refused(400, f"{name}: longer than {MAX_FIELD} characters")
    return value


class Console:
    """The ``/admin/`` routes on the shared HTTP listener."""

    def __init__(self, settings: Settings, store: AsyncStore, *, clock: Callable[[], float],
                 health: Callable[[], Awaitable[dict[str, Any]]],
                 provider_answers: Callable[[], list[dict[str, Any]]],
                 on_change: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.clock = clock
        self.health = health
        self.provider_answers = provider_answers
        self.on_change = on_change  # wakes the worker and the notifier after an action
        self.networks = Networks(settings.http.status_networks)
        self.sessions = Sessions(settings.http, clock)
        self.secure = settings.http.public_url.startswith("https://")
        self.zone = dates.zone(settings.notify.timezone)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin", self._guard(self.to_front)),
            web.get("/admin/", self._guard(self.front)),
            web.get("/admin/style.css", self._guard(stylesheet)),
            web.get("/admin/login", self._guard(self.login_form)),
            web.post("/admin/login", self._guard(self.login)),
            web.post("/admin/logout", self._guard(self.logout)),
            web.get("/admin/jobs", self._guard(self.jobs)),
            web.get("/admin/jobs/{job}", self._guard(self.job)),
            web.post("/admin/jobs/{job}", self._guard(self.act)),
        ]

    # -- what every request goes through ---------------------------------------------

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
               ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:  # fmt: skip
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.networks.allows(request.remote):
                raise web.HTTPNotFound()  # the listener's own 404: the console is not there for others
            if len(request.query_string) > MAX_QUERY:
                return self._refusal(request, Refused(414, f"the query is longer than {MAX_QUERY} characters"))
            try:
                for name in request.query:
                    _field(request.query, name)
                return await handler(request)
            except Refused as exc:
                return self._refusal(request, exc)

        return guarded

    def lang(self, request: web.Request) -> str:
        for item in request.headers.get("Accept-Language", "").split(","):
            code = item.split(";")[0].strip().lower()[:2]
            if code in texts.LANGUAGES:
                return code
        return self.settings.notify.language

    def _values(self, request: web.Request, session: Session | None) -> dict[str, Any]:
        lang = self.lang(request)
        return {"lang": lang, "t": texts.LABELS[lang], "session": session, "times": Clock(lang, self.zone),
                "number": pretty_number}

    def _refusal(self, request: web.Request, exc: Refused) -> web.Response:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        return page("refused.html", status=exc.status, message=str(exc), **self._values(request, session))

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def _viewer(self, request: web.Request) -> Session:
        """The session of a page's request; without one, the browser goes to the login page."""
        session = self._session(request)
        if session is None:
            raise web.HTTPSeeOther("/admin/login")
        return session

    async def _poster(self, request: web.Request) -> tuple[Session, MultiMapping[Any]]:
        """The session and form of a POST: refused (403) without a live session and its CSRF token."""
        session = self._session(request)
        if session is None:
            raise Refused(403, "no session, or it ended: log in again")
        form = await request.post()
        if not same(session.csrf, _field(form, "csrf")):
            raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")
        return session, form

    # -- logging in and out --------------------------------------------------------------

    async def to_front(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/admin/")

    def _login_page(self, request: web.Request, *, status: int = 200, error: str = "") -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = not (0 < len(nonce) <= 100)
        if fresh:
            nonce = self.sessions.new_nonce()
        resp = page("login.html", status=status, csrf=self.sessions.login_token(nonce), error=error,
                    admins=bool(self.sessions.admins), **self._values(request, None))  # fmt: skip
        if fresh:
            resp.set_cookie(LOGIN_COOKIE, nonce, path="/admin/", httponly=True, samesite="Strict", secure=self.secure)
        return resp

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is not None:
            raise web.HTTPSeeOther("/admin/")
        return self._login_page(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        ip = request.remote or ""
        throttle = self.sessions.throttle
        if throttle.blocked(ip):  # refused before the password is even read: a flood costs no scrypt
            wait = max(1, round(throttle.retry_after(ip)))
            resp = self._refusal(request, Refused(429, f"too many failed logins: try again in {wait} s"))
            resp.headers["Retry-After"] = str(wait)
            return resp
        form = await request.post()
        if not self.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE, ""), _field(form, "csrf")):
            raise Refused(403, "the login form's CSRF token is missing or wrong: reload the page")
        name, password = _field(form, "name"), str(form.get("password", ""))
        throttle.failed(ip)  # counted before the check, so that tries in parallel are counted too
        if not await self.sessions.check(name, password):
            log.warning("console: failed login for %r from %s", clean(name, 64), ip)
            lang = self.lang(request)
            return self._login_page(request, status=401, error=texts.LABELS[lang]["bad_login"])
        throttle.succeeded(ip)
        log.info("console: %s logged in from %s", name, ip)
        resp = web.HTTPSeeOther("/admin/")
        resp.set_cookie(SESSION_COOKIE, self.sessions.open(name), path="/admin/", httponly=True, samesite="Strict",
                        secure=self.secure)  # fmt: skip
        resp.del_cookie(LOGIN_COOKIE, path="/admin/")
        raise resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self._poster(request)
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        resp = web.HTTPSeeOther("/admin/login")
        resp.del_cookie(SESSION_COOKIE, path="/admin/")
        raise resp

    # -- the pages -------------------------------------------------------------------------

    async def front(self, request: web.Request) -> web.StreamResponse:
        session = self._viewer(request)

        def read(s: Store) -> tuple[dict[str, int], list[Job]]:
            return admin.summary(s), s.list_jobs(states=[str(x) for x in WAITING], limit=100)

        counts, waiting = await self.store.run(read)
        order = {state: i for i, state in enumerate(WAITING)}
        waiting.sort(key=lambda j: (order.get(j.state, 9), -j.created_at))
        return page("front.html", counts=counts, waiting=waiting, health=await self.health(),
                    answers=self.provider_answers(), **self._values(request, session))  # fmt: skip

    def _filters(self, query: MultiMapping[str]) -> dict[str, Any]:
        """``fax-gateway jobs``'s filters from the query: refused (400) as the CLI refuses them."""
        states = [s for v in query.getall("state", []) for s in v.split(",") if s]
        try:
            admin.check_states(states)
            since = parse_since(query["since"], self.clock()) if query.get("since") else None
        except (admin.AdminError, UsageError) as exc:
            raise Refused(400, str(exc)) from None
        number = query.get("number", "").strip()
        limit_text = query.get("limit", "") or "200"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise Refused(400, f"limit: {clean(limit_text, 20)!r} is not a number from 1 to {MAX_LIMIT}")
        return {
            "states": states, "since": since, "sender": query.get("sender", "").strip() or None,
            "number": number_filter(number, self.settings.numbers.default_region) if number else None,
            "limit": int(limit_text),
        }  # fmt: skip

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        session = self._viewer(request)
        filters = self._filters(request.query)
        found = await self.store.run(lambda s: s.list_jobs(**filters))
        form = {k: request.query.get(k, "") for k in ("since", "number", "sender", "limit")}
        return page("jobs.html", jobs=found, form=form, chosen=set(filters["states"]), states=[str(s) for s in State],
                    **self._values(request, session))  # fmt: skip

    async def job(self, request: web.Request) -> web.StreamResponse:
        session = self._viewer(request)
        job_id = request.match_info["job"]
        try:
            info = await self.store.run(lambda s: admin.show(s, job_id))
        except admin.AdminError:
            raise web.HTTPNotFound() from None
        job = await self.store.run(lambda s: s.get_job(job_id))
        if job is None:
            raise web.HTTPNotFound()
        done = request.query.get("done", "")
        values = self._values(request, session)
        return page("job.html", info=info, job=job, fields=self._fields(info, values["times"]),
                    actions=actions_for(job), done=done if done in ACTIONS else "", **values)  # fmt: skip

    def _fields(self, info: dict[str, Any], times: Clock) -> list[tuple[str, str]]:
        """One job's facts as ``fax-gateway show`` lists them."""
        job, msg = info["job"], info["message"]
        client = msg.get("client_addr", "") + (f" (user {msg['auth_user']})" if msg.get("auth_user") else "")
        upload = "not uploaded yet"
        if msg.get("upload_key"):
            upload = f"{msg['upload_key']} stored {times.short(msg.get('uploaded_at', 0))}"
            if msg.get("object_deleted_at"):
                upload += f", removed {times.short(msg['object_deleted_at'])}"
        document = f"{msg.get('doc_type', '')}, {msg.get('doc_pages', 0)} pages, {msg.get('doc_bytes', 0)} bytes"
        fields = [
            ("number", pretty_number(job["number"])), ("created", times.short(job["created_at"])),
            ("attempts", str(job["attempts"])), ("provider ref", job["provider_ref"] or "-"),
            ("submitted", times.short(job["submitted_at"])), ("final", times.short(job["final_at"])),
            ("receipt code", job["receipt_code"] or "-"), ("pages sent", str(job["pages_sent"])),
            ("message", job["message_id"]), ("envelope from", msg.get("envelope_from", "")),
            ("From", display(msg.get("header_from", ""))), ("Reply-To", display(msg.get("reply_to", ""))),
            ("Subject", display(msg.get("subject", ""))), ("Message-ID", msg.get("message_id_header", "")),
            ("client", client), ("upload", upload),
            ("document", document),
        ]  # fmt: skip
        if info["siblings"]:
            fields.append(("same message", ", ".join(info["siblings"])))
        for key, label in (("documents", "part"), ("skipped", "skipped")):
            for doc in msg.get(key) or []:
                if isinstance(doc, dict):
                    fields.append((label, ", ".join(f"{k}={v}" for k, v in doc.items())))
        return [(k, clean(v, 1000)) for k, v in fields if str(v).strip()]

    # -- the actions ---------------------------------------------------------------------------

    async def act(self, request: web.Request) -> web.StreamResponse:
        session, form = await self._poster(request)
        job_id = request.match_info["job"]
        if _field(form, "job") != job_id:
            raise Refused(400, "the form names another job than its address: nothing was done")
        action = _field(form, "action")
        if action not in ACTIONS:
            raise Refused(400, f"no action {clean(action, 40)!r}")
        seen = _field(form, "seen")
        call = ACTIONS[action][1]

        def run(s: Store) -> None:
            job = s.get_job(job_id)
            if job is None:
                raise Refused(404, f"no job {clean(job_id, 40)!r}")
            if str(job.state) != seen:
                raise Refused(409, f"job {job.id} changed since the page was shown: it is now {job.state}; nothing was"
                                   " done")  # fmt: skip
            call(s, job_id, session.name)

        try:
            await self.store.run(run)
        except admin.AdminError as exc:
            raise Refused(409, str(exc)) from None
        log.info("console: %s did %s on job %s", session.name, action, job_id, extra={"job_id": job_id})
        self.on_change()
        raise web.HTTPSeeOther(f"/admin/jobs/{job_id}?done={action}")

"""The administrator's console over plain HTTP: logins, sessions, CSRF, bad input, and the actions' timeline."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp

from gateway.ops import actions
from gateway.store import State, Store
from tests.support_clock import FakeClock
from tests.support_receipts import Running
from tests.support_web import ADMIN, PASSWORD, WebClient, csrf_of, put_job, web_table

PAUSED = {"delivery": {"paused": True}}  # jobs stay where the test puts them


async def _state(r: Running, job_id: str) -> State:
    job = await r.gw.store.run(lambda s: s.get_job(job_id))
    assert job is not None
    return job.state


async def _operator_events(r: Running, job_id: str) -> list[tuple[str, str]]:
    rows = await r.gw.store.run(lambda s: s.timeline(job_id))
    return [(e["kind"], e["detail"]) for e in rows if e["kind"].startswith("operator")]


async def test_login_gives_a_strict_httponly_cookie_and_the_front_page_shows_the_queue(running: Any) -> None:
    r: Running = await running(web_table())
    r.sim.set_fault("code:103")  # wrong credentials: the job is held, the provider's answer is on the front page
    await r.send()
    await r.gw.worker.drain()
    client = WebClient(r)
    try:
        assert (await client.get("/admin/", follow=False))[0] == 303  # to the login page
        _, form = await client.get("/admin/login")
        data = {"csrf": csrf_of(form), "name": ADMIN, "password": PASSWORD}
        async with client.session.post(client.base + "/admin/login", data=data, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/admin/"
            cookie = resp.cookies["fgw_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/admin/"
        assert not cookie["secure"]  # public_url is http here
        status, page = await client.get("/admin/")
        assert status == 200
        (job,) = await r.jobs()
        assert job.state == State.HELD and f'id="job-{job.id}"' in page
        assert "degraded" in page and "103" in page
        assert page.index("Waiting for a person") < page.index("Jobs by state")
    finally:
        await client.close()


async def test_the_cookie_is_secure_when_the_public_url_is_https(running: Any) -> None:
    r: Running = await running(web_table(public_url="https://fax.example.com") | PAUSED)
    client = WebClient(r)
    try:
        async with client.session.get(client.base + "/admin/login") as resp:
            form, login = await resp.text(), resp.cookies["fgw_login"]
        assert login["secure"]  # so the jar keeps it for https only: the test sends it by hand
        data = {"csrf": csrf_of(form), "name": ADMIN, "password": PASSWORD}
        headers = {"Cookie": f"fgw_login={login.value}"}
        async with client.session.post(client.base + "/admin/login", data=data, headers=headers,
                                       allow_redirects=False) as resp:  # fmt: skip
            assert resp.status == 303 and resp.cookies["fgw_session"]["secure"]
    finally:
        await client.close()


async def test_the_console_is_not_there_for_other_networks(running: Any) -> None:
    r: Running = await running(web_table(status_networks=["192.0.2.0/24"]) | PAUSED)
    client = WebClient(r)
    try:
        unknown = await client.get("/no/such/page")
        for path in ("/admin/", "/admin/login", "/admin/jobs", "/admin/style.css"):
            assert await client.get(path) == unknown, path
        assert await client.post("/admin/login", {"name": ADMIN, "password": PASSWORD}) == unknown
    finally:
        await client.close()


async def test_forged_and_expired_sessions_are_refused_and_change_nothing(running: Any) -> None:
    clock = FakeClock()
    r: Running = await running(web_table(admin_session_seconds=600) | PAUSED, clock=clock)
    job = await put_job(r)
    client, forger = WebClient(r), WebClient(r)
    try:
        assert (await client.login())[0] == 200
        form = await client.job_form(job) | {"action": "release"}
        # A session id nobody was given, with a CSRF token stolen from a real page.
        forger.session.cookie_jar.update_cookies({"fgw_session": secrets.token_urlsafe(32)})
        assert (await forger.get("/admin/", follow=False))[0] == 303
        assert (await forger.post(f"/admin/jobs/{job.id}", form))[0] == 403
        # The real session, past its end.
        clock.advance(601)
        status, _ = await client.get("/admin/", follow=False)
        assert status == 303
        assert (await client.post(f"/admin/jobs/{job.id}", form))[0] == 403
        assert await _state(r, job.id) == State.HELD and await _operator_events(r, job.id) == []
    finally:
        await client.close()
        await forger.close()


async def test_a_session_lives_while_it_is_used(running: Any) -> None:
    clock = FakeClock()
    r: Running = await running(web_table(admin_session_seconds=600) | PAUSED, clock=clock)
    client = WebClient(r)
    try:
        await client.login()
        for _ in range(3):
            clock.advance(500)
            assert (await client.get("/admin/", follow=False))[0] == 200
    finally:
        await client.close()


async def test_a_login_flood_is_refused_before_any_password_is_checked(running: Any) -> None:
    clock = FakeClock()
    table = web_table(login_failures_before_backoff=3, login_backoff_seconds=60) | PAUSED
    r: Running = await running(table, clock=clock)
    client = WebClient(r)
    try:
        for _ in range(3):
            status, page = await client.login(password="wrong")
            assert status == 401 and "Wrong name or password." in page
        assert (await client.login(name="nobody"))[0] == 429  # the next try is refused, whoever it names
        async with client.session.get(client.base + "/admin/login") as resp:
            form = await resp.text()
        data = {"csrf": csrf_of(form), "name": ADMIN, "password": PASSWORD}
        async with client.session.post(client.base + "/admin/login", data=data, allow_redirects=False) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) == 60
            assert "fgw_session" not in resp.cookies
        clock.advance(61)
        assert (await client.login())[0] == 200  # the right password, once the pause is over
        assert (await client.get("/admin/", follow=False))[0] == 200
    finally:
        await client.close()


async def test_every_form_needs_its_csrf_token(running: Any) -> None:
    r: Running = await running(web_table() | PAUSED)
    job = await put_job(r)
    client = WebClient(r)
    try:
        # The login form: no token, a wrong one.
        await client.get("/admin/login")
        assert (await client.post("/admin/login", {"name": ADMIN, "password": PASSWORD}))[0] == 403
        assert (await client.post("/admin/login", {"csrf": "x" * 64, "name": ADMIN, "password": PASSWORD}))[0] == 403
        assert (await client.get("/admin/", follow=False))[0] == 303  # not logged in
        await client.login()
        form = await client.job_form(job) | {"action": "release"}
        for csrf in ("", "wrong", form["csrf"][:-1]):
            assert (await client.post(f"/admin/jobs/{job.id}", form | {"csrf": csrf}))[0] == 403
        assert (await client.post("/admin/logout", {}))[0] == 403
        assert (await client.get("/admin/", follow=False))[0] == 200  # still logged in
        assert await _state(r, job.id) == State.HELD and await _operator_events(r, job.id) == []
    finally:
        await client.close()


async def test_a_tampered_action_form_changes_nothing(running: Any) -> None:
    r: Running = await running(web_table() | PAUSED)
    job, other = await put_job(r), await put_job(r, number="+33145678901")
    delivered = await put_job(r, state=State.DELIVERED, reason="delivered, 1 page(s)")
    client = WebClient(r)
    try:
        await client.login()
        form = await client.job_form(job) | {"action": "release"}
        status, page = await client.post(f"/admin/jobs/{job.id}", form | {"job": other.id})  # another job's id
        assert status == 400 and "another job" in page
        assert (await client.post(f"/admin/jobs/{other.id}", form))[0] == 400  # the form of one, the address of another
        assert (await client.post(f"/admin/jobs/{job.id}", form | {"action": "delete"}))[0] == 400
        assert (await client.post(f"/admin/jobs/{job.id}", form | {"seen": "failed"}))[0] == 409  # not what was shown
        status, page = await client.post(f"/admin/jobs/{delivered.id}", form | {"job": delivered.id,
                                                                                "seen": "delivered"})  # fmt: skip
        assert status == 409 and "only held jobs are released" in page
        assert (await client.post("/admin/jobs/0000000000000000", form | {"job": "0000000000000000"}))[0] == 404
        for j in (job, other):
            assert await _state(r, j.id) == State.HELD and await _operator_events(r, j.id) == []
        assert await _state(r, delivered.id) == State.DELIVERED
    finally:
        await client.close()


async def test_the_actions_go_on_the_timeline_with_the_admins_name(running: Any) -> None:
    r: Running = await running(web_table() | PAUSED)
    held, ambiguous = await put_job(r), await put_job(r, state=State.AMBIGUOUS, reason="test: no answer")
    client = WebClient(r)
    try:
        await client.login()
        status, page = await client.post(f"/admin/jobs/{held.id}", await client.job_form(held) | {"action": "release"})
        assert status == 200 and 'id="done"' in page
        assert await _state(r, held.id) == State.QUEUED
        assert await _operator_events(r, held.id) == [
            ("operator: release", f"released by the operator {ADMIN} (was held: test: held for a configuration fix)")
        ]
        form = await client.job_form(ambiguous) | {"action": "resolve-sent"}
        assert (await client.post(f"/admin/jobs/{ambiguous.id}", form))[0] == 200
        assert await _state(r, ambiguous.id) == State.DELIVERED
        ((kind, detail),) = await _operator_events(r, ambiguous.id)
        assert kind == "operator: resolve --sent" and detail.startswith(f"the operator {ADMIN} confirmed")
    finally:
        await client.close()


async def test_without_an_actor_the_timeline_says_the_operator_as_before(running: Any) -> None:
    r: Running = await running(web_table() | PAUSED)
    job = await put_job(r)

    def cancel(s: Store) -> None:
        actions.cancel(s, job.id)

    await r.gw.store.run(cancel)
    assert await _operator_events(r, job.id) == [("operator: cancel", "cancelled by the operator")]


async def test_bad_filters_and_over_long_queries_are_refused(running: Any) -> None:
    r: Running = await running(web_table() | PAUSED)
    client = WebClient(r)
    try:
        await client.login()
        for query, status, words in [
            ("state=nonsense", 400, "unknown state"), ("since=yesterday", 400, "neither a duration"),
            ("limit=0", 400, "limit"), ("limit=x", 400, "limit"), ("number=" + "1" * 300, 400, "longer than"),
            ("sender=a&" + "x=" * 600, 414, "longer than"),
        ]:  # fmt: skip
            got, page = await client.get(f"/admin/jobs?{query}")
            assert got == status and words in page, query
        async with client.session.get(client.base + "/admin/jobs?number=" + "9" * 20000) as resp:
            assert resp.status in (400, 414)  # past the listener's own limit on a request line
    finally:
        await client.close()


async def test_the_job_list_filters_as_fax_gateway_jobs_does(running: Any) -> None:
    r: Running = await running(web_table() | PAUSED)
    first = await put_job(r, number="+33145678901")
    second = await put_job(r, number="+33145678902", state=State.FAILED, reason="test: refused")
    client = WebClient(r)
    try:
        await client.login()
        _, page = await client.get("/admin/jobs?number=01+45+67+89+01")
        assert first.id in page and second.id not in page
        _, page = await client.get("/admin/jobs?state=failed")
        assert second.id in page and first.id not in page
        _, page = await client.get("/admin/jobs?sender=bob%40&since=1h&limit=1")
        assert (first.id in page) != (second.id in page)  # the newest one only
        status, page = await client.get(f"/admin/jobs/{second.id}")
        assert status == 200 and "test: refused" in page and "bob@example.com" in page
        assert 'id="action-retry"' in page and 'id="action-release"' not in page
    finally:
        await client.close()


async def test_a_console_without_admins_lets_nobody_in(running: Any) -> None:
    r: Running = await running(PAUSED)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        base = f"http://127.0.0.1:{r.gw.http.port}"
        async with session.get(base + "/admin/login") as resp:
            form = await resp.text()
        assert "no users" in form
        data = {"csrf": csrf_of(form), "name": ADMIN, "password": PASSWORD}
        async with session.post(base + "/admin/login", data=data, allow_redirects=False) as resp:
            assert resp.status == 401

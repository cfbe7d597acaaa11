"""The sender's status page, /fax/<token>: the link in each receipt, what the page tells, who gets a 404."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import aiohttp

from gateway.settings import Settings, from_mapping, status_links_on
from gateway.store import State
from tests.support_clock import FakeClock
from tests.support_receipts import Running
from tests.support_web import WebClient, status_link, web_table


async def _fetch(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_a_receipt_links_to_a_page_that_tells_the_faxs_story(running: Any) -> None:
    r: Running = await running(web_table())
    await r.send(pages=2, sender="scanner@example.com", subject='Invoice <script>alert("x")</script> n°42')
    (job,) = await r.settle()
    (mail,) = await r.sink.wait_for(1)
    link = status_link(mail)
    assert link.startswith(r.gw.settings.http.public_url + "/fax/")
    status, page, headers = await _fetch(link)
    assert status == 200
    assert "+33 1 45 67 89 00" in page and job.id in page and "delivered" in page
    assert "Handed to the fax provider." in page and "Delivered: the recipient&#39;s machine confirmed it." in page
    # The subject is text: escaped, never markup.
    assert "Invoice &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; n°42" in page and "<script" not in page
    # Times in words with their zone (notify.timezone is Europe/Paris in the tests).
    assert "CET (UTC+01:00)" in page or "CEST (UTC+02:00)" in page
    # Nothing beyond the job id: no address, no provider reference, no document, no other id.
    assert "scanner@example.com" not in page and job.provider_ref not in page
    assert job.message_id not in page and "/documents/" not in page
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers[
        "Content-Security-Policy"]  # fmt: skip
    assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
    # The store keeps the token's hash only.
    token = link.rsplit("/", 1)[1]
    rows = await r.rows("SELECT token_hash, job_id FROM status_links")
    assert rows == [{"token_hash": hashlib.sha256(token.encode()).hexdigest(), "job_id": job.id}]
    dump = b"".join(bytes(str(v), "utf-8") for row in await r.rows("SELECT * FROM jobs") for v in row.values())
    assert token.encode() not in dump


async def test_a_failed_fax_says_why_and_what_to_do_in_french(running: Any) -> None:
    r: Running = await running(web_table() | {"notify": {"status_links": True, "language": "fr"}})
    r.sim.receipt_codes = {"+33145678900": "31064"}  # line busy
    await r.send()
    (job,) = await r.settle()
    assert job.state == State.FAILED
    (mail,) = await r.sink.wait_for(1)
    status, page, _ = await _fetch(status_link(mail))
    assert status == 200 and 'lang="fr"' in page
    assert "non remis" in page and "Non remis : occupé." in page
    assert "La ligne était occupée. Renvoyez le message plus tard." in page


async def test_a_wrong_token_gets_the_same_404_as_any_unknown_path(running: Any) -> None:
    r: Running = await running(web_table())
    client = WebClient(r)
    try:
        unknown = await client.get("/no/such/page")
        for path in (f"/fax/{secrets.token_urlsafe(24)}", "/fax/short", "/fax/" + "A" * 33, "/fax/%00%3Cscript%3E"):
            assert await client.get(path) == unknown, path
        assert unknown[0] == 404
    finally:
        await client.close()


async def test_the_page_is_gone_status_days_after_the_final_state(running: Any) -> None:
    clock = FakeClock()
    r: Running = await running(web_table() | {"notify": {"status_links": True, "status_days": 30}}, clock=clock)
    await r.send()
    (job,) = await r.settle()
    (mail,) = await r.sink.wait_for(1)
    link = status_link(mail)
    clock.advance(29 * 86400)
    assert (await _fetch(link))[0] == 200
    clock.advance(2 * 86400)
    status, page, _ = await _fetch(link)
    assert status == 410 and "no longer kept" in page
    assert job.id not in page and "45 67 89 00" not in page


def _settings(public_url: str, links: object = "auto") -> Settings:
    return from_mapping({"http": {"public_url": public_url}, "notify": {"status_links": links}}, {})


def test_status_links_are_on_by_default_when_the_public_url_is_not_loopback() -> None:
    assert not status_links_on(_settings("http://127.0.0.1:8025"))
    assert not status_links_on(_settings("http://localhost:8025"))
    assert not status_links_on(_settings("http://[::1]:8025"))
    assert status_links_on(_settings("https://fax.example.com"))
    assert status_links_on(_settings("http://192.0.2.7:8025"))
    assert status_links_on(_settings("http://127.0.0.1:8025", True))
    assert not status_links_on(_settings("https://fax.example.com", False))


async def test_no_link_when_status_links_are_off(running: Any) -> None:
    r: Running = await running({"notify": {"status_links": False}})
    await r.send()
    await r.settle()
    (mail,) = await r.sink.wait_for(1)
    assert "/fax/" not in mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert await r.rows("SELECT * FROM status_links") == []

"""The web pages in a real browser (headless Chromium through Selenium) against a running gateway.

One browser for the module (the ``browser`` fixture); each test starts its own gateway with
the provider simulator and the relay sink, and saves screenshots under its tmp_path. The
browser is driven from a thread (its calls block) while the gateway runs on the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
from aiohttp import web

from gateway.store import State
from tests.support_docs import pdf
from tests.support_receipts import Running
from tests.support_web import ADMIN, PAGE_TIMEOUT, PASSWORD, screenshot, status_link, web_table

T = TypeVar("T")
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


async def _in_browser(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def _wait_for(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    present = expected_conditions.presence_of_element_located((By.ID, element_id))
    return WebDriverWait(driver, PAGE_TIMEOUT).until(present)


def _log_in(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(base + "/admin/login")
    driver.find_element(By.ID, "name").send_keys(ADMIN)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    _wait_for(driver, "counts")


async def _held(r: Running, **send: Any) -> None:
    """One job held for a configuration fix (the provider refuses the account), then the provider mended."""
    r.sim.set_fault("code:103")
    await r.send(**send)
    await asyncio.wait_for(r.gw.worker.drain(), 20)
    (job,) = await r.jobs()
    assert job.state == State.HELD
    r.sim.set_fault(None)


async def test_log_in_find_the_held_job_release_it_and_see_it_delivered(running: Any, browser: Any,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By

    r: Running = await running(web_table())
    await _held(r)
    (job,) = await r.jobs()
    base = f"http://127.0.0.1:{r.gw.http.port}"

    def release() -> str:
        _log_in(browser, base)
        screenshot(browser, tmp_path, "front")
        browser.find_element(By.CSS_SELECTOR, f"#job-{job.id} a").click()
        _wait_for(browser, "action-release").click()
        done = _wait_for(browser, "done").text
        screenshot(browser, tmp_path, "released")
        return str(done)

    assert "Release" in await _in_browser(release)
    (job,) = await r.settle()
    assert job.state == State.DELIVERED

    def look() -> tuple[str, str]:
        browser.refresh()
        timeline = _wait_for(browser, "timeline").text
        screenshot(browser, tmp_path, "delivered")
        return browser.find_element(By.CSS_SELECTOR, "h1 .state").text, timeline

    state, timeline = await _in_browser(look)
    assert state == "delivered" and f"released by the operator {ADMIN}" in timeline
    assert (tmp_path / "front.png").exists() and (tmp_path / "delivered.png").exists()


async def test_the_link_in_the_receipt_opens_the_senders_page(running: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    r: Running = await running(web_table())
    await r.send(pages=2)
    (job,) = await r.settle()
    (mail,) = await r.sink.wait_for(1)
    link = status_link(mail)

    def read() -> tuple[str, str, str]:
        browser.delete_all_cookies()
        browser.get(link)
        now = _wait_for(browser, "now").text
        screenshot(browser, tmp_path, "sender")
        return now, browser.find_element(By.ID, "number").text, browser.find_element(By.ID, "story").text

    now, number, story = await _in_browser(read)
    assert now == "Delivered: the recipient's machine confirmed it."
    assert number == "+33 1 45 67 89 00" and "Handed to the fax provider." in story


async def test_a_form_without_the_csrf_token_is_refused(running: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    r: Running = await running(web_table())
    await _held(r)
    (job,) = await r.jobs()
    base = f"http://127.0.0.1:{r.gw.http.port}"
    # Another site's page with a form aimed at the console: everything but the token.
    forged = (f'<form method="post" action="{base}/admin/jobs/{job.id}">'
              f'<input type="hidden" name="job" value="{job.id}"><input type="hidden" name="seen" value="held">'
              '<input type="hidden" name="action" value="cancel">'
              '<button id="go">Win a prize</button></form>')  # fmt: skip

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=forged, content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/", page)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:

        def attack() -> str:
            _log_in(browser, base)
            browser.get(other)
            browser.find_element(By.ID, "go").click()
            message = _wait_for(browser, "message").text
            screenshot(browser, tmp_path, "csrf-refused")
            return str(message)

        assert "CSRF" in await _in_browser(attack)
    finally:
        await runner.cleanup()
    (job,) = await r.jobs()
    assert job.state == State.HELD


async def test_a_script_in_a_subject_or_a_file_name_is_shown_as_text(running: Any, browser: Any,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By

    r: Running = await running(web_table())
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@example.com", "0145678900@fax.local", HOSTILE
    msg.set_content("Please fax this.\n")
    msg.add_attachment(pdf(1), maintype="application", subtype="pdf", filename=f"{HOSTILE}.pdf")
    await aiosmtplib.send(msg, sender="alice@example.com", recipients=["0145678900@fax.local"],
                          hostname="127.0.0.1", port=r.gw.smtp.port, timeout=20)  # fmt: skip
    (job,) = await r.settle()
    (mail,) = await r.sink.wait_for(1)
    link = status_link(mail)
    base = f"http://127.0.0.1:{r.gw.http.port}"

    def look() -> list[tuple[str, str, int]]:
        seen = []
        _log_in(browser, base)
        for url, element in ((f"{base}/admin/jobs/{job.id}", "fields"), (f"{base}/admin/", "counts"),
                             (f"{base}/admin/jobs", "state"), (link, "subject")):  # fmt: skip
            browser.get(url)
            text = _wait_for(browser, element).text if element != "state" else browser.page_source
            seen.append((browser.title, text, len(browser.find_elements(By.TAG_NAME, "img"))))
        screenshot(browser, tmp_path, "hostile")
        return seen

    seen = await _in_browser(look)
    job_page, _, _, sender_page = seen
    assert all(title != "pwned" for title, _, _ in seen)
    assert all(images == 0 for _, _, images in seen)  # the <img> is text, not an element
    # The subject whole; the file name as intake recorded it (the part after the last "/" of "</script>").
    assert HOSTILE in job_page[1] and "name=script><img src=x onerror=\"document.title='pwned'\">.pdf" in job_page[1]
    assert sender_page[1] == HOSTILE

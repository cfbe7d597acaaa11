"""The web pages against a whole running gateway: a logged-in HTTP client, and a real browser.

:class:`WebClient` is an aiohttp client with its own cookie jar (cookies from 127.0.0.1
kept, as a browser keeps them) that logs in to the console as :data:`ADMIN` and reads the
CSRF tokens off the pages, as a person's browser would send them. :func:`web_table`
gives the settings that turn the console and the status links on; start the gateway
with the ``running`` fixture (tests/support_receipts.py).

Fixtures (a plugin of ``tests/conftest.py``: ask for them, never import them): ``browser``,
one headless Chromium for a whole test module, driven by Selenium through Debian's
chromium-driver (``apt-get install chromium chromium-driver``; missing, the test fails
under CI and is skipped elsewhere), with a fresh profile in a temporary directory.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.passwords import hash_password
from gateway.spool import FAX_NAME, RAW_NAME
from gateway.store import Job, NewMessage, State, Store, new_id
from tests.support_docs import pdf
from tests.support_receipts import Running
from tests.support_sink import Received
from tests.support_tools import need_program

ADMIN = "alice"
PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LINK = re.compile(r"(https?://\S+/fax/[A-Za-z0-9_-]{32})")


@functools.cache
def admin_hash() -> str:
    return hash_password(PASSWORD)


def web_table(**http: Any) -> dict[str, Any]:
    """Settings (TOML shape): the console with one admin, and the status links in every mail."""
    return {"http": {"admins": [{"name": ADMIN, "password_hash": admin_hash()}], **http},
            "notify": {"status_links": True}}  # fmt: skip


def csrf_of(page: str) -> str:
    m = _CSRF.search(page)
    assert m is not None, page[:2000]
    return m[1]


def status_link(mail: Received) -> str:
    """The status page's link in a receipt mail."""
    m = _LINK.search(mail.message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert m is not None
    return m[1]


class WebClient:
    def __init__(self, r: Running) -> None:
        self.r = r
        self.base = f"http://127.0.0.1:{r.gw.http.port}"
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=kwargs.pop("follow", True), **kwargs) as resp:
            return resp.status, await resp.text()

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> tuple[int, str]:
        async with self.session.post(self.base + path, data=data, allow_redirects=kwargs.pop("follow", True),
                                     **kwargs) as resp:  # fmt: skip
            return resp.status, await resp.text()

    async def login(self, name: str = ADMIN, password: str = PASSWORD) -> tuple[int, str]:
        _, form = await self.get("/admin/login")
        return await self.post("/admin/login", {"csrf": csrf_of(form), "name": name, "password": password})

    async def job_form(self, job: Job) -> dict[str, str]:
        """The fields of the action forms on the job's page (without ``action``)."""
        status, page = await self.get(f"/admin/jobs/{job.id}")
        assert status == 200, page
        return {"csrf": csrf_of(page), "job": job.id, "seen": str(job.state)}


# -- the browser ---------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,900")  # fmt: skip
PAGE_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium (Selenium ``WebDriver``) for the whole module, on a fresh profile."""
    chromium = need_program("chromium", "chromium")
    driver_path = need_program("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, directory: Path, name: str) -> Path:
    """The page as the browser shows it, saved as ``<name>.png`` under ``directory``."""
    path = directory / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    return path


async def put_job(r: Running, *, state: State = State.HELD, number: str = "+33145678900", subject: str = "Invoice",
                  reason: str = "test: held for a configuration fix") -> Job:  # fmt: skip
    """A job as intake and the worker leave it, put in the running gateway's store."""
    message_id, job_id = new_id(), new_id()
    await asyncio.to_thread(r.gw.spool.write, message_id, {RAW_NAME: b"Subject: x\r\n\r\nx\r\n", FAX_NAME: pdf()})
    msg = NewMessage(id=message_id, envelope_from="bob@example.com", header_from="Bob <bob@example.com>",
                     reply_to="", message_id_header=f"<{message_id}@example.com>", subject=subject, date_header="",
                     client_addr="127.0.0.1", auth_user="", doc_type="pdf", doc_pages=1, doc_bytes=100)  # fmt: skip

    def put(s: Store) -> Job:
        s.add_message(msg, [(job_id, number, "")], "accepted for test")
        if state != State.QUEUED:
            hold = {"hold_kind": "config"} if state == State.HELD else {}
            s.transition(job_id, state, reason, expect=[State.QUEUED], **hold)
        job = s.get_job(job_id)
        assert job is not None
        return job

    return await r.gw.store.run(put)

"""/healthz and /metrics of a gateway on the PostgreSQL store: the store reachable or not, within a bound;
the store's counts are the cluster's, the process's own figures this instance's."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import psycopg
import pytest

from gateway.daemon import health
from gateway.daemon.app import Gateway
from tests.support_cluster import Cluster, mail_to, queued

PAUSED = {"delivery": {"paused": True}}


async def _health(gw: Gateway) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{gw.http.port}/healthz") as resp:
        return resp.status, json.loads(await resp.text())


async def _metrics(gw: Gateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{gw.http.port}/metrics") as resp:
        return await resp.text()


def _server_of(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"PostgreSQL database '{info['dbname']}' on '{info['host']}' port {info['port']}"


async def test_healthz_names_the_postgresql_server_and_fails_once_it_is_lost(cluster: Cluster) -> None:
    gw = await cluster.start("a", PAUSED)
    status, body = await _health(gw)
    assert status == 200 and body["store"] == {
        "ok": True, "detail": f"{_server_of(cluster.dsn)}: a probe row was written and deleted"}  # fmt: skip
    dbname = psycopg.conninfo.conninfo_to_dict(cluster.dsn)["dbname"]
    admin = psycopg.conninfo.make_conninfo(cluster.dsn, dbname="postgres")

    def cut_off() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))

    def let_in() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")

    await asyncio.to_thread(cut_off)
    try:
        status, body = await _health(gw)
    finally:
        await asyncio.to_thread(let_in)
    assert status == 503 and body["status"] == "failing" and body["store"]["ok"] is False
    detail = body["store"]["detail"]
    assert detail.startswith(f"{_server_of(cluster.dsn)}: the job store did not answer: ")
    password = psycopg.conninfo.conninfo_to_dict(cluster.dsn)["password"]
    assert password not in json.dumps(body)


async def test_healthz_answers_within_its_bound_while_the_store_does_not(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "STORE_SECONDS", 0.5)
    gw = await cluster.start("a", PAUSED)
    gate = threading.Event()
    stuck = asyncio.ensure_future(gw.store.run(lambda s: gate.wait(60)))  # the store's thread held, as by a lost server
    try:
        status, body = await asyncio.wait_for(_health(gw), 10)
    finally:
        gate.set()
        await stuck
    assert status == 503 and body["store"] == {
        "ok": False, "detail": f"{_server_of(cluster.dsn)}: the job store did not answer within 0.5 s"}  # fmt: skip


async def test_the_store_counts_are_the_clusters_and_the_refusals_each_instances_own(cluster: Cluster) -> None:
    a = await cluster.start("a", PAUSED)
    b = await cluster.start("b", PAUSED)
    queued(await asyncio.to_thread(mail_to, a.smtp.port))
    code, _ = await asyncio.to_thread(mail_to, a.smtp.port, to="12@fax.local")  # refused at RCPT: a's own count
    assert code >= 500
    seen_a, seen_b = await _metrics(a), await _metrics(b)
    for text in (seen_a, seen_b):
        assert 'faxgw_jobs{state="queued"} 1.0' in text and "faxgw_messages_accepted_total 1.0" in text
        assert "# HELP faxgw_jobs Jobs in the store, by state (from the store: with the PostgreSQL store" in text
    assert "faxgw_smtp_refusals_total{reason=" in seen_a and "faxgw_smtp_refusals_total{reason=" not in seen_b
    assert "(this instance only)" in seen_b

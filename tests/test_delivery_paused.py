"""``delivery.paused``: jobs are accepted and spooled, nothing is submitted; a restart
without it sends them."""

from __future__ import annotations

import pytest

from gateway.store import State
from tests.support_clock import FakeClock
from tests.support_delivery import Delivery
from tests.support_net import free_port
from tests.support_settings import SettingsFactory, deep_merge
from tests.support_simulator import SimFactory, provider_env, provider_table


def test_paused_is_off_by_default(make_settings: SettingsFactory) -> None:
    assert make_settings().delivery.paused is False


def test_paused_must_be_a_boolean(make_settings: SettingsFactory) -> None:
    from gateway.settings import SettingsError

    with pytest.raises(SettingsError, match=r"delivery\.paused: expected true or false"):
        make_settings({"delivery": {"paused": "yes"}})


async def test_a_paused_worker_submits_nothing_and_a_restart_sends_the_spooled_jobs(
    make_settings: SettingsFactory,
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory()
    port = free_port()
    base = deep_merge(
        {"http": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}}, provider_table(sim)
    )
    clock = FakeClock()
    paused = Delivery(make_settings(deep_merge(base, {"delivery": {"paused": True}}), provider_env()), clock)
    await paused.start()
    try:
        (job_id,) = await paused.spool_message()
        await paused.drain()
        assert (await paused.job(job_id)).state == State.QUEUED
    finally:
        await paused.stop()
    assert sim.requests == []

    running = Delivery(make_settings(base, provider_env()), clock)
    await running.start()
    try:
        await running.drain()
        assert (await running.job(job_id)).state == State.SUBMITTED
    finally:
        await running.stop()
    assert [r.params["ref"] for r in sim.requests] == [job_id]

"""The one doubling rule behind every retry (gateway.backoff)."""

from __future__ import annotations

from gateway.backoff import doubling, jittered


def test_the_pause_doubles_from_the_first_up_to_the_cap() -> None:
    assert [doubling(10.0, n, 100.0) for n in range(6)] == [10.0, 20.0, 40.0, 80.0, 100.0, 100.0]
    assert doubling(10.0, -3, 100.0) == 10.0  # no try failed yet: the first pause
    assert doubling(1.0, 10_000, 3600.0) == 3600.0  # no overflow far past the cap


def test_jitter_stays_between_half_and_all_of_the_pause() -> None:
    pauses = [jittered(100.0) for _ in range(500)]
    assert all(50.0 <= p <= 100.0 for p in pauses)
    assert max(pauses) - min(pauses) > 10.0  # spread, not one value

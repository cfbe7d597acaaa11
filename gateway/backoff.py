"""How long to wait before trying again: one doubling rule for every retry in the gateway.

In: how many tries have failed, the first pause and the longest one. Out: the
pause in seconds. The delivery worker (submissions), the notifier (mails to the
relay) and SMTP AUTH throttling (failed logins from one address) all double
their pause from a first value up to a cap; the worker also spreads its
retries (jitter), so that jobs that failed together do not retry together.
"""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 60  # 2**60 times any first pause is past every cap


def doubling(first: float, doublings: int, cap: float) -> float:
    """``first`` doubled ``doublings`` times (none below 0), at most ``cap``."""
    return min(cap, first * 2.0 ** min(max(doublings, 0), _MAX_DOUBLINGS))


def jittered(pause: float) -> float:
    """A pause between half of ``pause`` and all of it, at random."""
    return pause / 2 + random.uniform(0, pause / 2)

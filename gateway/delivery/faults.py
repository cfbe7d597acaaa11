"""The simulator's fault modes, for its ``--help`` and its checks (a light module: the CLI reads it).

In: nothing. Out: each fault's name and what the simulator does with it,
including whether the fax goes out, which is what matters to the gateway.
"""

from __future__ import annotations

import re

# Each fault, and whether the fax goes out with it (that is what matters to the gateway).
FAULT_HELP = {
    "5xx": "answers HTTP 500; sends nothing",
    "html": "answers a 200 maintenance page in HTML; sends nothing",
    "hang": "never answers; sends nothing",
    "empty": "answers an empty 200; sends nothing",
    "no-credit": "answers 108 (no credit); sends nothing",
    "reset": "closes the connection in the middle of its answer; the fax is sent and called back",
    "no-ref": "answers 113 without a reference; the fax is sent and called back",
    "early-callback": "calls the receipt back before it answers",
    "duplicate-callback": "calls the receipt back twice at once",
    "code:NNN": "answers the code NNN (code:113 accepts without checking)",
    "delay:S": "answers S seconds late, as it would have at once; the fax is sent and called back after the answer",
}

# The faults that take a value (code:NNN, delay:S): the others are named as they are.
PATTERNS = {"code:NNN": r"code:\d{1,6}", "delay:S": r"delay:\d{1,4}(\.\d{1,3})?"}


def is_fault(name: str) -> bool:
    return (name in FAULT_HELP and name not in PATTERNS) or any(re.fullmatch(p, name) for p in PATTERNS.values())

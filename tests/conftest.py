"""The test suite's plugins: every ``tests/support_*.py`` module, loaded once, under one name.

Fixtures live in those modules and pytest finds them there: a test asks for a
fixture by naming it as an argument and never imports it. Ordinary helpers
(classes, functions, constants) are imported by name from the module that
defines them, always as ``tests.support_*`` (``tests/test_test_hygiene.py`` checks all this).
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support_bombs",
    "tests.support_clock",
    "tests.support_cluster",
    "tests.support_delivery",
    "tests.support_docs",
    "tests.support_fleet",
    "tests.support_mail",
    "tests.support_net",
    "tests.support_office",
    "tests.support_ops",
    "tests.support_postgres",
    "tests.support_proc",
    "tests.support_receipts",
    "tests.support_s3",
    "tests.support_scan",
    "tests.support_settings",
    "tests.support_simulator",
    "tests.support_sink",
    "tests.support_smtp",
    "tests.support_tools",
    "tests.support_web",
]

# Support modules import each other: mark them all for assertion rewriting before the first is
# imported, so their asserts are rewritten whatever the order above.
pytest.register_assert_rewrite(*pytest_plugins)

"""Programs the tests run that are not Python packages (systemd-analyze, swaks, ...).

In CI (``CI=true``, as ``.ci/run`` runs) a missing program fails the test: a
skipped test proves nothing, and ``.ci/run`` installs every one of them.
Elsewhere the test is skipped with the command that installs it.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def need_program(name: str, debian_package: str, also_in: str = "") -> str:
    """The path of ``name``; fails (CI) or skips (elsewhere) when it is not installed.

    ``also_in``: a directory pattern to look in when ``name`` is not on the PATH
    (``/usr/lib/postgresql/*/bin``: Debian keeps PostgreSQL's programs there).
    """
    path = shutil.which(name)
    if path is None and also_in:
        path = next((p for p in sorted(glob.glob(os.path.join(also_in, name)), reverse=True) if os.access(p, os.X_OK)),
                    None)  # fmt: skip
    if path is None:
        why = f"{name} is not installed: apt-get install {debian_package}"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    return path

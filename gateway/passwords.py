"""Password hashes for SMTP AUTH users.

In: a password (from ``fax-gateway hash-password``, or from an AUTH exchange).
Out: a salted scrypt hash ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (base64 parts)
for the settings file, or whether a password matches such a hash. Checking
costs tens of milliseconds of CPU on purpose: callers run it off the event
loop. Comparisons are constant-time, and an unknown user costs the same as a
wrong password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PREFIX = "scrypt$"
_N, _R, _P = 2**14, 8, 1
_KEY_BYTES = 32
_MAXMEM = 64 * 1024 * 1024
_FORMAT = re.compile(
    r"scrypt\$(?P<n>[0-9]{1,8})\$(?P<r>[0-9]{1,3})\$(?P<p>[0-9]{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/=]{16,})\$(?P<key>[A-Za-z0-9+/=]{16,})"
)


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=length)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _derive(password.encode(), salt, _N, _R, _P, _KEY_BYTES)
    b64 = base64.b64encode
    return f"{PREFIX}{_N}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def is_hash(text: str) -> bool:
    """Whether ``text`` is a hash this module can check (used by settings validation)."""
    m = _FORMAT.fullmatch(text)
    if m is None:
        return False
    n, r, p = int(m["n"]), int(m["r"]), int(m["p"])
    return n > 1 and n & (n - 1) == 0 and 128 * r * n <= _MAXMEM // 2 and 1 <= p <= 16


# Checked when the user is unknown, so that the answer takes as long.
_DUMMY = hash_password(secrets.token_hex(16))


def verify_password(password: bytes, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (None: unknown user, always False)."""
    m = _FORMAT.fullmatch(stored or _DUMMY)
    if m is None or not is_hash(m.group(0)):
        m = _FORMAT.fullmatch(_DUMMY)
        assert m is not None
        stored = None
    try:
        salt, key = base64.b64decode(m["salt"], validate=True), base64.b64decode(m["key"], validate=True)
    except ValueError:
        return False
    derived = _derive(password, salt, int(m["n"]), int(m["r"]), int(m["p"]), len(key))
    return hmac.compare_digest(derived, key) and stored is not None

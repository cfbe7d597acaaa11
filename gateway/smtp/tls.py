"""TLS for the SMTP listeners: one server context per listener, built the same way by the server and check-config.

In: a :class:`~gateway.settings.Listener` with its certificate and key filled in
(``SmtpSettings.effective_listeners``). Out: an :class:`ssl.SSLContext` for it
(:func:`server_context`), or ``ssl.SSLError`` / ``OSError`` saying why the
certificate or key does not load.

``tls_min_version = "TLSv1.2"`` (the default) or ``"TLSv1.3"`` keeps Python's
defaults. ``"TLSv1"`` and ``"TLSv1.1"``, for old printers, also need OpenSSL 3's
security level 0 (``@SECLEVEL=0`` in the cipher string: level 1 and above
refuse the SHA-1 signatures those versions use); that is set on this listener's
context alone, and :func:`legacy_warning` is the line start-up logs about it.
"""

from __future__ import annotations

import ssl
import warnings

from gateway.settings import Listener

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"


def server_context(listener: Listener) -> ssl.SSLContext:
    """Blocking (reads the files): the server context of ``listener``; raises when they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if listener.legacy_tls:
        with warnings.catch_warnings():  # Python deprecates TLS 1.0 and 1.1; old printers speak nothing else
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = VERSIONS[listener.tls_min_version]
        context.set_ciphers(LEGACY_CIPHERS)
    elif listener.tls_min_version != "TLSv1.2":
        context.minimum_version = VERSIONS[listener.tls_min_version]
    context.load_cert_chain(listener.tls_cert, listener.tls_key)
    return context


def legacy_warning(listener: Listener) -> str:
    """What start-up logs for a listener that accepts TLS older than 1.2."""
    return (
        f"SMTP listener {listener.name}: TLS from {listener.tls_min_version} accepted, with OpenSSL security"
        f" level 0 on this listener ({LEGACY_CIPHERS}): weak ciphers and SHA-1 are allowed here; keep it for"
        " old printers on a trusted network"
    )


def describe(listener: Listener) -> str:
    """One line about a listener, for logs and check-config."""
    if listener.tls == "none":
        how = "plain SMTP, no TLS"
    else:
        how = {"starttls": "STARTTLS", "implicit": "implicit TLS"}[listener.tls]
        how += f" from {listener.tls_min_version}, certificate {listener.tls_cert}"
    return f"{listener.name}: {listener.listen}, {how}"

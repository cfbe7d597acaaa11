"""Clients nobody here wrote: swaks, curl and msmtp send a fax over loopback through each kind of listener.

They run as programs (``tests.support_tools.need_program``: ``.ci/run`` installs
them); each must log in (the loopback is not a trusted network here), send, and
hear the 250 with the job id. smtplib with a TLS 1.0-only context against a
legacy listener is in ``tests/test_smtp_listeners.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support_smtp import PASSWORD, Harness, Starter, fax_mail, make_cert, users
from tests.support_tools import need_program

SENDER, RECIPIENT = "scan@example.com", "0145678900@fax.local"
QUEUED = re.compile(r"250 2\.0\.0 OK: queued as [0-9a-f]{16}")


@dataclass
class Site:
    """A started gateway with STARTTLS and implicit TLS listeners, and the files a client needs."""

    harness: Harness
    cert: str
    mail: Path
    tmp: Path

    def port(self, name: str) -> int:
        return self.harness.server.port_of(name)


@pytest.fixture
async def site(smtp_gateway: Starter, tmp_path: Path) -> Site:
    cert, key = make_cert(tmp_path)
    listeners = [{"listen": "127.0.0.1:0", "tls": "starttls", "name": "submit"},
                 {"listen": "127.0.0.1:0", "tls": "implicit", "name": "smtps"}]  # fmt: skip
    h = await smtp_gateway({"smtp": {"users": users(), "trusted_networks": [{"cidr": "10.0.0.0/8"}],
                                     "tls_cert": cert, "tls_key": key, "listeners": listeners}})  # fmt: skip
    mail = tmp_path / "scan.eml"
    mail.write_bytes(fax_mail(sender=SENDER, to=RECIPIENT).replace(b"\n", b"\r\n"))
    return Site(h, cert, mail, tmp_path)


async def run_client(argv: list[str], stdin: Path | None = None) -> tuple[int, str]:
    """Run a client program (bounded); its exit status and everything it printed."""
    with open(stdin or os.devnull, "rb") as source:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=source, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def assert_sent(site: Site, code: int, out: str, user: str = "printer") -> None:
    assert code == 0, out
    jobs = await site.harness.jobs()
    assert [j.number for j in jobs] == ["+33145678900"], out
    assert (await site.harness.run(lambda s: s.message(jobs[0].message_id)))["auth_user"] == user


# -- swaks ---------------------------------------------------------------------------------

def swaks(site: Site, port: str, *options: str) -> list[str]:
    return [need_program("swaks", "swaks"), "--server", "127.0.0.1", "--port", str(site.port(port)),
            "--from", SENDER, "--to", RECIPIENT, "--data", f"@{site.mail}", "--auth-user", "printer",
            "--auth-password", PASSWORD, "--timeout", "30", *options]  # fmt: skip


@pytest.mark.parametrize(
    ("port", "options", "heard"),
    [
        ("submit", ["--tls", "--auth", "LOGIN"], ["<~  334 VXNlcm5hbWU6", "<~  334 UGFzc3dvcmQ6"]),
        ("submit", ["--tls", "--auth", "PLAIN"], ["~> AUTH PLAIN "]),
        ("smtps", ["--tls-on-connect", "--auth", "LOGIN"], ["<~  334 VXNlcm5hbWU6"]),
        ("smtps", ["--tls-on-connect", "--auth", "PLAIN"], ["~> AUTH PLAIN "]),
    ],
    ids=["starttls-login", "starttls-plain", "tls-on-connect-login", "tls-on-connect-plain"],
)
async def test_swaks(site: Site, port: str, options: list[str], heard: list[str]) -> None:
    code, out = await run_client(swaks(site, port, *options))
    for line in heard:
        assert line in out, out
    assert QUEUED.search(out), out
    await assert_sent(site, code, out)


async def test_swaks_without_auth_is_told_to_authenticate(site: Site) -> None:
    login = ("--auth-user", "printer", "--auth-password", PASSWORD)
    argv = [a for a in swaks(site, "submit", "--tls") if a not in login]
    code, out = await run_client(argv)
    assert code != 0 and "530 5.7.0 Authentication required" in out, out
    assert await site.harness.jobs() == []


# -- curl ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("smtp://127.0.0.1:{submit}", ["--ssl-reqd", "--login-options", "AUTH=LOGIN"]),
        ("smtp://127.0.0.1:{submit}", ["--ssl-reqd", "--login-options", "AUTH=PLAIN"]),
        ("smtps://127.0.0.1:{smtps}", ["--login-options", "AUTH=LOGIN"]),
        ("smtps://127.0.0.1:{smtps}", []),
    ],
    ids=["smtp-starttls-login", "smtp-starttls-plain", "smtps-login", "smtps-default"],
)
async def test_curl(site: Site, url: str, options: list[str]) -> None:
    curl = need_program("curl", "curl")
    target = url.format(submit=site.port("submit"), smtps=site.port("smtps"))
    argv = [curl, "--silent", "--show-error", "--verbose", "--max-time", "30", "--url", target,
            "--cacert", site.cert, "--user", f"printer:{PASSWORD}", "--mail-from", SENDER, "--mail-rcpt", RECIPIENT,
            "--upload-file", str(site.mail), *options]  # fmt: skip
    code, out = await run_client(argv)
    assert QUEUED.search(out), out
    await assert_sent(site, code, out)


# -- msmtp ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "options"),
    [
        ("submit", ["--tls=on", "--tls-starttls=on", "--auth=login"]),
        ("submit", ["--tls=on", "--tls-starttls=on", "--auth=plain"]),
        ("smtps", ["--tls=on", "--tls-starttls=off", "--auth=login"]),
    ],
    ids=["starttls-login", "starttls-plain", "implicit-login"],
)
async def test_msmtp(site: Site, port: str, options: list[str]) -> None:
    msmtp = need_program("msmtp", "msmtp")
    config = site.tmp / "msmtprc"
    config.write_text("")  # no user's configuration: only what the command line says
    config.chmod(0o600)
    argv = [msmtp, f"--file={config}", "--host=127.0.0.1", f"--port={site.port(port)}",
            f"--tls-trust-file={site.cert}", "--user=printer", f"--passwordeval=echo '{PASSWORD}'",
            f"--from={SENDER}", "--debug", *options, RECIPIENT]  # fmt: skip
    code, out = await run_client(argv, stdin=site.mail)
    assert QUEUED.search(out), out
    await assert_sent(site, code, out)

"""The trusted-MTA reference: a throwaway Postfix instance on a loopback port.

Its own configuration, queue and data directories live under a scratch
directory; it listens on 127.0.0.1 only, relays nothing, and puts every mail
it accepts on hold (``HOLD``), so each one is queued to disk (cleanup fsyncs
the queue file before smtpd answers 250) and stays there. ``stop()`` shuts
the instance down; the caller removes the scratch directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"

# Services needed to receive and queue; no chroot (the scratch queue is not set up for it).
_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
myhostname = postfix-reference.localdomain
mydestination =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# Keep every accepted mail in the hold queue: on disk, never delivered.
smtpd_data_restrictions = check_client_access static:HOLD
smtpd_peername_lookup = no
message_size_limit = 20480000
default_process_limit = 100
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
alias_maps =
alias_database =
local_recipient_maps =
biff = no
"""


def available() -> bool:
    return Path(POSTFIX).exists() and Path(SMTP_SOURCE).exists()


def install() -> None:
    """Install Debian's postfix package (it brings smtp-source); the system instance is left stopped."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env, timeout=900)


def _reaped_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class PostfixReference:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.etc = root / "etc"
        self._running = False

    def _postfix(self, *args: str) -> None:
        subprocess.run([POSTFIX, "-c", str(self.etc), *args], check=True, timeout=120, capture_output=True)

    def start(self) -> None:
        for d in ("etc", "queue", "data"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.etc / "main.cf").write_text(_MAIN_CF.format(root=self.root))
        (self.etc / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        shutil.chown(self.root / "data", user="postfix")
        # set-permissions/create-missing lay out the queue with the right owners.
        self._postfix("check")
        self._postfix("start")
        self._running = True

    def queued(self) -> int:
        """Mails in the queue directory (hold, plus any still in incoming)."""
        queue = self.root / "queue"
        return sum(
            len(files) for sub in ("hold", "incoming", "active", "deferred") for _, _, files in os.walk(queue / sub)
        )

    def cpu(self) -> float:
        """CPU seconds used by the instance: the master, its live children and those it has reaped."""
        from harness import cpu_seconds

        pid_file = self.root / "queue" / "pid" / "master.pid"
        master = int(pid_file.read_text().split()[0])
        # The master and its live children (cpu_seconds counts the tree), plus those it has reaped.
        return _reaped_cpu(master) + cpu_seconds(master)

    def stop(self) -> None:
        if self._running:
            self._running = False
            subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], timeout=120, capture_output=True)

"""The README stays true: its commands, its troubleshooting tables, its command list."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from gateway import replies
from gateway.delivery import provider
from gateway.ops import cli
from gateway.ops import troubleshooting as docs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def test_quick_start_is_two_commands() -> None:
    install, test = (block.strip() for block in _shell_blocks()[:2])
    assert "\n" not in install and "\n" not in test
    assert "libmagic1" in install and "pip install ." in install and install.endswith("fax-gateway demo")


def test_the_test_command_is_what_ci_runs() -> None:
    test = _shell_blocks()[1].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_troubleshooting_is_generated_from_the_tables() -> None:
    section = README.split(docs.START, 1)[1].split(docs.END, 1)[0]
    fix = "run: python3 -m gateway.ops.troubleshooting, paste into README.md"
    assert section.strip() == docs.troubleshooting().strip(), fix


def test_every_reply_and_code_is_listed() -> None:
    for name, reply in replies.all_replies().items():
        code = f"{reply.code} {reply.enhanced}".strip()
        assert re.search(rf"^\| `{re.escape(code)}` \| {name} \|", README, re.M), name
    for code in provider.ANSWERS:
        assert re.search(rf"^\| {code} \|", README, re.M), code


def test_every_command_is_documented() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        assert f"`fax-gateway {name}" in README, name

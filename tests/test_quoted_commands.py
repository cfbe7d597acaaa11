"""Every ``fax-gateway`` command a person is told to run exists, with the options it is given.

The texts: every string in the gateway's code (replies, receipts, alerts,
advice, log lines), the README, and each command's ``--help``. Each quoted
command is parsed by the CLI's own parser, with placeholders (``JOB``,
``<job>``, ``FILE``) filled in.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from gateway.ops.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
# A command runs up to the end of its backticks, or of its clause in running text.
_QUOTED = re.compile(r"`fax-gateway ([^`]+)`")
_RUNNING = re.compile(
    r"(?<![`\w/-])fax-gateway ([a-z][a-z-]+(?: --?[a-z][a-z-]*(?: (?!-)[\w.:/<>-]+)?| [A-Z][A-Z_]*| <[a-z_ ]+>)*)"
)
_PLACEHOLDER = re.compile(r"^(?:<[^>]+>|[A-Z][A-Z_]*|\.\.\.|N)$")
_VALUES = {"--since": "2h", "--state": "held", "--config": "/etc/fax-gateway/fax-gateway.toml", "--spool": "spool"}


def _strings_in_code() -> list[tuple[str, str]]:
    """Every string literal; an f-string with each ``{value}`` as a ``<value>`` placeholder."""
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        tree = ast.parse(path.read_text())
        parts_of_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "<value>" for v in node.values)
                found.append((where, str(text)))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts_of_fstrings:
                found.append((where, node.value))
    return found


def _help_texts() -> list[tuple[str, str]]:
    parser = build_parser()
    texts = [("fax-gateway --help", parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [(f"fax-gateway {name} --help", sub.format_help()) for name, sub in action.choices.items()]
    return texts


def quoted_commands() -> list[tuple[str, str]]:
    """(where, command line after ``fax-gateway``) for every command quoted in a text."""
    texts = [*_strings_in_code(), ("README.md", (ROOT / "README.md").read_text()), *_help_texts()]
    subcommands = _subcommands()
    commands = []
    for where, text in texts:
        spans = [m.span() for m in _QUOTED.finditer(text)]
        commands += [(where, m[1]) for m in _QUOTED.finditer(text)]
        for m in _RUNNING.finditer(text):
            command = m[1].rstrip(".,;:")
            # A lone word after the name is a command only if there is one by that name ("the fax-gateway
            # daemon" is prose); with options or arguments it is always a command, and must parse.
            if not any(a <= m.start() < b for a, b in spans) and (" " in command or command in subcommands):
                commands.append((where, command))
    return commands


def _subcommands() -> set[str]:
    parser = build_parser()
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def _argv(command: str) -> list[str]:
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("|", " "))
    argv: list[str] = []
    for word in words:
        if _PLACEHOLDER.match(word):
            argv.append(_VALUES.get(argv[-1], "0123456789abcdef") if argv else word)
        else:
            argv.append(word)
    if argv[-1] in _VALUES:  # the value came from elsewhere in the text
        argv.append(_VALUES[argv[-1]])
    return argv


def test_commands_are_found_in_the_texts() -> None:
    found = {command.split()[0] for _, command in quoted_commands()}
    assert {"show", "jobs", "resolve", "release", "check-config", "hash-password"} <= found


@pytest.mark.parametrize(("where", "command"), quoted_commands(), ids=lambda v: v[:60])
def test_a_quoted_command_parses(where: str, command: str) -> None:
    argv = _argv(command)
    if len(argv) == 1:  # named in passing ("resolve it with fax-gateway resolve"): the command exists
        assert argv[0] in _subcommands(), f"{where}: there is no command 'fax-gateway {command}'"
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            if argv[-1:] != ["--help"] and exc.code != 0:
                raise AssertionError(f"{where}: 'fax-gateway {command}' does not parse: {err.getvalue()}") from None

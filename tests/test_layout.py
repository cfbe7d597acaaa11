"""The package's layout rules, read from the source: who may speak SQL, who writes which table, who imports whom."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
STORE = GATEWAY / "store"

# SQL in a string literal: a statement's opening words.
_SQL_WORDS = re.compile(
    r"\b(SELECT\s|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX)\b"
    r"|PRAGMA\s)"
)
_EXECUTE = frozenset({"execute", "executemany", "executescript"})


def _modules(root: Path = GATEWAY) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _relative(path: Path) -> str:
    return str(path.relative_to(GATEWAY.parent))


def _sql_findings(source: str, name: str) -> list[str]:
    """``name:line: what`` for each string holding SQL and each reach into a connection (``.db``, ``.execute(``)."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.NL]
    found = []
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            if _SQL_WORDS.search(tok.string):
                found.append(f"{name}:{tok.start[0]}: SQL in a string: {tok.string[:60]!r}")
        elif tok.type == tokenize.NAME and i > 0 and tokens[i - 1].string == ".":
            called = i + 1 < len(tokens) and tokens[i + 1].string == "("
            if tok.string == "db" or (tok.string in _EXECUTE and called):
                found.append(f"{name}:{tok.start[0]}: reaches the database: .{tok.string}")
    return found


def test_no_module_outside_the_store_speaks_sql() -> None:
    outside = [p for p in _modules() if STORE not in p.parents]
    assert len(outside) > 40  # the whole package was read
    findings = [f for p in outside for f in _sql_findings(p.read_text(encoding="utf-8"), _relative(p))]
    assert findings == [], "SQL belongs in gateway/store/ (a named Store method):\n" + "\n".join(findings)


def test_the_sql_finder_finds_what_it_looks_for() -> None:
    sample = (
        'a = store.db.execute("SELECT id FROM jobs")\n'
        "b = 'UPDATE notifications SET state = 1'\n"
        'c = f"INSERT OR IGNORE INTO receipts {x}"\n'
        "d = conn.execute(q)\n"
        'e = "Select what to send; update the table"  # words, not SQL\n'
        "f = spool.db_path, self.executor\n"
    )
    found = _sql_findings(sample, "sample.py")
    assert sorted({int(f.split(":")[1]) for f in found}) == [1, 2, 3, 4]
    assert found[0] == "sample.py:1: reaches the database: .db"


_WRITES_NOTIFICATIONS = re.compile(r"\b(INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+notifications\b")


def test_only_the_outbox_writes_the_notifications_table() -> None:
    writers = sorted({_relative(p) for p in _modules() if _WRITES_NOTIFICATIONS.search(p.read_text(encoding="utf-8"))})
    assert writers == ["gateway/store/outbox.py"]


# The bulk copy (Connection.insert_rows) writes any table by a name given at run time, out of the reach of
# the pattern above. Its one caller is migrate-store's copy: it moves every table's rows verbatim into an
# empty store and decides nothing about them (a notice's state, its claims), so the notifications' rules
# stay the outbox's. Any other module writes a table through that table's own methods.
BULK_COPIERS = ["gateway/store/copy.py"]


def test_only_the_store_copy_inserts_rows_in_bulk() -> None:
    callers = sorted({_relative(p) for p in _modules() if re.search(r"\.insert_rows\(", p.read_text(encoding="utf-8"))})
    assert callers == BULK_COPIERS


# -- who imports whom ---------------------------------------------------------------------------
# The floors, from the ground up:
# - the ground floor, gateway/*.py (settings, replies, text helpers, outcome types, code tables):
#   they import nothing of the gateway's but each other;
# - store and spool: the ground floor and themselves;
# - the stages smtp, documents, delivery, receipts, notify: the ground floor, the store, the spool and
#   themselves, and no other stage, except smtp -> documents (documents are judged before the 250);
# - daemon, ops and web (the web pages) on top: anything.
# Imports inside functions and under TYPE_CHECKING count too.

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
STAGES = {"smtp", "documents", "delivery", "receipts", "notify"}
BELOW_STAGES = {"store", "spool"}
TOP = {"daemon", "ops", "web"}
EXCEPTIONS = {("smtp", "documents")}


def floor_of(module: str) -> str:
    """``gateway.smtp.server`` -> ``smtp``; a ground-floor module -> ``ground``."""
    if module == "gateway.__main__":  # ``python3 -m gateway``: the command line
        return "ops"
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "ground"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every gateway module ``path`` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gateway":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "gateway":
                continue
            if target == "gateway":  # from gateway import x: x is a module of the ground floor or a package
                for alias in node.names:
                    yield node.lineno, f"gateway.{alias.name}"
            else:
                yield node.lineno, target


def allowed(source: str, target: str) -> bool:
    if source in TOP or source == target:
        return True
    if source == "ground":
        return target == "ground"
    if source in BELOW_STAGES:
        return target == "ground"
    if source in STAGES:
        return target == "ground" or target in BELOW_STAGES or (source, target) in EXCEPTIONS
    raise AssertionError(f"package gateway.{source} has no floor: add it to tests/test_layout.py")


def test_every_package_has_a_floor() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == STAGES | BELOW_STAGES | TOP


def test_the_walk_sees_real_imports() -> None:
    # The rule is only as good as the walk: it must find the imports a stage really has.
    found = {target for _, target in imports_of(PACKAGE / "smtp" / "intake.py")}
    assert "gateway.store" in found and "gateway.documents.examiner" in found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_its_floor_may(path: Path) -> None:
    source = floor_of(module_name(path))
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {source} imports {target}"
        for line, target in imports_of(path)
        if not allowed(source, floor_of(target))
    ]
    assert not wrong, "stages meet only in the store:\n" + "\n".join(wrong)


def test_the_readme_names_every_module_in_its_package_row() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z/*.]+)`[^|]*\| (.*) \|$", section, re.M)}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        package = path.parent.name if path.parent != PACKAGE else ""
        row = rows.get(f"{package}/") if package else rows.get("gateway/*.py")
        if row is None or f"`{path.stem}`" not in row:
            missing.append(str(path.relative_to(PACKAGE.parent)))
    assert not missing, "README 'How it works' does not name: " + ", ".join(missing)

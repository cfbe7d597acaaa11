"""The package's layout rules, read from the source: who may speak SQL, who writes which table, who imports whom."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

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


# A stage may import the ground floor (settings, replies, outcomes, sender...), the store and the spool,
# and its own package; never another stage, except intake reading the documents it takes in.
STAGES = ("smtp", "documents", "delivery", "receipts", "notify")
ALLOWED = {("smtp", "documents")}


def _imported(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def test_stages_meet_only_in_the_store() -> None:
    crossings = []
    for stage in STAGES:
        for path in _modules(GATEWAY / stage):
            for line, module in _imported(path):
                parts = module.split(".")
                if len(parts) > 1 and parts[0] == "gateway" and parts[1] in STAGES and parts[1] != stage:
                    if (stage, parts[1]) not in ALLOWED:
                        crossings.append(f"{_relative(path)}:{line}: imports {module}")
    assert crossings == [], "stages meet only in the store:\n" + "\n".join(sorted(set(crossings)))

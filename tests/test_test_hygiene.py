"""The test suite's own layout: fixtures found by pytest, helpers defined once, one name per support module.

``tests/conftest.py`` loads every ``tests/support_*.py`` module as a plugin, so
pytest finds their fixtures: a test asks for one by naming it as an argument and
never imports it (an import would only shadow the argument). Ordinary helpers
are imported by name, always as ``tests.support_*``: a module imported under a
second name is a second copy, with its own globals and without rewritten asserts.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT_PREFIX = "support_"

Sources = dict[str, str]  # file name (``test_x.py``) -> its text


def _tests_sources() -> Sources:
    return {path.name: path.read_text() for path in sorted(TESTS.glob("*.py"))}


def _support_module(imported: str) -> str | None:
    """``support_x`` for an import of ``tests.support_x`` or of a bare ``support_x``; otherwise None."""
    name = imported.removeprefix("tests.")
    return name if name.startswith(SUPPORT_PREFIX) and "." not in name else None


def _is_fixture(decorator: ast.expr) -> bool:
    """``@pytest.fixture``, ``@pytest.fixture(...)``, ``@fixture`` or ``@fixture(...)``."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr == "fixture"
    return isinstance(target, ast.Name) and target.id == "fixture"


def _top_level_definitions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    return [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]


def _fixtures(tree: ast.Module) -> set[str]:
    return {
        node.name
        for node in _top_level_definitions(tree)
        if not isinstance(node, ast.ClassDef) and any(_is_fixture(d) for d in node.decorator_list)
    }


def _imports_from(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, module, name) for every ``from module import name`` anywhere in the module, in line order."""
    return sorted(
        (node.lineno, node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0
        for alias in node.names
    )


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for every module an ``import`` or a ``from ... import`` names, in line order."""
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    found = [(node.lineno, alias.name) for node in imports for alias in node.names]
    for line, module, name in _imports_from(tree):
        found.append((line, module))
        if module == "tests":  # from tests import support_x, conftest
            found.append((line, f"tests.{name}"))
    return sorted(set(found))


def fixture_imports(sources: Sources) -> list[str]:
    """Every import, by name, of a fixture that a support module defines."""
    trees = {name: ast.parse(text, name) for name, text in sources.items()}
    fixtures = {name.removesuffix(".py"): _fixtures(tree) for name, tree in trees.items()}
    found = []
    for file, tree in trees.items():
        for line, module, name in _imports_from(tree):
            support = _support_module(module)
            if support is not None and name in fixtures.get(support, set()):
                found.append(f"{file}:{line}: imports the fixture {name!r} from {module}")
    return found


def duplicate_definitions(sources: Sources) -> list[str]:
    """Every class or function name defined at the top of more than one support module."""
    where: defaultdict[str, list[str]] = defaultdict(list)
    for file, text in sources.items():
        if file.startswith(SUPPORT_PREFIX):
            for node in _top_level_definitions(ast.parse(text, file)):
                where[node.name].append(file)
    return [f"{name} is defined in {', '.join(files)}" for name, files in sorted(where.items()) if len(files) > 1]


def second_names(sources: Sources) -> list[str]:
    """Every import of a support module under another name than ``tests.support_*``, and of the conftest."""
    found = []
    for file, text in sources.items():
        for line, module in _imported_modules(ast.parse(text, file)):
            if module.startswith(SUPPORT_PREFIX):
                found.append(f"{file}:{line}: imports {module} (not as tests.{module})")
            elif module in ("conftest", "tests.conftest"):
                found.append(f"{file}:{line}: imports {module} (pytest loads it; helpers live in tests.support_*)")
    return found


def plugins(conftest: str) -> list[str]:
    """The ``pytest_plugins`` list of a conftest, read without importing it."""
    for node in ast.parse(conftest).body:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
        if "pytest_plugins" in names:
            assert isinstance(node, ast.Assign)
            value = ast.literal_eval(node.value)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
    return []


def test_no_module_imports_a_fixture_by_name() -> None:
    assert fixture_imports(_tests_sources()) == []


def test_no_class_or_function_is_defined_in_two_support_modules() -> None:
    assert duplicate_definitions(_tests_sources()) == []


def test_every_support_module_is_a_plugin_and_has_one_name() -> None:
    sources = _tests_sources()
    support = sorted(f"tests.{name.removesuffix('.py')}" for name in sources if name.startswith(SUPPORT_PREFIX))
    assert sorted(plugins(sources["conftest.py"])) == support
    assert second_names(sources) == []


BAD: Sources = {
    "support_a.py": (
        "import pytest\n"
        "from pytest import fixture\n"
        "class Clock: ...\n"
        "def helper() -> None: ...\n"
        "@pytest.fixture\ndef plain() -> None: ...\n"
        "@pytest.fixture(name='other')\nasync def named() -> None: ...\n"
        "@fixture\ndef bare() -> None: ...\n"
    ),
    "support_b.py": "class Clock: ...\nasync def helper() -> None: ...\ndef own() -> None: ...\n",
    "test_x.py": (
        "from tests.support_a import Clock, helper, plain\n"
        "from support_a import named\n"
        "from tests.support_b import own\n"
        "import tests.conftest\n"
        "def test_y() -> None:\n"
        "    from tests.support_a import bare\n"
        "    from tests import conftest, support_b\n"
    ),
}


def test_the_checks_find_what_they_forbid() -> None:
    assert fixture_imports(BAD) == [
        "test_x.py:1: imports the fixture 'plain' from tests.support_a",
        "test_x.py:2: imports the fixture 'named' from support_a",
        "test_x.py:6: imports the fixture 'bare' from tests.support_a",
    ]
    assert duplicate_definitions(BAD) == [
        "Clock is defined in support_a.py, support_b.py",
        "helper is defined in support_a.py, support_b.py",
    ]
    assert second_names(BAD) == [
        "test_x.py:2: imports support_a (not as tests.support_a)",
        "test_x.py:4: imports tests.conftest (pytest loads it; helpers live in tests.support_*)",
        "test_x.py:7: imports tests.conftest (pytest loads it; helpers live in tests.support_*)",
    ]
    assert plugins("import pytest\npytest_plugins = ['tests.support_a', 'tests.support_b']\n") == [
        "tests.support_a",
        "tests.support_b",
    ]

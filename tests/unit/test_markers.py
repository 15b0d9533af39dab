"""`-m "not integration"` selects only fast in-process tests: every test file that starts real
processes (the harness's managers, containerd, a registry, network namespaces) is marked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

# Importing one of these means the file starts processes, containerd or network namespaces.
PROCESS_FIXTURES = {
    "tests.integration.harness",
    "tests.fixtures.containerd",
    "tests.fixtures.images",
    "tests.fixtures.overlay_cluster",
    "tests.fixtures.overlay_lab",
    "tests.fixtures.raft_abuser",
    "tests.fixtures.registry",
    "tests.fixtures.tasknet",
}


# An integration file importing one of these measures under load: it must run alone, after the
# pytest-xdist workers (the `serial` mark, ADR 41), or the other workers' tests skew what it measures.
LOAD_FIXTURES = {"tests.fixtures.load"}


def _is_mark(node: ast.expr, name: str) -> bool:
    """`pytest.mark.<name>`, bare or called."""
    if isinstance(node, ast.Call):
        node = node.func
    return (
        isinstance(node, ast.Attribute)
        and node.attr == name
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
    )


def module_is_marked(tree: ast.Module, name: str = "integration") -> bool:
    """The module-level `pytestmark` is the mark `name` or a list/tuple holding it."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            value = node.value
            marks = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            return any(_is_mark(mark, name) for mark in marks)
    return False


def imported_modules(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def all_test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def needs_mark(path: Path, tree: ast.Module) -> bool:
    return path.is_relative_to(TESTS / "integration") or bool(imported_modules(tree) & PROCESS_FIXTURES)


def test_every_integration_file_is_marked() -> None:
    unmarked = []
    for path in all_test_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        if needs_mark(path, tree) and not module_is_marked(tree):
            unmarked.append(str(path.relative_to(TESTS.parent)))
    assert unmarked == [], f"add `pytestmark = pytest.mark.integration` to: {unmarked}"


def test_every_file_that_measures_under_load_runs_alone() -> None:
    unmarked = []
    for path in all_test_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        runs_load = needs_mark(path, tree) and imported_modules(tree) & LOAD_FIXTURES  # not hey's parser tests
        if runs_load and not module_is_marked(tree, "serial"):
            unmarked.append(str(path.relative_to(TESTS.parent)))
    assert unmarked == [], f"add pytest.mark.serial to the `pytestmark` of: {unmarked}"


def test_the_check_recognises_the_serial_mark() -> None:
    both = "import pytest\npytestmark = [pytest.mark.integration, pytest.mark.serial]\n"
    assert module_is_marked(ast.parse(both), "serial")
    assert not module_is_marked(ast.parse("import pytest\npytestmark = pytest.mark.integration\n"), "serial")


@pytest.mark.parametrize(
    ("source", "marked"),
    [
        ("import pytest\npytestmark = pytest.mark.integration\n", True),
        ("import pytest\npytestmark = [pytest.mark.integration, pytest.mark.skipif(True, reason='x')]\n", True),
        ("import pytest\npytestmark = pytest.mark.skipif(True, reason='x')\n", False),
        ("import pytest\n\n@pytest.mark.integration\ndef test_x():\n    pass\n", False),
        ("def test_x():\n    pass\n", False),
    ],
)
def test_the_check_recognises_the_module_mark(source: str, marked: bool) -> None:
    assert module_is_marked(ast.parse(source)) is marked


def test_a_file_using_the_harness_needs_the_mark_wherever_it_lives() -> None:
    tree = ast.parse("from tests.integration.harness import Manager\n")
    assert needs_mark(TESTS / "unit" / "test_x.py", tree)
    assert not needs_mark(TESTS / "unit" / "test_x.py", ast.parse("from tests.waiting import wait_for\n"))

"""The layers point one way: ``bus`` ← ``coordinator`` ← ``ecosystem`` and ``bus`` ← ``workers`` ← ``ecosystem``.

Every import of every module of the four packages (at the top or inside a function) is read from its source;
``ecosystem`` is the composition root and may import any of them; ``bench`` and ``tests`` sit above all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "bus": {"bus"},
    "coordinator": {"bus", "coordinator"},
    "workers": {"bus", "workers"},
    "ecosystem": {"bus", "coordinator", "workers", "ecosystem"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return {(name, line) for name, line in found if name in ALLOWED or name in ("bench", "tests")}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_module_imports_a_layer_above_its_own(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for name, line in imported_packages(path) if name not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def main():\n    from ecosystem.processes import by_name\n")
    assert imported_packages(module) == {("ecosystem", 2)}

"""What gets installed: ``pyproject.toml`` declares everything the shipped code needs at run time, and the
Dockerfile installs exactly that (``pip install .``, no extras) from every package the wheel ships.

The fresh-venv demo (``.ci/fresh-venv-demo.sh``, run by ``.ci/run``) proves the same end to end.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
INCLUDE = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
TOP_LEVEL = sorted({pattern.split(".")[0].rstrip("*") for pattern in INCLUDE})
PACKAGE_DATA = PYPROJECT["tool"]["setuptools"]["package-data"]["*"]


def _requirements(specs: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, specs)}


RUNTIME = _requirements(PROJECT["dependencies"])
TEST_EXTRA = _requirements(PROJECT["optional-dependencies"]["test"])
OPTIONAL = {"opentelemetry": ("otel", {"bus/tracing.py"})}
"""Modules only an extra brings, with the only files that may import them (each handles their absence: without the
``otel`` extra, tracing is off)."""


def _build_stage() -> list[list[str]]:
    """The instructions of the Dockerfile's first stage (where cogo is installed), as shell words."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    return [shlex.split(line) for line in stages[1].splitlines()[1:] if line.strip() and not line.startswith("#")]


def _shipped_files() -> list[Path]:
    return [p for top in TOP_LEVEL for p in (ROOT / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]


def test_the_dockerfile_installs_cogo_with_pip_install_dot_and_no_extras():
    installs = [words for words in _build_stage() if words[:1] == ["RUN"] and "pip" in words and "install" in words]
    assert [words[1:] for words in installs] == [["pip", "install", "."]]


def test_the_dockerfile_copies_every_package_the_wheel_ships_and_what_the_build_reads():
    copied = {src.rstrip("/") for words in _build_stage() if words[:1] == ["COPY"] for src in words[1:-1]}
    assert set(TOP_LEVEL) <= copied, f"COPY {sorted(set(TOP_LEVEL) - copied)} into the image"
    assert {"pyproject.toml", PROJECT["readme"]} <= copied
    for words in _build_stage():
        if words[:1] == ["COPY"] and words[1] in TOP_LEVEL:
            assert words[2].rstrip("/") == f"./{words[1]}", words  # same layout as the repository


def test_every_top_level_package_of_the_repository_that_ships_is_included():
    assert TOP_LEVEL == ["bus", "coordinator", "ecosystem", "workers"]
    for top in TOP_LEVEL:
        assert (ROOT / top / "__init__.py").is_file(), top


def test_every_non_python_file_of_a_shipped_package_is_package_data():
    data = [p for p in _shipped_files() if p.suffix not in (".py", ".pyc")]
    assert any(p.suffix == ".yaml" for p in data) and any(p.name.endswith(".mako") for p in data)
    missing = [str(p.relative_to(ROOT)) for p in data if not any(fnmatch.fnmatch(p.name, g) for g in PACKAGE_DATA)]
    assert missing == [], "add their patterns to [tool.setuptools.package-data]"


def _imported_top_levels() -> dict[str, set[str]]:
    """Each top-level module the shipped code imports, with the files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in _shipped_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_shipped_code_imports_only_the_standard_library_itself_and_declared_runtime_dependencies():
    distributions = packages_distributions()
    undeclared, local = {}, set(TOP_LEVEL)
    for module, files in sorted(_imported_top_levels().items()):
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        names = {canonicalize_name(d) for d in distributions.get(module, [])}
        if module in OPTIONAL:
            extra, allowed = OPTIONAL[module]
            assert files <= allowed, f"only {sorted(allowed)} may import {module} (the [{extra}] extra)"
            assert names & set(_requirements(PROJECT["optional-dependencies"][extra])), f"declare {module} in [{extra}]"
            continue
        if not names & set(RUNTIME):
            undeclared[module] = sorted(files)
    assert undeclared == {}, "declare these in [project.dependencies] (not only in an extra)"


def test_what_runs_at_run_time_is_a_runtime_dependency():
    assert "redis" in RUNTIME["celery"].extras  # kombu's Redis transport and what it imports (packaging)
    assert "pytest" in RUNTIME  # the build-test worker runs the generated tests with it
    assert "crypto" in RUNTIME["pyjwt"].extras  # RS256 JWTs need cryptography
    assert "schemathesis" in TEST_EXTRA and "schemathesis" not in RUNTIME


@pytest.mark.parametrize("extra", sorted(PROJECT["optional-dependencies"]))
def test_no_extra_repeats_a_runtime_dependency(extra):
    repeated = set(_requirements(PROJECT["optional-dependencies"][extra])) & set(RUNTIME)
    assert repeated == set(), f"[{extra}] repeats {sorted(repeated)}: runtime already brings them"

"""The ``otel`` extra in tests: a module of it that is missing skips the tests that need it locally, and fails them
under ``CI=true`` (``.ci/run`` installs the extra: a failed install must not pass as a skip)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from tests.support.services import in_ci

HOW = "pip install -e '.[test]' brings the otel extra"


def require(module: str) -> ModuleType:
    """``module`` imported; else a module-level skip, or under ``CI=true`` a failure (a collection error)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"{module} cannot be imported ({exc}); CI=true: the tracing tests must run ({HOW})",
                        pytrace=False)
        pytest.skip(f"{module} is not installed ({HOW})", allow_module_level=True)

"""Real services for tests: a test that needs one skips when it is absent, and fails under ``CI=true``."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

POSTGRES_URL = os.environ.get("COGO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("COGO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("COGO_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def in_ci() -> bool:
    """Whether the suite runs under ``CI=true`` (where a missing service is a failure, not a skip)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (under CI=true) when the service is not listening."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if in_ci():
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


def unique(prefix: str) -> str:
    """A fresh name for one test's queues, tenant or schema."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"

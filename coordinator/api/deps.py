"""What every API route needs: the ledger, the publisher, the registry and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine

from bus.outbox import Publisher
from bus.settings import Settings
from coordinator.definitions import Registry


@dataclass(frozen=True)
class Services:
    """The API's dependencies, stored on ``app.state.services``."""

    engine: Engine
    publisher: Publisher
    registry: Registry
    settings: Settings


def services(request: Request) -> Services:
    """FastAPI dependency: the app's services."""
    return request.app.state.services

"""What a caller can ask for: every intent, the workflow it runs, and the payload it takes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from coordinator import intents
from coordinator.api.auth import principal
from coordinator.api.deps import Services, services
from coordinator.keys import Principal

router = APIRouter()


class IntentEntry(BaseModel):
    """One intent: its name, the workflow (and newest version) it runs, and its payload's JSON Schema."""

    name: str
    workflow: str
    version: int
    description: str
    input_schema: dict[str, Any] = Field(description="The JSON Schema the intent's payload must match; a payload "
                                                     "that does not is refused with 422 payload.invalid.")


class IntentList(BaseModel):
    """Every intent the API accepts."""

    intents: list[IntentEntry]


@router.get("/api/intents", response_model=IntentList)
def list_intents(s: Services = Depends(services), _who: Principal = Depends(principal)) -> dict[str, Any]:
    """Every intent: the built-in names first, then each registered workflow, with its input schema.

    Any authenticated caller may read it: it holds no tenant's data.
    """
    return {"intents": [i.as_json() for i in intents.catalogue(s.registry)]}

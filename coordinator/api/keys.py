"""API keys over HTTP (``admin`` scope): create one (its secret is answered once), list, revoke."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from coordinator import keys
from coordinator.api.auth import scoped
from coordinator.api.deps import Services, services
from coordinator.keys import Principal

router = APIRouter()
Scope = Literal["intents:write", "runs:read", "runs:cancel", "approvals:decide", "metrics:read", "admin"]
assert set(Scope.__args__) == set(keys.SCOPES)  # one list of scopes: keys.SCOPES


class NewKey(BaseModel):
    """``{tenant, scopes, name}`` of a key to create."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(pattern=keys.TENANT_PATTERN)
    scopes: list[Scope] = Field(min_length=1, max_length=len(keys.SCOPES))
    name: str = Field(default="", max_length=128)


@router.post("/api/keys", status_code=201)
def create_key(body: NewKey, s: Services = Depends(services),
               _who: Principal = Depends(scoped("admin"))) -> dict[str, Any]:
    """Create a key; ``key`` in the answer is the only copy there will ever be."""
    with s.engine.begin() as conn:
        created = keys.create_key(conn, tenant=body.tenant, scopes=body.scopes, name=body.name, now=time.time())
    return {"id": created.id, "tenant": created.tenant, "name": created.name, "scopes": list(created.scopes),
            "key": created.secret_key}


@router.get("/api/keys")
def list_keys(tenant: str | None = None, s: Services = Depends(services),
              _who: Principal = Depends(scoped("admin"))) -> dict[str, Any]:
    """Every key (ids, tenants, scopes; never a secret), newest first."""
    with s.engine.connect() as conn:
        return {"keys": keys.list_keys(conn, tenant=tenant)}


@router.delete("/api/keys/{key_id}")
def revoke_key(key_id: str, s: Services = Depends(services),
               _who: Principal = Depends(scoped("admin"))) -> dict[str, Any]:
    """Revoke a key: every later request with it answers 401 (404 ``key.unknown`` if none is active)."""
    with s.engine.begin() as conn:
        keys.revoke_key(conn, key_id, now=time.time())
    return {"id": key_id, "revoked": True}

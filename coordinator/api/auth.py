"""Principals at the edge: every route but health and the docs needs a key or a JWT, and a scope.

A key comes as ``Authorization: Bearer <key>`` or ``apikey: <key>`` (seed 003's edge headers); a JWT as
``Authorization: Bearer <jwt>``. Routes declare ``Depends(scoped("runs:read"))`` and get the Principal.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, select

from bus.errors import NotFound, Unauthenticated
from bus.settings import Settings
from coordinator.api.deps import Services, services
from coordinator.jwts import jwt_principal, looks_like_jwt
from coordinator.keys import Principal, authenticate
from coordinator.schema import approvals, runs


def presented_credential(request: Request) -> str:
    """The credential the request carries (Bearer first, then ``apikey``).

    Raises:
        Unauthenticated: ``auth.required`` when there is none.
    """
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if header and scheme.lower() == "bearer" and value.strip():
        return value.strip()
    apikey = request.headers.get("apikey", "").strip()
    if apikey:
        return apikey
    raise Unauthenticated("this endpoint needs an API key: send 'Authorization: Bearer <key>' or 'apikey: <key>'",
                          code="auth.required")


def authenticate_request(request: Request, engine: Engine, settings: Settings) -> Principal:
    """The caller of ``request``, from a key in the ledger or a JWT signed by the operator's key.

    Raises:
        Unauthenticated: no credential, or one that is not valid.
    """
    credential = presented_credential(request)
    if looks_like_jwt(credential):
        return jwt_principal(credential, settings)
    with engine.connect() as conn:
        return authenticate(conn, credential)


def principal(request: Request, s: Services = Depends(services)) -> Principal:
    """FastAPI dependency: the authenticated caller."""
    return authenticate_request(request, s.engine, s.settings)


def scoped(scope: str) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and requires ``scope``."""
    def dependency(who: Principal = Depends(principal)) -> Principal:
        who.require(scope)
        return who
    dependency.__name__ = f"scope_{scope.replace(':', '_')}"
    return dependency


def owned_run(conn: Connection, run_id: str, who: Principal) -> None:
    """Raise ``run.unknown`` (404) unless the run exists and ``who`` may see it: never 403, never the data."""
    tenant = conn.execute(select(runs.c.tenant).where(runs.c.id == run_id)).scalar()
    if tenant is None or not who.sees(tenant):
        raise NotFound(f"no run {run_id}", code="run.unknown")


def owned_approval(conn: Connection, approval_id: str, who: Principal) -> None:
    """Raise ``approval.unknown`` (404) unless the approval exists and ``who`` may see it."""
    tenant = conn.execute(select(approvals.c.tenant).where(approvals.c.id == approval_id)).scalar()
    if tenant is None or not who.sees(tenant):
        raise NotFound(f"no approval {approval_id}", code="approval.unknown")


def tenant_filter(who: Principal, asked: str | None) -> str | None:
    """The tenant a listing is restricted to: the caller's own, unless an admin asks for one or for all."""
    return asked if who.is_admin else who.tenant

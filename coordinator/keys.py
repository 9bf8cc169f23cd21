"""API keys and the principals they stand for: created once, stored hashed, checked at the edge.

A key reads ``cogo_<id>_<secret>``. Only the SHA-256 of the secret is stored (the secret is 256 random
bits, so a fast hash is enough: there is nothing to brute-force); the id finds the row, the hash is
compared in constant time. A key belongs to one tenant and carries scopes; ``admin`` crosses tenants.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, update

from bus.errors import Forbidden, InvalidRequest, NotFound, Unauthenticated
from coordinator.schema import api_keys

SCOPES = ("intents:write", "runs:read", "runs:cancel", "approvals:decide", "metrics:read", "admin")
"""Every scope a key or token may carry; ``admin`` implies the others, for every tenant. ``metrics:read`` is
Prometheus's: ``/metrics`` (every tenant's counters, no run's data) and nothing else."""
TENANT_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_PREFIX = "cogo_"
_ID_HEX = 12
ADMIN_KEY_FILE = "admin.key"
"""The embedded default's admin key, under ``COGO_HOME`` (mode 0600)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, what it may do, and the name recorded for what it decides."""

    tenant: str
    scopes: frozenset[str]
    name: str

    @property
    def is_admin(self) -> bool:
        """Whether this principal may act on every tenant."""
        return "admin" in self.scopes

    def may(self, scope: str) -> bool:
        """Whether this principal holds ``scope`` (``admin`` holds every scope)."""
        return self.is_admin or scope in self.scopes

    def require(self, scope: str) -> None:
        """Raise unless this principal holds ``scope``.

        Raises:
            Forbidden: code ``auth.scope``, naming the missing scope.
        """
        if not self.may(scope):
            raise Forbidden(f"this key lacks the scope {scope!r}", code="auth.scope",
                            details={"scope": scope})

    def sees(self, tenant: str) -> bool:
        """Whether rows of ``tenant`` are visible to this principal."""
        return self.is_admin or tenant == self.tenant


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``secret_key`` is the only copy of the key there will ever be."""

    id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    secret_key: str


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` deduplicated and in canonical order.

    Raises:
        InvalidRequest: code ``scope.unknown`` for a scope not in ``SCOPES``, or none at all.
    """
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise InvalidRequest(f"unknown scope(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(SCOPES)}",
                           code="scope.unknown")
    return tuple(s for s in SCOPES if s in wanted)


def create_key(conn: Connection, *, tenant: str, scopes: Iterable[str], name: str, now: float | None = None
               ) -> CreatedKey:
    """Insert a new key for ``tenant`` with ``scopes``; returns it with its secret (shown once).

    Raises:
        InvalidRequest: a malformed tenant or an unknown scope.
    """
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise InvalidRequest(f"tenant must match {TENANT_PATTERN}, got {tenant!r}", code="tenant.invalid")
    scopes = check_scopes(scopes)
    key_id = "k" + secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    conn.execute(insert(api_keys).values(id=key_id, tenant=tenant, name=(name or key_id)[:128], scopes=list(scopes),
                                         secret_sha256=_digest(secret), created_at=now or time.time()))
    return CreatedKey(key_id, tenant, name or key_id, scopes, f"{_PREFIX}{key_id}_{secret}")


def list_keys(conn: Connection, *, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every key (never a secret or its hash), newest first; only ``tenant``'s when given."""
    cols = [api_keys.c.id, api_keys.c.tenant, api_keys.c.name, api_keys.c.scopes, api_keys.c.created_at,
            api_keys.c.revoked_at]
    stmt = select(*cols).order_by(api_keys.c.created_at.desc())
    if tenant is not None:
        stmt = stmt.where(api_keys.c.tenant == tenant)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def revoke_key(conn: Connection, key_id: str, *, now: float | None = None) -> None:
    """Revoke a key; later requests with it answer 401.

    Raises:
        NotFound: code ``key.unknown``, no such key (or already revoked).
    """
    done = conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                        .values(revoked_at=now or time.time()))
    if done.rowcount != 1:
        raise NotFound(f"no active key {key_id!r}", code="key.unknown")


def authenticate(conn: Connection, presented: str) -> Principal:
    """The principal of a presented key.

    Raises:
        Unauthenticated: code ``auth.invalid``: malformed, unknown, revoked or wrong secret (one answer
            for all, so a caller learns nothing about which).
    """
    key_id, secret = _split(presented)
    row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first() if key_id else None
    # Compare even when the row is missing, so timing does not tell a known id from an unknown one.
    expected = row["secret_sha256"] if row is not None else _digest("")
    if not hmac.compare_digest(expected, _digest(secret)) or row is None or row["revoked_at"] is not None:
        raise Unauthenticated("the API key is not valid (unknown, revoked or mistyped)", code="auth.invalid")
    return Principal(tenant=row["tenant"], scopes=frozenset(row["scopes"]), name=f"key:{row['name']}")


def ensure_admin_key(conn: Connection, home: Path) -> Path:
    """The embedded default's admin key: reuse ``<home>/admin.key`` while it is valid, else make a new one.

    The file is written with mode 0600 before the key is usable; returns its path.
    """
    path = Path(home) / ADMIN_KEY_FILE
    if path.is_file():
        try:
            if authenticate(conn, path.read_text(encoding="utf-8").strip()).is_admin:
                return path
        except Unauthenticated:
            pass  # revoked, or the ledger was replaced: make a new one
    created = create_key(conn, tenant="default", scopes=["admin"], name="admin (cogo up)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(created.secret_key + "\n")
    os.chmod(path, 0o600)
    return path


def read_key_file(home: Path) -> str | None:
    """The admin key stored under ``home``, or None when there is none."""
    path = Path(home) / ADMIN_KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _split(presented: str) -> tuple[str, str]:
    if not presented.startswith(_PREFIX):
        return "", ""
    rest = presented[len(_PREFIX):]
    key_id, sep, secret = rest[:_ID_HEX + 1], rest[_ID_HEX + 1:_ID_HEX + 2], rest[_ID_HEX + 2:]
    if sep != "_" or not secret or not key_id.startswith("k"):
        return "", ""
    return key_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


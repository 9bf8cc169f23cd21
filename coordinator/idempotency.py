"""Idempotent ingress: an ``Idempotency-Key`` names one intent of one tenant, durably, in the ledger.

The key is recorded in the same transaction as the run it started, so a retried request — after a timeout,
a crash of the client or of the API — answers the run the first one started, and never starts a second.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import Connection, insert, select

from bus.envelope import Intent
from bus.errors import Conflict
from coordinator.schema import idempotency_keys as ik

KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
"""Printable ASCII without spaces, at most 200 characters."""


def fingerprint(intent: Intent) -> str:
    """What the request asked for, as a hash: the same key must always ask for the same thing."""
    canonical = json.dumps(intent.model_dump(by_alias=True, mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def earlier_run(conn: Connection, tenant: str, key: str, intent: Intent) -> str | None:
    """The run an earlier request with this key started, or None.

    Raises:
        Conflict: code ``idempotency.mismatch``: the key was used for a different request.
    """
    row = conn.execute(select(ik.c.run_id, ik.c.request_sha256).where(ik.c.tenant == tenant, ik.c.key == key)).first()
    if row is None:
        return None
    if row.request_sha256 != fingerprint(intent):
        raise Conflict(f"Idempotency-Key {key!r} was used for a different request (run {row.run_id})",
                       code="idempotency.mismatch", details={"run_id": row.run_id})
    return row.run_id


def record(conn: Connection, tenant: str, key: str, intent: Intent, run_id: str, *, now: float) -> None:
    """Remember that ``key`` started ``run_id`` (fails with IntegrityError if another request just did)."""
    conn.execute(insert(ik).values(tenant=tenant, key=key, run_id=run_id, request_sha256=fingerprint(intent),
                                   created_at=now))

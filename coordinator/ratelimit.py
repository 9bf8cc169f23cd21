"""Token buckets in the ledger, so several processes share one limit: a tenant's ingress rate (the API) and the
admission rates per tenant and per model (``coordinator/admission/rates.py``).

Each take is one conditional UPDATE (refill by elapsed time, capped at the burst, minus one) inside the
caller's transaction — the intent and the token it spent commit or roll back together.
"""

from __future__ import annotations

from sqlalchemy import Connection, case, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from bus.errors import RateLimited
from coordinator.schema import rate_buckets as rb


def take(conn: Connection, tenant: str, *, now: float, rate_per_s: float, burst: int) -> None:
    """Spend one token of ``tenant``'s bucket.

    Raises:
        RateLimited: the bucket is empty; ``details.retry_after_s`` says when one token will be there.
    """
    wait_s = try_take(conn, tenant, now=now, rate_per_s=rate_per_s, burst=burst)
    if wait_s is None:
        raise RateLimited(f"tenant {tenant!r} is sending too many intents at once; retry", details={"retry_after_s": 1})
    if wait_s > 0:
        raise RateLimited(f"tenant {tenant!r} is over its rate of {rate_per_s:g} intents/s (burst {burst}); "
                          f"retry in {wait_s:.2f}s", details={"retry_after_s": round(wait_s, 3)})


def try_take(conn: Connection, key: str, *, now: float, rate_per_s: float, burst: int) -> float | None:
    """Spend one token of the bucket ``key``: 0 when taken, else how many seconds until one is there (None when
    other processes kept changing the bucket under every try)."""
    for _ in range(_RACES):
        if _spend(conn, key, now=now, rate_per_s=rate_per_s, burst=burst):
            return 0.0
        row = conn.execute(select(rb.c.tokens, rb.c.updated_at).where(rb.c.tenant == key)).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(rb).values(tenant=key, tokens=float(burst) - 1.0, updated_at=now))
                return 0.0
            except IntegrityError:  # another API process created it first: take from the row it made
                continue
        have = min(float(burst), row.tokens + max(0.0, now - row.updated_at) * rate_per_s)
        if have < 1.0:
            return max(0.001, (1.0 - have) / rate_per_s)
        # The row appeared or changed after our UPDATE looked (another process committed): take again.
    return None


_RACES = 5
"""How many times one take re-reads a bucket that other API processes keep changing under it."""


def _spend(conn: Connection, tenant: str, *, now: float, rate_per_s: float, burst: int) -> bool:
    """One conditional UPDATE: refill by elapsed time (capped at ``burst``) and take a token if one is there."""
    elapsed = case((rb.c.updated_at < now, literal(now) - rb.c.updated_at), else_=literal(0.0))
    refilled = rb.c.tokens + elapsed * rate_per_s
    level = case((refilled > burst, literal(float(burst))), else_=refilled)
    done = conn.execute(update(rb).where(rb.c.tenant == tenant, level >= 1.0)
                        .values(tokens=level - 1.0, updated_at=case((rb.c.updated_at < now, literal(now)),
                                                                     else_=rb.c.updated_at)))
    return done.rowcount == 1

"""The ``rate`` admission policy: assignments admitted per second, per tenant and per model (token buckets in the
ledger, ``coordinator/ratelimit.py``, shared by every dispatcher).

A bucket is taken from only when every policy before this one admitted (``takes``), so an assignment that then
waits for something else spends nothing; one over its rate is deferred until a token is there. A retry's
re-admission is a new call of the model, so it takes a token too.
"""

from __future__ import annotations

from coordinator import ratelimit
from coordinator.admission import ADMIT, Ask, Setup, Verdict, defer
from coordinator.admission.table import live

TENANT_KEY = "admission/tenant/{}"
MODEL_KEY = "admission/model/{}"
"""Bucket names, apart from the ingress buckets (which are named by the bare tenant)."""


class RatePolicy:
    """Per-tenant (``tenants.<t>.ratePerS``/``burst``) and per-model (``models.<m>.ratePerS``/``burst``) rates."""

    name = "rate"
    takes = True

    def __init__(self, setup: Setup):
        self.table = live(setup.settings.policy_path)

    def check(self, ask: Ask) -> Verdict:
        """Take a token of each bucket that applies, or defer until one is there."""
        table = self.table.get(ask.now)
        tenant, model = ask.row.tenant, ask.assignment.model
        t, md = table.tenant(tenant), table.models.get(model)
        limits = []
        if t.rate_per_s:
            limits.append((TENANT_KEY.format(tenant), t.rate_per_s, t.burst or max(1, int(t.rate_per_s)),
                           f"tenant {tenant}", {"tenant": tenant}))
        if md is not None and md.rate_per_s:
            limits.append((MODEL_KEY.format(model), md.rate_per_s, md.burst or max(1, int(md.rate_per_s)),
                           f"model {model}", {"model": model}))
        if not limits:
            return ADMIT
        taking = ask.conn.begin_nested()  # both buckets or neither
        for key, rate, burst, who, detail in limits:
            wait_s = ratelimit.try_take(ask.conn, key, now=ask.now, rate_per_s=rate, burst=burst)
            if wait_s is None or wait_s > 0:
                taking.rollback()
                wait_s = 1.0 if wait_s is None else wait_s
                return defer("rate.limited", f"{who} is at its rate of {rate:g} assignments/s (burst {burst})",
                             ask.now + wait_s, rate_per_s=rate, burst=burst, **detail)
        taking.commit()
        return ADMIT

"""The operator's policy table: per-tenant and per-route limits, rates, period budgets and fair-share weights,
per-model rates and prices.

A YAML file (``COGO_POLICY_FILE``, default ``<home>/policy.yaml``), read again when it changes, so an operator
edits limits without restarting anything::

    tenants:
      "*":  {maxConcurrent: 50}                 # every tenant without its own entry
      acme: {maxConcurrent: 4, ratePerS: 2, burst: 4, weight: 2, budgetUsd: {day: 10, month: 200}}
    routes:
      codegen.generate: {maxConcurrent: 8, maxConcurrentPerTenant: 4}
    models:
      gpt-4o-mini: {ratePerS: 5, burst: 10, usdPer1kTokens: 0.0006}   # the price table

A file that does not parse keeps the table that was in force (and says why in the log); a missing file is an
empty table (no limits).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import ConfigError

log = logging.getLogger(__name__)
RELOAD_EVERY_S = 1.0
"""How often the file's modification time is looked at."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class PeriodBudget(_Entry):
    """What a tenant may spend per UTC day and per UTC month, in dollars (either may be absent)."""

    day: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    month: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class TenantRules(_Entry):
    """One tenant's limits (all optional)."""

    max_concurrent: int | None = Field(default=None, ge=1, alias="maxConcurrent")
    rate_per_s: float | None = Field(default=None, gt=0, alias="ratePerS", allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=1)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    budget_usd: PeriodBudget | None = Field(default=None, alias="budgetUsd")


class RouteRules(_Entry):
    """One route's limits (all optional)."""

    max_concurrent: int | None = Field(default=None, ge=1, alias="maxConcurrent")
    max_concurrent_per_tenant: int | None = Field(default=None, ge=1, alias="maxConcurrentPerTenant")


class ModelRules(_Entry):
    """One model's rate and price (optional)."""

    rate_per_s: float | None = Field(default=None, gt=0, alias="ratePerS", allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=1)
    usd_per_1k_tokens: float | None = Field(default=None, ge=0, alias="usdPer1kTokens", allow_inf_nan=False)


class Table(_Entry):
    """The whole table."""

    tenants: dict[str, TenantRules] = Field(default_factory=dict)
    routes: dict[str, RouteRules] = Field(default_factory=dict)
    models: dict[str, ModelRules] = Field(default_factory=dict)

    def tenant(self, tenant: str) -> TenantRules:
        """``tenant``'s rules, else the ``"*"`` entry's, else none."""
        return self.tenants.get(tenant) or self.tenants.get("*") or TenantRules()

    def route(self, route: str) -> RouteRules:
        """``route``'s rules (``service.role``), else the ``"*"`` entry's, else none."""
        return self.routes.get(route) or self.routes.get("*") or RouteRules()

    def usd_per_token(self, model: str) -> float | None:
        """``model``'s price per token from the table, or None when it has none (its cost is then what the worker
        metered)."""
        rules = self.models.get(model)
        return None if rules is None or rules.usd_per_1k_tokens is None else rules.usd_per_1k_tokens / 1000

    @property
    def limits_concurrency(self) -> bool:
        """Whether any concurrency limit is set (the brain wakes waiting assignments only then)."""
        return any(t.max_concurrent for t in self.tenants.values()) or any(
            r.max_concurrent or r.max_concurrent_per_tenant for r in self.routes.values())


def parse(text: str, *, where: str = "policy table") -> Table:
    """The table in ``text``.

    Raises:
        ConfigError: not YAML, or not the table's shape (the message names the field).
    """
    try:
        data = yaml.safe_load(text) or {}
        return Table.model_validate(data)
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ConfigError(f"{where} is invalid: {exc}", details={"file": where}) from None


def live(path: Path) -> Live:
    """The one ``Live`` table of ``path`` in this process, shared by every policy that reads it."""
    found = _LIVE.get(path)
    if found is None:
        found = _LIVE[path] = Live(path)
    return found


@dataclass
class Live:
    """The table of a file, read again (at most every ``RELOAD_EVERY_S``) when the file changed."""

    path: Path
    table: Table = Table()
    _mtime: float | None = None
    _looked: float = float("-inf")

    def get(self, now: float) -> Table:
        """The table in force at ``now``."""
        if now - self._looked < RELOAD_EVERY_S and self._looked <= now:
            return self.table
        self._looked = now
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            self.table, self._mtime = Table(), None
            return self.table
        if mtime != self._mtime:
            try:
                self.table = parse(self.path.read_text(), where=str(self.path))
            except (ConfigError, OSError) as exc:
                log.error("the policy table %s is kept as it was: %s", self.path, exc)
            self._mtime = mtime
        return self.table


_LIVE: dict[Path, Live] = {}

"""Admission as a list of policies: each answers admit, deny (with a stable code and a reason) or defer (until a
time, or after a doubling delay), and the dispatcher (``coordinator/dispatcher.py``) acts on the combined answer.

A policy is one module: a class with a ``name`` and ``check(ask) -> Verdict``, built once per dispatcher process
from a ``Setup``. Which policies run, and in which order, is one line of configuration,
``COGO_ADMISSION_POLICIES`` (names of ``POLICIES`` or ``module:Class`` entries). The combined answer: the first
denial wins (waiting would not help); else the first deferral (the assignment stays queued, consumes no attempt
and no budget, and ``explain`` shows the deferral's reason); else admit. A policy that *takes* something when it
admits (a rate limit's token) says so with ``takes = True`` and is asked only while every policy before it
admitted, so nothing is taken for an assignment that then waits; a policy that holds something until the
assignment is settled (a period budget) holds it in ``admitted(ask)``, called once the answer is admit.

Adding a policy: write ``coordinator/admission/<name>.py`` with the class, add ``"<name>": "module:Class"`` to
``POLICIES`` (or name ``module:Class`` in ``COGO_ADMISSION_POLICIES`` directly), list it in the setting.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection

from bus.envelope import Assignment
from bus.errors import ConfigError, Problem
from bus.settings import Settings


@dataclass(frozen=True)
class Verdict:
    """One policy's answer, or the dispatcher's: admitted, deferred (ask again at ``until``, or after a doubling
    delay when None) or denied, with a stable code and a reason in plain words."""

    admitted: bool
    code: str = ""
    reason: str = ""
    detail: Mapping[str, Any] | None = None
    deferred: bool = False
    until: float | None = None

    def problem(self) -> Problem:
        """Why it was not admitted, as data (a denial is final; a deferral is not)."""
        return Problem(self.code, self.reason, self.deferred, dict(self.detail or {}))


ADMIT = Verdict(True)


def deny(code: str, reason: str, **detail: Any) -> Verdict:
    """A final refusal: the assignment fails with ``code``."""
    return Verdict(False, code, reason, detail)


def defer(code: str, reason: str, until: float | None = None, **detail: Any) -> Verdict:
    """Not now: ask again at ``until`` (epoch seconds) or after a doubling delay; ``reason`` is what ``explain``
    says the assignment waits for."""
    return Verdict(False, code, reason, detail, deferred=True, until=until)


@dataclass(frozen=True)
class Ask:
    """One assignment being admitted, inside the dispatcher's admission transaction.

    Attributes:
        conn: the admission transaction (a policy reads what it needs and writes only its own tables).
        row: its ``agent_messages`` row.
        assignment: its contract (model, version, budget, TTL).
        now: the dispatcher's clock.
        first: a first admission (``queued``), or a re-admission after a retry's backoff (``retry_wait``), which
            keeps the budget it reserved the first time.
        budgets: every budget of the run tree above it with what is committed to each (read with the tree's
            root locked; empty when none, or on a re-admission).
        woken: filled by a policy that wakes other waiting assignments.
    """

    conn: Connection
    row: Any
    assignment: Assignment
    now: float
    first: bool = True
    budgets: Sequence[Any] = ()
    woken: list[tuple[str, int]] = field(default_factory=list)
    """``(row id, shard)`` of waiting assignments a policy asks to be asked again now (sent after commit)."""

    @property
    def route(self) -> str:
        """``service.role``, as operators write it."""
        return f"{self.row.service}.{self.row.role}"


@dataclass(frozen=True)
class Setup:
    """What a policy is built with, once per dispatcher process.

    Attributes:
        settings: the fleet's settings.
        routes: the ``(service, role)`` routes the composition root declares (the process table's workers).
    """

    settings: Settings
    routes: frozenset[tuple[str, str]] = field(default_factory=frozenset)


class Policy(Protocol):
    """One admission rule."""

    name: ClassVar[str]

    def check(self, ask: Ask) -> Verdict:
        """Admit, deny or defer ``ask``."""
        ...

    # Optional: ``prepare(conn, rows, now)``, called once per admission transaction with every row it will ask
    # about, to take the locks the policy needs in one order (a deadlock needs two orders); and ``admitted(ask)``,
    # called once every policy admitted ``ask``, in its admission transaction, to hold what the policy counts (a
    # period budget's reservation), so nothing is held for an assignment that waits.


POLICIES: dict[str, str] = {
    "agents": "coordinator.admission.agents:AgentsPolicy",
    "models": "coordinator.admission.models:ModelsPolicy",
    "concurrency": "coordinator.admission.concurrency:ConcurrencyPolicy",
    "budgets": "coordinator.admission.budgets:BudgetsPolicy",
    "period": "coordinator.admission.period:PeriodBudgetPolicy",
    "circuits": "coordinator.admission.circuits:CircuitsPolicy",
    "rate": "coordinator.admission.rates:RatePolicy",
}
"""Every policy by the name ``COGO_ADMISSION_POLICIES`` uses: one line each."""


def build(setup: Setup, names: Sequence[str] | None = None) -> list[Policy]:
    """The policies ``names`` (default: the setting's), in order.

    Raises:
        ConfigError: a name that is neither a policy nor a ``module:Class`` that can be loaded.
    """
    chosen = names if names is not None else setup.settings.admission_policy_names
    return [_load(entry)(setup) for entry in chosen]


def _load(entry: str) -> type:
    target = POLICIES.get(entry, entry)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise ConfigError(f"admission policy {entry!r} is not one of {sorted(POLICIES)} nor a module:Class",
                          details={"known": sorted(POLICIES)})
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"admission policy {entry!r} cannot be loaded: {exc}") from exc
    return cls


def prepare(policies: Sequence[Policy], conn: Connection, rows: Sequence[Any], now: float) -> None:
    """Let the policies that lock something take their locks for the whole batch first."""
    for policy in policies:
        hook = getattr(policy, "prepare", None)
        if hook is not None:
            hook(conn, rows, now)


def admitted(policies: Sequence[Policy], ask: Ask) -> None:
    """Tell the policies that hold something that ``ask`` was admitted."""
    for policy in policies:
        hook = getattr(policy, "admitted", None)
        if hook is not None:
            hook(ask)


def evaluate(policies: Sequence[Policy], ask: Ask) -> Verdict:
    """The combined answer of ``policies`` for ``ask``: the first denial, else the first deferral, else admit."""
    waiting: Verdict | None = None
    for policy in policies:
        if waiting is not None and getattr(policy, "takes", False):
            continue
        verdict = policy.check(ask)
        if verdict.admitted:
            continue
        if not verdict.deferred:
            return verdict
        waiting = waiting or verdict
    return waiting or ADMIT

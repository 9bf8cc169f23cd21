"""The one process table: every process of the fleet, its command and the queues it consumes.

``cogo up``, the Dockerfile, ``docker-compose.yml`` and the Procfile are all derived from this table;
a test checks that they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from bus.errors import ConfigError
from bus.routing import DECIDE, EXECUTE, ORCHESTRATOR, queue_name
from bus.settings import Settings
from workers import build_test, codegen, kg_build, rag_embed

Kind = Literal["celery", "http", "loop", "flower"]


@dataclass(frozen=True)
class Process:
    """One process of the fleet.

    Attributes:
        name: the name from the user's plan (seed 003).
        kind: ``celery`` (consumes queues), ``http`` (serves a port), ``loop`` (a timer), ``flower``.
        entry: ``module:function`` that runs it; called with the settings and the process name.
        routes: ``(service, role)`` pairs it consumes; one queue per shard each.
        port_setting: for ``http`` and ``flower``, the Settings field holding its port.
        interval_setting: for ``loop``, the Settings field holding its tick interval (its health check's clock).
        replicas: how many copies ``cogo up`` starts.
        sharded: one copy per shard, each consuming only its own shard's queues (``COGO_SHARD``), so runs of
            one shard never wait behind another's; otherwise every copy consumes every shard.
        ephemeral: for a worker, run each assignment in a fresh child process that exits when it is done
            (``workers/ephemeral.py``); ``COGO_EPHEMERAL`` turns it on without editing the table.
    """

    name: str
    kind: Kind
    entry: str
    description: str
    routes: tuple[tuple[str, str], ...] = ()
    port_setting: str | None = None
    interval_setting: str | None = None
    replicas: int = 1
    sharded: bool = False
    ephemeral: bool = False

    @property
    def runs_assignments(self) -> bool:
        """A worker: it consumes assignment queues (not the orchestrator's), so it may be ephemeral."""
        return self.kind == "celery" and bool(self.routes) and all(s != ORCHESTRATOR for s, _ in self.routes)

    def queues(self, shards: int, shard: int = -1) -> list[str]:
        """The Celery queues this process consumes when the fleet runs ``shards`` shards: a sharded process
        started for one shard (``shard`` ≥ 0) consumes only that shard's."""
        mine = [shard] if self.sharded and shard >= 0 else range(shards)
        return [queue_name(service, role, s) for service, role in self.routes for s in mine]

    def copies(self, shards: int) -> int:
        """How many copies ``cogo up`` starts: one per shard for a sharded process, else its replicas."""
        return shards if self.sharded and shards > 1 else self.replicas

    @property
    def command(self) -> list[str]:
        """The command line that starts it (``cogo process <name>``)."""
        return ["cogo", "process", self.name]


PROCESSES: tuple[Process, ...] = (
    Process("orchestrator-chat", "http", "ecosystem.entrypoints:api",
            "HTTP ingress and the API: intents, runs, events, approvals, plan/execute/state",
            port_setting="api_port"),
    Process("cogo-orchestrator-brain", "celery", "ecosystem.entrypoints:brain",
            "loads a run's state, plans purely, applies decisions in two phases",
            routes=((ORCHESTRATOR, DECIDE),), sharded=True),
    Process("cogo-executor-dispatcher", "celery", "ecosystem.entrypoints:dispatcher",
            "admits assignments (model allow-list, run and root budgets) and routes them; re-admits retries",
            routes=((ORCHESTRATOR, EXECUTE),), sharded=True),
    Process("cogo-codegen-service", "celery", "ecosystem.entrypoints:codegen",
            "spec → artifacts/<taskId>/edits.json", routes=(codegen.ROUTE,)),
    Process("cogo-build-test-worker", "celery", "ecosystem.entrypoints:build_test",
            "applies edits in a sandbox, builds and tests → artifacts/<taskId>/build-test/report.json",
            routes=(build_test.ROUTE,)),
    Process("cogo-rag-embed", "celery", "ecosystem.entrypoints:rag_embed",
            "embeds documents for the indexing flow", routes=(rag_embed.ROUTE,)),
    Process("cogo-kg-builder", "celery", "ecosystem.entrypoints:kg_build",
            "builds a knowledge graph from embedded documents", routes=(kg_build.ROUTE,)),
    Process("cogo-bus-reclaimer", "loop", "ecosystem.entrypoints:reclaimer",
            "re-sends what the broker dropped, expires leases, dead-letters", interval_setting="reclaim_interval_s"),
    Process("cogo-bus-retention", "loop", "ecosystem.entrypoints:retention",
            "prunes settled rows and old events", interval_setting="retention_interval_s"),
    Process("cogo-metrics-server", "http", "ecosystem.entrypoints:metrics",
            "Prometheus /metrics and the metrics JSON endpoints", port_setting="metrics_port"),
    Process("flower", "flower", "ecosystem.flower:main",
            "live view of workers and queues", port_setting="flower_port"),
)


EPHEMERAL_ALL = "all"
"""``COGO_EPHEMERAL=all``: every worker of the table is ephemeral."""


def with_ephemeral(settings: Settings, processes: Sequence[Process] = PROCESSES) -> tuple[Process, ...]:
    """The table with ``COGO_EPHEMERAL`` applied: each worker it names (every worker for ``all``) is ephemeral.

    Raises:
        ConfigError: a name is not in the table, or names a process that runs no assignments.
    """
    names = settings.ephemeral_names
    known = {p.name: p for p in processes}
    unknown = sorted(n for n in names - {EPHEMERAL_ALL} if n not in known)
    if unknown:
        raise ConfigError(f"COGO_EPHEMERAL names no process of the table: {', '.join(map(repr, unknown))}; workers: "
                          f"{', '.join(p.name for p in processes if p.runs_assignments)}",
                          details={"variable": "COGO_EPHEMERAL", "unknown": unknown})
    not_workers = sorted(n for n in names if n in known and not known[n].runs_assignments)
    if not_workers:
        raise ConfigError(f"COGO_EPHEMERAL may name only workers; {', '.join(map(repr, not_workers))} run no "
                          "assignments", details={"variable": "COGO_EPHEMERAL", "not_workers": not_workers})
    every = EPHEMERAL_ALL in names
    return tuple(replace(p, ephemeral=True) if p.runs_assignments and (every or p.name in names) else p
                 for p in processes)


def is_ephemeral(name: str, settings: Settings) -> bool:
    """Whether the worker process ``name`` runs each assignment in a fresh child: marked so in the table, or
    named by ``COGO_EPHEMERAL`` (``all`` included; ``cogo up`` has checked the names against the table)."""
    names = settings.ephemeral_names
    marked = any(p.name == name and p.ephemeral for p in PROCESSES)
    return marked or name in names or EPHEMERAL_ALL in names


def by_name(name: str) -> Process:
    """The process called ``name``.

    Raises:
        ConfigError: no such process; the message lists the known names.
    """
    for process in PROCESSES:
        if process.name == name:
            return process
    raise ConfigError(f"no process named {name!r}; known: {', '.join(p.name for p in PROCESSES)}")

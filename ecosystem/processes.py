"""The one process table: every process of the fleet, its command and the queues it consumes.

``cogo up``, the Dockerfile, ``docker-compose.yml`` and the Procfile are all derived from this table;
a test checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bus.errors import ConfigError
from bus.routing import queue_name

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
    """

    name: str
    kind: Kind
    entry: str
    description: str
    routes: tuple[tuple[str, str], ...] = ()
    port_setting: str | None = None
    interval_setting: str | None = None
    replicas: int = 1

    def queues(self, shards: int) -> list[str]:
        """The Celery queues this process consumes when the fleet runs ``shards`` shards."""
        return [queue_name(service, role, shard) for service, role in self.routes for shard in range(shards)]

    @property
    def command(self) -> list[str]:
        """The command line that starts it (``cogo process <name>``)."""
        return ["cogo", "process", self.name]


PROCESSES: tuple[Process, ...] = (
    Process("orchestrator-chat", "http", "coordinator.api.server:main",
            "HTTP ingress and the API: intents, runs, events, approvals, plan/execute/state",
            port_setting="api_port"),
    Process("cogo-orchestrator-brain", "celery", "coordinator.brain:main",
            "loads a run's state, plans purely, applies decisions in two phases",
            routes=(("orchestrator", "decide"),)),
    Process("cogo-executor-dispatcher", "celery", "coordinator.dispatcher:main",
            "admits assignments (model allow-list, run and root budgets) and routes them; re-admits retries",
            routes=(("orchestrator", "execute"),)),
    Process("cogo-codegen-service", "celery", "workers.codegen:main",
            "spec → artifacts/<taskId>/edits.json", routes=(("codegen", "generate"),)),
    Process("cogo-build-test-worker", "celery", "workers.build_test:main",
            "applies edits in a sandbox, builds and tests → artifacts/<taskId>/build-test/report.json",
            routes=(("code", "build-test"),)),
    Process("cogo-rag-embed", "celery", "workers.rag_embed:main",
            "embeds documents for the indexing flow", routes=(("rag", "embed"),)),
    Process("cogo-kg-builder", "celery", "workers.kg_build:main",
            "builds a knowledge graph from embedded documents", routes=(("kg", "build"),)),
    Process("cogo-bus-reclaimer", "loop", "workers.reclaimer:main",
            "re-sends what the broker dropped, expires leases, dead-letters", interval_setting="reclaim_interval_s"),
    Process("cogo-bus-retention", "loop", "workers.retention:main",
            "prunes settled rows and old events", interval_setting="retention_interval_s"),
    Process("cogo-metrics-server", "http", "coordinator.metrics:main",
            "Prometheus /metrics and the metrics JSON endpoints", port_setting="metrics_port"),
    Process("flower", "flower", "ecosystem.flower:main",
            "live view of workers and queues", port_setting="flower_port"),
)


def by_name(name: str) -> Process:
    """The process called ``name``.

    Raises:
        ConfigError: no such process; the message lists the known names.
    """
    for process in PROCESSES:
        if process.name == name:
            return process
    raise ConfigError(f"no process named {name!r}; known: {', '.join(p.name for p in PROCESSES)}")

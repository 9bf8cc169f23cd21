"""The composition root: each process of the table, built from the domain's parts and run until SIGTERM.

``ecosystem/processes.py`` names these functions; ``cogo process <name>`` calls one with the settings and the
process name. Nothing in ``bus``, ``coordinator`` or ``workers`` knows about processes: they are wired here,
so the layers point one way (``tests/test_layers.py``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping

from bus.celery_app import TASK_DECIDE, TASK_EXECUTE, make_celery
from bus.consumer import run_consumer
from bus.db import make_engine
from bus.outbox import Publisher
from bus.readiness import mark_ready
from bus.settings import Settings
from workers.handler import Handler

log = logging.getLogger(__name__)


def api(settings: Settings, name: str) -> None:
    """``orchestrator-chat``: the HTTP API on ``api_host:api_port``."""
    import uvicorn

    from coordinator.api.deps import Services
    from coordinator.api.server import create_app
    from coordinator.definitions import Registry

    app = create_app(Services(engine=make_engine(settings.database_url, pool_size=10),
                              publisher=Publisher(make_celery(settings, name=name)),
                              registry=Registry.load(settings.workflows_dir), settings=settings))
    app.router.on_startup.append(mark_ready)
    # An open live stream (GET /api/stream) never ends by itself: stop waiting for it after a few seconds.
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level=settings.log_level.lower(),
                access_log=False, timeout_graceful_shutdown=3)


def metrics(settings: Settings, name: str) -> None:
    """``cogo-metrics-server``: Prometheus ``/metrics`` and the JSON cards on ``api_host:metrics_port``; it folds the
    audit log into the counters every second (``coordinator/metrics/fold.py``)."""
    import uvicorn

    from coordinator.definitions import Registry
    from coordinator.metrics.server import FOLD_EVERY_S, create_app

    app = create_app(make_engine(settings.database_url), settings,
                     publisher=Publisher(make_celery(settings, name=name)),
                     registry=Registry.load(settings.workflows_dir), fold_every_s=FOLD_EVERY_S)
    app.router.on_startup.append(mark_ready)
    uvicorn.run(app, host=settings.api_host, port=settings.metrics_port, log_level=settings.log_level.lower(),
                access_log=False)


def brain(settings: Settings, name: str) -> None:
    """``cogo-orchestrator-brain``: consume ``orchestrator.decide.<shard>`` of its shard (``COGO_SHARD``), or of
    every shard."""
    from coordinator.admission.waiting import Waiting
    from coordinator.brain import Brain
    from coordinator.definitions import Registry
    from coordinator.notify import redis_notifier
    from ecosystem.processes import by_name

    planner = Brain(engine=make_engine(settings.database_url),
                    publisher=Publisher(make_celery(settings, name=f"{name}-producer")),
                    registry=Registry.load(settings.workflows_dir), shards=settings.shards,
                    notify=redis_notifier(settings), sql_events=settings.sql_events,
                    batch_after_s=settings.brain_batch_after_s if settings.brain_batch_after_s >= 0 else None,
                    waiting=Waiting(settings.policy_path))
    run_consumer(settings, name=name, queues=by_name(name).queues(settings.shards, settings.shard),
                 task_name=TASK_DECIDE, handle=planner.handle)


def dispatcher(settings: Settings, name: str) -> None:
    """``cogo-executor-dispatcher``: consume ``orchestrator.execute.<shard>`` of its shard (``COGO_SHARD``), or of
    every shard."""
    from bus.routing import ORCHESTRATOR
    from coordinator.admission import Setup, build
    from coordinator.dispatcher import Dispatcher
    from ecosystem.processes import PROCESSES, by_name

    routes = frozenset(r for p in PROCESSES for r in p.routes if p.kind == "celery" and r[0] != ORCHESTRATOR)
    admission = Dispatcher(engine=make_engine(settings.database_url),
                           publisher=Publisher(make_celery(settings, name=f"{name}-producer")),
                           policies=build(Setup(settings, routes)), sql_events=settings.sql_events)
    run_consumer(settings, name=name, queues=by_name(name).queues(settings.shards, settings.shard),
                 task_name=TASK_EXECUTE, handle=admission.handle, handle_batch=admission.handle_batch)


def _serve(settings: Settings, name: str, handlers: Mapping[tuple[str, str], Handler]) -> None:
    serve_worker(settings, name, handlers)


def serve_worker(settings: Settings, name: str, handlers: Mapping[tuple[str, str], Handler]) -> None:
    """Run a worker process: the consumer of its queues; for an ephemeral process (``COGO_EPHEMERAL`` or the table)
    a consumer that starts this same command line again for each assignment; and, with ``COGO_ASSIGNMENT_ID`` set
    (such a child, or a Kubernetes Job of ``k8s/``), the run of that one assignment, after which the process exits."""
    from ecosystem.processes import is_ephemeral
    from workers import ephemeral
    from workers.runtime import serve

    assignment_id = os.environ.get(ephemeral.ASSIGNMENT_ENV)
    if assignment_id:
        ephemeral.run_one(settings, name=name, handlers=handlers, assignment_id=assignment_id)
        return
    spawn = [sys.executable, *sys.orig_argv[1:]] if is_ephemeral(name, settings) else None
    serve(settings, name=name, handlers=handlers, spawn=spawn)


def build_test(settings: Settings, name: str) -> None:
    """``cogo-build-test-worker``: serve ``code.build-test`` in the sandbox probed once at start."""
    from workers import build_test as module
    from workers.confine import Sandbox

    sandbox = Sandbox.from_settings(settings)
    try:
        log.info("build-test sandbox: %s", sandbox.mode)  # probe once at start
    except Exception as exc:  # noqa: BLE001 - WorkFailed: no sandbox here; every build-test will say so
        log.error("every build-test will be refused: %s", exc)
    _serve(settings, name, {module.ROUTE: functools.partial(module.build_test, sandbox=sandbox)})


def codegen(settings: Settings, name: str) -> None:
    """``cogo-codegen-service``: serve ``codegen.generate``."""
    from workers import codegen as module

    _serve(settings, name, module.HANDLERS)


def rag_embed(settings: Settings, name: str) -> None:
    """``cogo-rag-embed``: serve ``rag.embed``."""
    from workers import rag_embed as module

    _serve(settings, name, module.HANDLERS)


def kg_build(settings: Settings, name: str) -> None:
    """``cogo-kg-builder``: serve ``kg.build``."""
    from workers import kg_build as module

    _serve(settings, name, module.HANDLERS)


def reclaimer(settings: Settings, name: str) -> None:
    """``cogo-bus-reclaimer``: a sweep every ``reclaim_interval_s``."""
    from bus.reclaimer import Reclaimer

    _logging(settings)
    sweeper = Reclaimer(engine=make_engine(settings.database_url),
                        publisher=Publisher(make_celery(settings, name=name)), settings=settings)

    def tick() -> None:
        swept = sweeper.sweep()
        if swept.expired or swept.dead or swept.resent or swept.abandoned:
            log.info("reclaimed: %d leases expired, %d dead, %d re-sent, %d abandoned closed", swept.expired,
                     swept.dead, swept.resent, swept.abandoned)

    run_forever(tick, settings.reclaim_interval_s, name=name)


def retention(settings: Settings, name: str) -> None:
    """``cogo-bus-retention``: prune ended run trees every ``retention_interval_s`` (the audit rows it deletes are
    folded into the counters first: ``coordinator/retention.py``)."""
    from coordinator.retention import prune

    _logging(settings)
    engine = make_engine(settings.database_url)

    def tick() -> None:
        pruned = prune(engine, retention_days=settings.retention_days)
        if pruned.runs or pruned.messages:
            log.info("pruned %d runs and %d orphan messages", pruned.runs, pruned.messages)

    run_forever(tick, settings.retention_interval_s, name=name)


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_forever(tick: Callable[[], object], interval_s: float, *, name: str) -> None:
    """Call ``tick`` every ``interval_s`` until SIGTERM or SIGINT; a failing tick is logged, not fatal. The ready
    file is touched after every tick that succeeded (its age is the loop's health: ``cogo health``)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready = False
    while not stop.is_set():
        try:
            tick()
        except Exception as exc:  # the loop must outlive a database or broker outage
            log.warning("%s tick failed: %s", name, exc)
        else:
            mark_ready()
            ready = True
        if not ready:  # ready once it has tried: an outage at startup must not hold the fleet's start
            mark_ready()
            ready = True
        stop.wait(interval_s)

"""``cogo-metrics-server``: Prometheus ``/metrics`` (a key with ``metrics:read``, or admin: every tenant's counters)
and the dashboard's JSON cards (a key sees its tenant's rows), over one ledger; and, while it runs, the fold of the
audit log into the counters, every ``FOLD_EVERY_S`` (``fold.py``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine

from bus.outbox import Publisher
from bus.settings import Settings
from coordinator.definitions import Registry
from coordinator.keys import Principal
from coordinator.metrics.depths import queue_depths
from coordinator.metrics.fold import fold
from coordinator.metrics.scrape import Collector, Sources

log = logging.getLogger(__name__)
FOLD_EVERY_S = 1.0
"""How often the server folds the audit log into the counters."""


class FoldLoop:
    """Folds the audit log every ``every_s`` in a daemon thread while the server runs; a failed fold (the ledger
    is down) is logged and tried again at the next tick."""

    def __init__(self, engine: Engine, every_s: float, clock: Callable[[], float] = time.time):
        self.engine, self.every_s, self.clock = engine, every_s, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._success: float | None = None

    def start(self) -> None:
        """Start folding (the first fold at once)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="metrics-fold", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the fold under way, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def last_success(self) -> float | None:
        """When a fold last succeeded (None: none yet)."""
        return self._success

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                fold(self.engine, clock=self.clock)
                self._success = self.clock()
            except Exception as exc:  # the loop outlives a ledger outage
                log.warning("the metrics fold failed: %s", exc)
            self._stop.wait(self.every_s)


def create_app(engine: Engine, settings: Settings, *, publisher: Publisher | None = None,
               registry: Registry | None = None, fold_every_s: float | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The metrics app over one ledger. ``publisher``: its broker is asked for queue depths (default: one made from
    the settings; one with no Celery app, none asked). ``fold_every_s``: fold while the app runs (None: never)."""
    from bus.celery_app import make_celery
    from coordinator.api.auth import scoped
    from coordinator.api.cards import router as cards_router
    from coordinator.api.deps import Services
    from coordinator.api.errors import install_error_handlers

    publisher = publisher if publisher is not None else Publisher(make_celery(settings, name="cogo-metrics-server"))
    app = FastAPI(title="cogo metrics")
    app.state.services = Services(engine=engine, publisher=publisher,
                                  registry=registry if registry is not None else Registry.load(settings.workflows_dir),
                                  settings=settings)
    app.state.clock = clock  # the cards' clock (``coordinator/api/cards.py``)
    install_error_handlers(app)
    loop = FoldLoop(engine, fold_every_s, clock) if fold_every_s is not None else None
    if loop is not None:
        app.router.on_startup.append(loop.start)
        app.router.on_shutdown.append(loop.stop)
    broker = getattr(publisher, "app", None)
    sources = Sources(shards=settings.shards,
                      depths=(lambda queues: queue_depths(broker, queues)) if broker is not None else None,
                      home=settings.home, fold_success=loop.last_success if loop is not None else None)
    collectors = CollectorRegistry()
    collectors.register(Collector(engine, sources, clock))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics(_who: Principal = Depends(scoped("metrics:read"))) -> Response:
        return Response(generate_latest(collectors), media_type=CONTENT_TYPE_LATEST)

    app.include_router(cards_router)
    return app

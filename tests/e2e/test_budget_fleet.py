"""Issue 9's overspend reproduction on real processes and PostgreSQL: 20 runs of ``parallel [a1→a2, b1→b2]``
under a 2,000-token run budget, 1,000 tokens per assignment, on a document that meters 920. Before the fix,
20 of 20 runs spent 2,760. Now every run stays within its budget: a1 and b1 spend 1,840, and a2 and b2, which
cannot fit, are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console
from sqlalchemy import select

from bus.db import make_engine
from coordinator.client import Client
from coordinator.schema import runs
from ecosystem.launcher import Fleet
from ecosystem.processes import PROCESSES, by_name
from tests.e2e.conftest import CORE, fleet_settings
from tests.support.invariants import assert_ledger_held

pytestmark = pytest.mark.e2e

RUNS = 20
DOCUMENT = [{"id": "doc", "text": " ".join(f"w{i}" for i in range(760))}]  # chunked with overlap: 920 tokens


def test_twenty_fan_outs_never_pass_their_budget(tmp_path, owned_redis, engine_url_for):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url, database_url=engine_url_for("postgres"))
    table = [replace(by_name("cogo-rag-embed"), replicas=2) if p.name == "cogo-rag-embed" else p for p in PROCESSES]
    with Fleet(settings, only=[*CORE, "cogo-rag-embed"], processes=table, free_ports=True,
               console=Console(quiet=True), show_logs=False) as fleet:
        with Client(fleet.api_url, api_key=fleet.api_key) as client:
            ids = [client.submit("twin-chains", tenant="acme", payload={"documents": DOCUMENT}) for _ in range(RUNS)]
            ended = [client.wait(run_id, timeout_s=120) for run_id in ids]
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            spent = dict(conn.execute(select(runs.c.id, runs.c.spent_tokens).where(runs.c.id.in_(ids))).all())
        assert_ledger_held(engine, expect_runs=RUNS)
    finally:
        engine.dispose()
    assert max(spent.values()) <= 2000, spent
    assert sorted(set(spent.values())) == [1840]  # a1 and b1 ran, neither a2 nor b2 could fit
    assert {(r["status"], r["error"]["code"]) for r in ended} == {("failed", "budget.exceeded")}

"""Per-shard processes: with ``COGO_SHARDS=2`` the fleet runs one brain and one dispatcher per shard, each consuming
only its own shard's queues, so a run tree's work stays on its shard and a stalled shard holds up only its own runs.
"""

from __future__ import annotations

import os
import signal

import pytest
from rich.console import Console

from bus.routing import shard_for
from coordinator.client import Client
from ecosystem.launcher import Fleet
from tests.e2e.conftest import CORE, TABLE, fleet_settings
from tests.support.fault_fleet import child

pytestmark = pytest.mark.e2e

DOCUMENTS = [{"id": "d1", "text": "one shard at a time"}]


def test_each_shard_has_its_own_brain_and_dispatcher_and_a_stalled_shard_holds_up_only_its_runs(
        tmp_path, e2e_env, owned_redis):
    settings = fleet_settings(tmp_path, broker_url=owned_redis.url, shards=2)
    with Fleet(settings, only=[*CORE, "cogo-rag-embed"], processes=TABLE, free_ports=True, env=e2e_env,
               console=Console(quiet=True), show_logs=False) as fleet:
        labels = {c.label for c in fleet.children}
        assert {"cogo-orchestrator-brain-0", "cogo-orchestrator-brain-1", "cogo-executor-dispatcher-0",
                "cogo-executor-dispatcher-1"} <= labels
        with Client(fleet.api_url, api_key=fleet.api_key) as client:
            consumers = {c["hostname"]: c["queues"] for c in client.fleet()["consumers"]
                         if c["name"] in ("cogo-orchestrator-brain", "cogo-executor-dispatcher")}
            assert sorted(consumers.values()) == [["orchestrator.decide.0"], ["orchestrator.decide.1"],
                                                  ["orchestrator.execute.0"], ["orchestrator.execute.1"]], consumers
            stalled = child(fleet, "cogo-orchestrator-brain-1")
            os.kill(stalled.pid, signal.SIGSTOP)  # shard 1's brain stops taking anything
            try:
                by_shard: dict[int, list[str]] = {0: [], 1: []}
                while len(by_shard[0]) < 3 or len(by_shard[1]) < 3:  # run ids are random: submit until both have 3
                    run_id = client.submit("embed", tenant="acme", payload={"documents": DOCUMENTS})
                    by_shard[shard_for(run_id, 2)].append(run_id)
                for run_id in by_shard[0]:
                    assert client.wait(run_id, timeout_s=60)["status"] == "completed"
                assert {client.run(r)["status"] for r in by_shard[1]} == {"pending"}
            finally:
                os.kill(stalled.pid, signal.SIGCONT)
            for run_id in by_shard[1]:
                assert client.wait(run_id, timeout_s=60)["status"] == "completed"

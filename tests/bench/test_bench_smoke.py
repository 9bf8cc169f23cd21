"""A smoke run of the benchmark (``python -m bench run --quick --ledger sqlite``), so it cannot silently rot.

It asserts that every scenario reports its keys with numbers — never what the numbers are: timings belong
in ``bench/results``, not in a test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from numbers import Number
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
SIDES = ("cogo", "celery")


def numbers(mapping: dict, *keys: str) -> None:
    """Every key is present and holds a number."""
    for key in keys:
        assert isinstance(mapping.get(key), Number), f"{key!r} is not a number in {mapping!r}"


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results"
    argv = [sys.executable, "-m", "bench", "run", "--quick", "--ledger", "sqlite", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    written = json.loads((out / "latest.json").read_text())
    assert json.loads(done.stdout) == written, "the printed JSON is the written JSON"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latest.png").stat().st_size > 0
    return written


def test_it_names_versions_and_machine(result):
    for key in ("python", "celery", "kombu", "redis_server", "sqlite"):
        assert isinstance(result["versions"][key], str) and result["versions"][key]
    numbers(result["machine"], "cores", "memory_gib")
    assert list(result["ledgers"]) == ["sqlite"]


def test_step_latency_has_percentiles_for_both_sides_and_their_ratio(result):
    latency = result["ledgers"]["sqlite"]["step_latency"]
    for side in SIDES:
        numbers(latency[side], "p50_ms", "p90_ms", "p99_ms", "count")
    numbers(latency["ratio"], "p50", "p90", "p99")
    numbers(latency["cogo"]["hops_p50_ms"], "worker_to_brain", "brain_to_dispatcher", "dispatcher_to_worker")


def test_throughput_and_ingress_have_rates_for_both_sides(result):
    ledger = result["ledgers"]["sqlite"]
    for side in SIDES:
        numbers(ledger["throughput"][side], "per_s", "seconds")
        numbers(ledger["ingress"][side], "per_s", "p50_ms", "p99_ms", "requests")
    numbers(ledger["throughput"]["ratio"], "per_s")
    numbers(ledger["ingress"]["ratio"], "per_s", "p99")


def test_fanout_reports_wall_time_and_rows_or_why_it_did_not_run(result):
    fanout = result["ledgers"]["sqlite"]["fanout"]
    numbers(fanout["celery"], "wall_s", "backend_keys_written")
    if fanout["cogo"]["status"] == "ok":
        numbers(fanout["cogo"], "wall_s")
        numbers(fanout["cogo"]["ledger_rows"], "total", "agent_messages", "introspection_events")
        numbers(fanout["ratio"], "wall")
    else:
        assert fanout["cogo"]["status"] == "not_run" and fanout["cogo"]["reason"]


def test_growth_reports_cost_per_event_and_memory(result):
    growth = result["ledgers"]["sqlite"]["growth"]["cogo"]
    assert growth["status"] == "completed" and growth["buckets"]
    for bucket in growth["buckets"]:
        numbers(bucket, "history_median", "step_ms", "per_event_ms")
    numbers(growth, "per_event_ratio", "history_events")
    assert growth["rss"] and all(isinstance(s["brain_mib"], Number) for s in growth["rss"])
    numbers(growth["rss_growth"], "brain_mib", "dispatcher_mib")


def test_every_target_is_judged_or_says_why_not(result):
    assert result["targets"]
    for target in result["targets"]:
        assert target["met"] in (True, False) or target.get("note"), target

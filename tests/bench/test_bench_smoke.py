"""A smoke run of the benchmark (``python -m bench run --quick --ledger sqlite``), so it cannot silently rot.

It asserts that every scenario reports its keys with numbers, and that the counts are right (every DBOS
child ran, every gap was measured) — never what the timings are: they belong in ``bench/results``, not in a test.
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
DBOS_VARIANTS = ("short_polling", "default_polling")


def numbers(mapping: dict, *keys: str) -> None:
    """Every key is present and holds a number."""
    for key in keys:
        assert isinstance(mapping.get(key), Number), f"{key!r} is not a number in {mapping!r}"


def positive(mapping: dict, *keys: str) -> None:
    """Every key holds a number above zero."""
    numbers(mapping, *keys)
    for key in keys:
        assert mapping[key] > 0, f"{key!r} is not positive in {mapping!r}"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "results"
    argv = [sys.executable, "-m", "bench", "run", "--quick", "--ledger", "sqlite", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout) == json.loads((out / "latest.json").read_text()), \
        "the printed JSON is the written JSON"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latest.png").stat().st_size > 0
    return out


@pytest.fixture(scope="module")
def result(out) -> dict:
    return json.loads((out / "latest.json").read_text())


def test_it_names_versions_and_machine(result):
    for key in ("python", "celery", "kombu", "redis_server", "sqlite", "dbos"):
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


def test_cogo_runs_the_wide_fanout_and_its_wall_is_set_against_the_narrow_one(result):
    large, config = result["ledgers"]["sqlite"]["large_fanout"], result["config"]
    cogo = large["cogo"]
    assert cogo["status"] == "ok", cogo
    assert cogo["items"] == config["large_fanout_items"]
    positive(cogo, "wall_s")
    assert cogo["ledger_rows"]["tokens"] > cogo["items"]
    assert cogo["deferred"] == 0, "the bench's budget ceilings must not hold a fan-out back"
    numbers(large["ratio"], "wall")
    for variant in DBOS_VARIANTS:
        numbers(large["ratio_dbos"][variant], "wall")
    linearity = large["linearity"]
    assert linearity["items"] == [config["fanout_items"], config["large_fanout_items"]]
    assert linearity["wall_s"] == [result["ledgers"]["sqlite"]["fanout"]["cogo"]["wall_s"], cogo["wall_s"]]
    positive(linearity, "wall_ratio", "items_ratio")
    target = next(t for t in result["targets"] if t["target"].startswith(f"{config['large_fanout_items']:,}-way"))
    assert target["value"] == linearity["wall_ratio"] and target["met"] in (True, False)


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


def test_dbos_step_latency_is_two_gaps_per_three_step_workflow(result):
    latency = result["ledgers"]["sqlite"]["step_latency"]
    dbos = latency["dbos"]
    assert dbos["runs"] == result["config"]["latency_runs"] and dbos["count"] == 2 * dbos["runs"]
    positive(dbos, "p50_ms", "p90_ms", "p99_ms", "polling_interval_s")
    assert dbos["p50_ms"] <= dbos["p90_ms"] <= dbos["p99_ms"] <= dbos["max_ms"]
    numbers(latency["ratio_dbos"], "p50", "p90", "p99")


def test_dbos_throughput_is_measured_at_the_default_and_a_short_polling_interval(result):
    throughput = result["ledgers"]["sqlite"]["throughput"]
    for variant in DBOS_VARIANTS:
        dbos = throughput["dbos"][variant]
        assert dbos["workflows"] == result["config"]["throughput_runs"]
        positive(dbos, "per_s", "seconds", "submit_per_s", "polling_interval_s")
        assert len(dbos["rounds_per_s"]) == result["config"]["throughput_rounds"]
        numbers(throughput["ratio_dbos"][variant], "per_s")
    intervals = {v: throughput["dbos"][v]["polling_interval_s"] for v in DBOS_VARIANTS}
    assert intervals["short_polling"] < intervals["default_polling"]


@pytest.mark.parametrize(("scenario", "size"), [("fanout", "fanout_items"), ("large_fanout", "large_fanout_items")])
def test_every_dbos_fanout_child_ran_and_the_parent_saw_each_result(result, scenario, size):
    fanout = result["ledgers"]["sqlite"][scenario]
    items = result["config"][size]
    for variant in DBOS_VARIANTS:
        dbos = fanout["dbos"][variant]
        assert dbos["status"] == "ok", dbos
        assert dbos["items"] == dbos["results"] == items
        positive(dbos, "wall_s", "polling_interval_s")
        assert dbos["rows_written"] > items  # every child's status row at least, and the parent's
    positive(fanout["celery"], "wall_s")
    assert fanout["celery"]["results"] == items


def test_dbos_worker_memory_is_sampled_for_each_process(result):
    memory = result["ledgers"]["sqlite"]["memory"]["dbos"]
    processes = result["config"]["dbos"]["worker_processes"]
    assert memory["processes"] == processes == result["config"]["worker_processes"]
    assert memory["samples"][0]["phase"] == "started"
    for sample in memory["samples"]:
        assert len(sample["rss_mib"]) == processes and all(mib > 0 for mib in sample["rss_mib"])
    assert memory["max_mib"] == max(mib for s in memory["samples"] for mib in s["rss_mib"])
    assert len(memory["idle_cpu_pct"]) == processes and all(pct >= 0 for pct in memory["idle_cpu_pct"])


def test_the_table_command_shows_the_three_sides(out, result):
    argv = [sys.executable, "-m", "bench", "table", str(out / "latest.json")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "| ledger | scenario | cogo | plain Celery | DBOS | cogo / Celery | cogo / DBOS |"
    p50 = next(line for line in lines if "step latency p50" in line).split("|")
    assert all(cell.strip() not in ("", "—") for cell in p50[3:8]), p50
    assert sum("throughput" in line and "DBOS queue polling" in line for line in lines) == len(DBOS_VARIANTS)
    assert any("DBOS worker RSS" in line for line in lines)
    wide_label = f"| sqlite | {result['config']['large_fanout_items']:,}-way fan-out + join wall"
    wide = next(line for line in lines if line.startswith(wide_label)).split("|")
    assert all(cell.strip() not in ("", "—", "not run") for cell in wide[3:8]), wide

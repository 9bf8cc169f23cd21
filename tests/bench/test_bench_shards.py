"""A smoke run of ``python -m bench shards`` (1 and 2 shards, a few runs, SQLite), so it cannot silently rot.

It asserts the shape of the result — one fresh fleet per shard count with a brain and a dispatcher per
shard, runs/s and CPU per run of each process kind — never what the numbers are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from numbers import Number
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
COUNTS = (1, 2)
RUNS = 10
KINDS = ("brain", "dispatcher", "workers", "api")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-shards")
    argv = [sys.executable, "-m", "bench", "shards", "--quick", "--ledger", "sqlite",
            "--shards", ",".join(map(str, COUNTS)), "--runs", str(RUNS), "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout) == json.loads((out / "shards.json").read_text()), \
        "the printed JSON is the written JSON"
    return out


@pytest.fixture(scope="module")
def result(out) -> dict:
    return json.loads((out / "shards.json").read_text())


def test_each_shard_count_ran_every_run_on_a_fleet_of_that_many_shards(result):
    assert result["ledger"] == "sqlite" and result["runs"] == RUNS and result["mode"] == "quick"
    assert [c["shards"] for c in result["counts"]] == list(COUNTS)
    for measured in result["counts"]:
        shards = measured["shards"]
        assert measured["runs"] == RUNS
        assert measured["processes"] == {"brain": shards, "dispatcher": shards,
                                         "workers": result["worker_processes"], "api": 1}
        assert len(measured["cpu_s_by_process"]) == sum(measured["processes"].values())
        assert isinstance(measured["per_s"], Number) and measured["per_s"] > 0


def test_cpu_per_run_is_given_for_every_process_kind(result):
    for measured in result["counts"]:
        for key in (*KINDS, "total"):
            assert isinstance(measured["cpu_ms_per_run"][key], Number) and measured["cpu_ms_per_run"][key] >= 0
        assert measured["cpu_s"]["total"] == pytest.approx(sum(measured["cpu_s"][k] for k in KINDS), abs=0.01)
        assert measured["window_s"] > 0 and measured["machine_cpu_s"] >= 0


def test_the_table_command_shows_one_row_per_shard_count(out):
    argv = [sys.executable, "-m", "bench", "table", str(out / "shards.json")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| sqlite |")]
    assert [int(row.split("|")[2]) for row in rows] == list(COUNTS)

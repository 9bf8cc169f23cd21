"""How a bench result is judged and printed, from made-up results: no process is started."""

from __future__ import annotations

import argparse

import pytest

from bench.__main__ import shard_counts
from bench.report import targets
from bench.shards import cpu_per_run
from bench.table import markdown


def wide(cogo: dict, wall_s: list) -> dict:
    """A ledger's results holding only a wide fan-out whose narrow run took ``wall_s[0]``."""
    ratio = None if None in wall_s else round(wall_s[1] / wall_s[0], 3)
    return {"large_fanout": {"cogo": cogo, "celery": {"wall_s": 10.0}, "ratio": {"wall": None},
                             "linearity": {"items": [1_000, 10_000], "wall_s": wall_s, "wall_ratio": ratio,
                                           "items_ratio": 10.0}}}


@pytest.mark.parametrize(("wall", "met"), [(170.0, True), (250.0, False)])
def test_the_wide_fanout_is_held_to_twelve_times_the_narrow_one(wall, met):
    ledgers = {"postgres": wide({"status": "ok", "items": 10_000, "wall_s": wall}, [17.0, wall])}
    row = next(t for t in targets(ledgers) if t["target"].startswith("10,000-way"))
    assert row["target"] == "10,000-way fan-out + join ≤ 12 × the 1,000-way one"
    assert row["limit"] == 12 and row["met"] is met


def test_a_timed_out_wide_fanout_says_how_far_it_got():
    cogo = {"status": "timeout", "items": 10_000, "items_done": 4_321, "elapsed_s": 600.2,
            "reason": "not finished after 600 s (4,321 of 10,000 items done); cancelled"}
    result = {"config": {"large_fanout_items": 10_000}, "ledgers": {"sqlite": wide(cogo, [17.0, None])}}
    result["targets"] = targets(result["ledgers"])
    row = next(t for t in result["targets"] if t["target"].startswith("10,000-way"))
    assert row["met"] is None and row["note"] == cogo["reason"]
    assert "timeout (4,321 of 10,000 items in 600 s)" in markdown(result)


def test_cpu_is_summed_per_kind_and_divided_by_the_runs():
    before = {"brain-0": 1.0, "brain-1": 2.0, "api": 0.5}
    after = {"brain-0": 1.5, "brain-1": 2.25, "api": 1.0}
    kinds = {"brain-0": "brain", "brain-1": "brain", "api": "api"}
    got = cpu_per_run(before, after, kinds, runs=250)
    assert got["processes"] == {"brain": 2, "api": 1}
    assert got["cpu_s"] == {"brain": 0.75, "api": 0.5, "total": 1.25}
    assert got["cpu_ms_per_run"] == {"brain": 3.0, "api": 2.0, "total": 5.0}


def test_shard_counts_are_a_comma_separated_list_of_positive_numbers():
    assert shard_counts("1,2,4") == (1, 2, 4)
    for bad in ("1,x", "0,2", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            shard_counts(bad)

"""Times a person reads: ISO 8601 beside epoch fields, relative times and durations."""

from __future__ import annotations

import copy

import pytest

from coordinator.timefmt import ago, duration, is_time_key, iso, with_iso

T = 1796167298.05  # 2026-12-02 …, the example from the issue


def test_iso_is_utc_with_milliseconds_and_z():
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert iso(T).startswith("2026-") and iso(T).endswith(".050Z")


@pytest.mark.parametrize("value", [None, True, "1700000000", float("nan"), float("inf"), -1.0, 1e12, [1]])
def test_iso_refuses_what_is_not_an_epoch_time(value):
    assert iso(value) is None


@pytest.mark.parametrize("key, expected", [
    ("created_at", True), ("due_at", True), ("at", True), ("since", True), ("until", True),
    ("lease_until", True), ("pending_since", True), ("created_at_iso", False), ("attempt", False),
    ("status", False), ("data", False), (3, False)])
def test_which_keys_are_times(key, expected):
    assert is_time_key(key) is expected


def test_with_iso_adds_iso_beside_every_time_in_a_tree_without_touching_the_input():
    tree = {"id": "r1", "created_at": T, "ended_at": None, "attempt": 2,
            "waiting_for": [{"since": T, "last_decision": {"at": T + 1, "data": {"fire_at": 5.0}},
                             "missing": [{"waiting_for": [{"retry_at": T + 2}]}]}],
            "output": {"created_at": 1.0}, "input": [{"due_at": 2.0}]}
    before = copy.deepcopy(tree)
    out = with_iso(tree)
    assert tree == before
    assert out["created_at"] == T and out["created_at_iso"] == iso(T)
    assert out["ended_at_iso"] is None  # one shape whether or not the run has ended
    assert "attempt_iso" not in out
    item = out["waiting_for"][0]
    assert item["since_iso"] == iso(T) and item["last_decision"]["at_iso"] == iso(T + 1)
    assert item["missing"][0]["waiting_for"][0]["retry_at_iso"] == iso(T + 2)
    # a workflow's or a user's own data is shown as given
    assert item["last_decision"]["data"] == {"fire_at": 5.0}
    assert out["output"] == {"created_at": 1.0} and out["input"] == [{"due_at": 2.0}]
    assert list(out)[:3] == ["id", "created_at", "created_at_iso"]  # beside its field


def test_with_iso_keeps_an_existing_iso_key_and_ignores_non_times():
    out = with_iso({"created_at": T, "created_at_iso": "given", "updated_at": "yesterday", "since": True})
    assert out == {"created_at": T, "created_at_iso": "given", "updated_at": "yesterday", "since": True}


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0 ms"), (0.85, "850 ms"), (12.44, "12.4 s"), (59.99, "59.9 s"), (60, "1 min"), (185, "3 min 5 s"),
    (3600, "1 h"), (7800, "2 h 10 min"), (86400, "1 d"), (270000, "3 d 3 h"), (None, "?"), (float("nan"), "?")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


@pytest.mark.parametrize("delta, text", [
    (0.4, "just now"), (-0.4, "just now"), (5, "5 s ago"), (125, "2 min ago"), (3700, "1 h 1 min ago"),
    (7200, "2 h ago"), (86400, "1 day ago"), (3 * 86400 + 5, "3 days ago"), (-300, "in 5 min"),
    (-90000, "in 1 day")])
def test_relative_times(delta, text):
    now = 1_800_000_000.0
    assert ago(now - delta, now=now) == text


def test_relative_time_of_nothing_is_a_dash():
    assert ago(None, now=1.0) == "-"

"""The position of a reader that follows ids which may commit out of order (``bus/cursor.py``), as a pure value: a
hole's age is judged by the reader's own clock (when it first read a row above the hole), never by the rows'
``created_at`` (a writer's clock)."""

from __future__ import annotations

from bus.cursor import MARK_GRAIN_S, Position

NOW = 1_000.0


def test_ids_read_without_a_hole_are_behind_the_reader_for_good():
    at = Position().after([1, 2, 3], now=NOW, settle_s=60)
    assert at == Position(3, frozenset())


def test_a_hole_keeps_the_ids_above_it_until_it_is_filled():
    at = Position(3).after([4, 6, 7], now=NOW, settle_s=60)
    assert (at.low_id, at.seen, at.marks) == (4, frozenset({6, 7}), ((7, NOW),))
    assert at.high_id == 7
    assert at.after([5], now=NOW + 1, settle_s=60) == Position(7, frozenset())  # 5 committed late


def test_a_hole_is_given_up_once_the_reader_read_above_it_the_settle_time_ago_by_its_own_clock():
    at = Position(4).after([6, 7], now=NOW, settle_s=60)  # the reader first sees the hole at 5 now
    assert at.after([], now=NOW + 59, settle_s=60) == at  # 5 may still commit
    assert at.after([], now=NOW + 60, settle_s=60) == Position(7, frozenset())  # 5 never will


def test_rows_that_look_old_do_not_make_a_hole_look_settled():
    """A writer whose clock runs 60 s behind writes ids 6 and 7 while id 5's transaction is still open: the rows'
    ``created_at`` is not even read, the reader's clock alone says how long it has known the hole."""
    at = Position(4).after([6, 7], now=NOW, settle_s=60)
    assert at.low_id == 4 and at.after([], now=NOW + 30, settle_s=60).low_id == 4
    assert at.after([5], now=NOW + 30, settle_s=60) == Position(7, frozenset())  # 5 commits: read, not lost


def test_a_hole_below_newer_reads_waits_for_the_read_above_it_not_for_the_newest():
    at = Position(4).after([6], now=NOW, settle_s=60)  # hole 5 first seen at NOW
    at = at.after([8], now=NOW + 30, settle_s=60)  # hole 7 first seen at NOW + 30
    at = at.after([], now=NOW + 60, settle_s=60)
    assert (at.low_id, at.seen) == (6, frozenset({8}))  # 5 given up, 7 not yet
    assert at.after([], now=NOW + 90, settle_s=60) == Position(8, frozenset())


def test_marks_of_the_same_grain_are_one_and_never_give_a_hole_up_early():
    at = Position(4)
    for i, dt in enumerate((0.0, 0.25, 0.5, 0.75)):  # four reads within one grain: one mark, the latest
        at = at.after([6 + i], now=NOW + dt, settle_s=60)
    assert at.marks == ((9, NOW + 0.75),)
    assert at.after([], now=NOW + 60.5, settle_s=60).low_id == 4  # 60 s after the first read, not after the last
    assert at.after([], now=NOW + 60.75, settle_s=60) == Position(9, frozenset())
    many = Position(4)
    for i in range(1000):  # a reader that reads every 0.1 s keeps one mark per grain of the settle time
        many = many.after([6 + i], now=NOW + i * 0.1, settle_s=60)
    assert len(many.marks) <= 60 / MARK_GRAIN_S + 1


def test_the_ids_kept_above_a_hole_are_capped():
    ids = list(range(10, 30))  # 20 ids above a hole at 9 (the reader is at 8)
    at = Position(8).after(ids, now=NOW, settle_s=60, cap=5)
    assert at == Position(29, frozenset())  # the oldest holes given up, and then nothing above is a hole
    ids = [i for i in range(10, 30) if i != 27]  # a young hole at 27 is within the newest five: kept
    at = Position(8).after(ids, now=NOW, settle_s=60, cap=5)
    assert (at.low_id, at.seen) == (26, frozenset({28, 29}))


def test_a_floor_gives_up_everything_below_it():
    at = Position().after([50, 52], now=NOW, settle_s=60, floor=49)
    assert (at.low_id, at.seen) == (50, frozenset({52}))


def test_a_position_is_stored_and_read_back_whole():
    at = Position(4).after([6, 9], now=NOW, settle_s=60)
    columns = at.columns()
    assert columns == {"low_id": 4, "seen": [6, 9], "marks": [[9, NOW]]}
    assert Position.stored(columns["low_id"], columns["seen"], columns["marks"]) == at
    assert Position.stored(7, [], None) == Position(7)  # a cursor stored before marks existed

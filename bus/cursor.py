"""Reading an append-only table in id order, exactly once, when ids may commit out of order.

On PostgreSQL a row takes its id from a sequence when it is inserted but becomes visible when its transaction
commits: id 11 may commit after id 12 was read. A reader that kept only "the highest id read" would skip 11 for
ever. A ``Position`` keeps every id up to ``low_id`` (read, or given up as never to commit) and the ids read above
it (``seen``); ``read`` takes the rows above the highest id read, plus those between ``low_id`` and it that were
not read yet (late commits). Used by the circuit sweep (``bus/circuits.py``) and the metrics fold
(``coordinator/metrics/fold.py``); the caller stores the position it is given in the same transaction as what it
did with the rows, so a crash reads nothing twice and skips nothing.

``low_id`` rises:

- over every id read with no hole below it: ``seen`` holds only the ids above the oldest hole, which on a reader
  of every row of the table is the oldest transaction still open (a few ids);
- to the highest id the reader had read ``settle_s`` or more ago **by its own clock** (``marks``): a hole below it
  is taken for an id that will never commit. That id was taken before the row read above it was inserted, so its
  transaction was open when the reader read that row; our transactions commit within seconds (PostgreSQL ends one
  idle for 10 s: ``bus/db.py``), and a sequence value whose transaction rolled back is never used again. The
  rows' own ``created_at`` is not trusted for this: it is the writer's clock, taken before the insert, and a
  writer whose clock runs behind would make a hole look settled while its transaction is still open;
- past the oldest holes when more than ``cap`` ids were read above it, so ``seen`` stays bounded whatever the
  write rate: a hole younger than ``settle_s`` is then given up too (only under a burst of more than ``cap`` rows
  committed above a transaction that is still open).

``marks`` are ``(high_id, read_at)`` pairs: the highest id read, and when (the reader's clock). Marks taken within
one ``MARK_GRAIN_S`` of each other are merged into the later one (a hole is then given up at most that much
later), so a reader keeps at most ``settle_s / MARK_GRAIN_S + 1`` marks however often it reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Select

CAP = 10_000
"""The most ids a position keeps above its ``low_id``."""
MARK_GRAIN_S = 1.0
"""Marks taken in the same second of the reader's clock are one mark."""

Mark = tuple[int, float]
"""``(high_id, read_at)``: the reader had read up to ``high_id`` at ``read_at`` (its own clock)."""


@dataclass(frozen=True)
class Position:
    """Where a reader is: every id up to ``low_id`` is behind it, and so are the ids in ``seen`` (all above it);
    ``marks`` say when the reader first read up to which id (what judges a hole's age)."""

    low_id: int = 0
    seen: frozenset[int] = frozenset()
    marks: tuple[Mark, ...] = ()

    @property
    def high_id(self) -> int:
        """The highest id read."""
        return max(self.seen, default=self.low_id)

    def after(self, read: Iterable[int], *, now: float, settle_s: float, cap: int = CAP,
              floor: int | None = None) -> Position:
        """The position once the ids ``read`` (the new ones and those re-read between ``low_id`` and ``high_id``)
        are applied at ``now`` (the reader's clock); ``floor``: an id below which everything is given up."""
        applied = set(self.seen) | set(read)
        marks = _marked(self.marks, max(applied, default=self.low_id), now)
        low = max([self.low_id, *([floor] if floor is not None else []),
                   *(high for high, at in marks if at <= now - settle_s)])
        above = sorted(i for i in applied if i > low)
        if len(above) > cap:  # give up the oldest holes: seen stays bounded
            low, above = above[len(above) - cap - 1], above[len(above) - cap:]
        for i in above:  # no hole below i: it is behind the reader for good
            if i != low + 1:
                break
            low = i
        return Position(low, frozenset(i for i in above if i > low), tuple((h, at) for h, at in marks if h > low))

    @classmethod
    def stored(cls, low_id: int, seen: Sequence[int] | None, marks: Sequence[Sequence[Any]] | None) -> Position:
        """A position from its stored columns (``low_id``, ``seen``, ``marks``: JSON lists)."""
        return cls(int(low_id), frozenset(int(i) for i in seen or ()),
                   tuple((int(h), float(at)) for h, at in marks or ()))

    def columns(self) -> dict[str, Any]:
        """The columns a reader stores its position in (``stored`` reads them back)."""
        return {"low_id": self.low_id, "seen": sorted(self.seen), "marks": [list(m) for m in self.marks]}


def _marked(marks: tuple[Mark, ...], high: int, now: float) -> list[Mark]:
    """``marks`` with ``(high, now)`` added when ``high`` is new, merged into the last mark when both fall in the
    same ``MARK_GRAIN_S`` (the later time kept: a hole is never given up early)."""
    found = list(marks)
    if high <= max((h for h, _ in found), default=-1):
        return found
    if found and math.floor(found[-1][1] / MARK_GRAIN_S) == math.floor(now / MARK_GRAIN_S):
        found[-1] = (high, max(now, found[-1][1]))
    else:
        found.append((high, now))
    return found


@dataclass(frozen=True)
class Read:
    """What one ``read`` found: the rows not read before (in id order) and the position once they are applied."""

    before: Position | None
    rows: list[Any]
    position: Position

    @property
    def moved(self) -> bool:
        """Whether there is anything to apply or store."""
        return bool(self.rows) or self.position != (self.before or Position())


def read(conn: Connection, at: Position | None, *, rows: Select, ids: Select, id_column: Column,
         created_column: Column, now: float, settle_s: float, limit: int, cap: int = CAP,
         first_look_s: float | None = None) -> Read:
    """The rows of ``rows`` not read from ``at`` (None: never read), at most ``limit`` new ones, and the position
    after them.

    Args:
        rows: the full rows (with ``id`` among their columns), filtered as the reader needs.
        ids: the ``id`` of the same rows: what is re-read between ``low_id`` and ``high_id``.
        now: the reader's clock (what judges a hole's age; never the rows' ``created_at``).
        first_look_s: when ``at`` is None, read only the rows written this long ago or less (by
            ``created_column``), and give up those below them (the first read of a reader that does not need the
            whole history).
    """
    start = at or Position()
    high = start.high_id
    known: Sequence[Any] = [] if at is None or high == start.low_id else conn.execute(
        ids.where(id_column > start.low_id, id_column <= high)).all()
    late = [r.id for r in known if r.id not in start.seen]
    fresh = rows.where(id_column > high)
    if at is None and first_look_s is not None:
        fresh = fresh.where(created_column >= now - first_look_s)
    got = list(conn.execute(fresh.order_by(id_column).limit(limit)))
    if late:
        got += list(conn.execute(rows.where(id_column.in_(late))))
    got.sort(key=lambda r: r.id)
    floor = got[0].id - 1 if at is None and first_look_s is not None and got else None
    read_ids = [r.id for r in (*known, *got)]
    return Read(at, got, start.after(read_ids, now=now, settle_s=settle_s, cap=cap, floor=floor))

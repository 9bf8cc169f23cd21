"""The ``circuits`` admission policy: no new work for a (service, role, model) whose circuit is open.

The circuits themselves live in the ledger (``bus/circuits.py``): the reclaimer's sweep opens and closes them
from the attempts' outcomes. This policy reads them, at most once per ``REFRESH_S`` of the dispatcher's clock per
process (while every circuit is closed that is its only statement), and answers:

- closed (or never seen): admit;
- open, cool-down not over: defer until ``retry_at``, saying so in plain words;
- open and due: try to become *the* probe (one conditional UPDATE, ``bus.circuits.claim_probe``); the winner is
  admitted and the circuit is half-open, every other assignment waits for the probe's outcome;
- half_open: defer everything but the probe until its outcome closes or re-opens the circuit.

It ``takes`` (the probe), so it is asked only while every policy before it admitted; list it after the policies
that may defer and before those that take something of their own (``rate``).
"""

from __future__ import annotations

from bus import circuits
from bus.circuits import HALF_OPEN, OPEN, Circuit, Key
from coordinator.admission import ADMIT, Ask, Setup, Verdict, defer
from coordinator.timefmt import clock

REFRESH_S = 0.5
"""How stale this process's view of the circuits may be."""


class CircuitsPolicy:
    """Defer work whose (service, role, model) circuit is open or half-open; let one probe through."""

    name = "circuits"
    takes = True

    def __init__(self, setup: Setup):
        self._unclosed: dict[Key, Circuit] = {}
        self._read_at: float | None = None

    def check(self, ask: Ask) -> Verdict:
        """Admit unless the assignment's circuit is open (defer until its probe is due) or half-open (defer until
        the probe's outcome); admit the one assignment that becomes the probe."""
        key = (ask.row.service, ask.row.role, ask.assignment.model)
        circuit = self._view(ask).get(key)
        if circuit is None:
            return ADMIT
        if circuit.state == OPEN and circuit.retry_at is not None and ask.now >= circuit.retry_at:
            probing = circuits.claim_probe(ask.conn, circuit, ask.row.id, now=ask.now, tenant=ask.row.tenant,
                                           run_id=ask.row.run_id)
            if probing is not None:  # this one is the probe (its UPDATE holds the row): admitted
                self._remember(probing)
                return ADMIT
            circuit = circuits.read_one(ask.conn, key) or circuit
            self._remember(circuit)
        if circuit.state == HALF_OPEN and circuit.probe_id == ask.row.id:
            # Still its probe? (The sweep hands back a probe held up too long; the row, locked now, says.)
            circuit = circuits.read_one(ask.conn, key, lock=True) or circuit
            self._remember(circuit)
            if circuit.state == HALF_OPEN and circuit.probe_id == ask.row.id:
                return ADMIT
        if circuit.state in (OPEN, HALF_OPEN):
            return _waiting(circuit)
        return ADMIT

    def _view(self, ask: Ask) -> dict[Key, Circuit]:
        """The circuits that are not closed, read again when the last read is ``REFRESH_S`` old."""
        if self._read_at is None or not self._read_at <= ask.now < self._read_at + REFRESH_S:
            self._unclosed = {c.key: c for c in circuits.read_all(ask.conn, only_unclosed=True)}
            self._read_at = ask.now
        return self._unclosed

    def _remember(self, circuit: Circuit) -> None:
        if circuit.state in (OPEN, HALF_OPEN):
            self._unclosed[circuit.key] = circuit
        else:
            self._unclosed.pop(circuit.key, None)


def _waiting(c: Circuit) -> Verdict:
    """The deferral, in plain words."""
    detail = {"service": c.service, "role": c.role, "model": c.model, "state": c.state, "retry_at": c.retry_at,
              "probe_id": c.probe_id}
    if c.state == HALF_OPEN:
        return defer("circuit.half_open", f"the circuit of {c.name} is half-open: its probe {c.probe_id} runs, and "
                     "other work waits for its outcome", **detail)
    return defer("circuit.open", f"the circuit of {c.name} is open after {c.reason}; next probe at "
                 f"{clock(c.retry_at)}", until=c.retry_at, **detail)


"""Every metric family cogo exports: its name (with its unit), type, help, labels and, for a histogram, its buckets;
and the canonical text of a label set, as ``metric_totals.labels`` stores it.

Counters and histograms are folded from the audit log (``fold.py``) into ``metric_totals``, one row per sample:
a counter's ``<name>_total``; a histogram's ``<name>_bucket`` per ``le`` (cumulative: an observation adds one to
every bucket it fits), ``<name>_sum`` and ``<name>_count``. Gauges are read when scraped (``scrape.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

LABEL_CHARS = 128
"""A label value is cut to this many characters (they come from definitions, keys and error codes)."""

# Bucket bounds are stored: ``metric_totals`` keeps a histogram's buckets as rows labelled by their ``le`` text
# (``le_text``). Changing a bound needs a migration that rewrites (or drops) the stored rows of its families, or the
# old rows keep being exported next to the new ones (``tests/unit/test_metric_families.py`` pins them).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds: queue waits and step latencies (seed 003's target: an average wait under 5 s)."""
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds: an attempt's run time, from a no-op handler to an hour-long build."""


@dataclass(frozen=True)
class Family:
    """One metric family. ``name`` is the family's (a counter's samples add ``_total``)."""

    name: str
    type: Literal["counter", "histogram", "gauge"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def sample(self) -> str:
        """A counter's sample name (``<name>_total``)."""
        return f"{self.name}_total"


QUEUE_WAIT = Family("cogo_queue_wait_seconds", "histogram",
                    "Time an attempt waited in its worker queue, from its admission (dispatched) to a worker taking it",
                    ("route",), WAIT_BUCKETS)
ASSIGNMENT_DURATION = Family("cogo_assignment_duration_seconds", "histogram",
                             "Run time of an attempt, from a worker taking it to its outcome (done, retry, failed)",
                             ("route",), RUN_BUCKETS)
STEP_LATENCY = Family("cogo_step_latency_seconds", "histogram",
                      "Time from a brain event being due to the brain applying it, by event kind",
                      ("event",), WAIT_BUCKETS)
INGRESS_LATENCY = Family("cogo_ingress_latency_seconds", "histogram",
                         "Time from the API recording an intent to the brain applying its first step", (), WAIT_BUCKETS)
ASSIGNMENTS = Family("cogo_assignments", "counter",
                     "Assignments that ended, by route and outcome (done, failed: failed for good or denied at "
                     "admission, dead: lost with no attempt left, or a dead letter discarded; a dead letter held "
                     "has not ended)", ("route", "outcome"))
FIRST_ATTEMPT_DONE = Family("cogo_assignments_first_attempt_done", "counter",
                            "Assignments that ended done on their first attempt (decision quality's numerator)",
                            ("route",))
RETRIES = Family("cogo_retries", "counter", "Attempts that ended and were followed by another attempt", ("route",))
DEAD_LETTERS = Family("cogo_dead_letters", "counter", "Assignments held as dead letters for an operator", ("route",))
BUDGET_VIOLATIONS = Family("cogo_budget_violations", "counter",
                           "Budget violations: an attempt that broke its budget, or an admission over a budget",
                           ("tenant",))
ADMISSION_DENIALS = Family("cogo_admission_denials", "counter", "Assignments denied at admission, by code",
                           ("code",))
COST = Family("cogo_cost_usd", "counter", "Spend settled on assignments, in US dollars", ("tenant", "model"))
TOKENS = Family("cogo_tokens", "counter", "Tokens settled on assignments", ("tenant", "model"))
BUS_EVENTS = Family("cogo_bus_events", "counter", "Audit rows written to bus_events, by kind", ("kind",))

FOLDED: tuple[Family, ...] = (QUEUE_WAIT, ASSIGNMENT_DURATION, STEP_LATENCY, INGRESS_LATENCY, ASSIGNMENTS,
                              FIRST_ATTEMPT_DONE, RETRIES, DEAD_LETTERS, BUDGET_VIOLATIONS, ADMISSION_DENIALS, COST,
                              TOKENS, BUS_EVENTS)
"""The families folded from the audit log into ``metric_totals``."""

PROCESS_RESTARTS = Family("cogo_process_restarts", "counter", "Restarts by the supervisor, per process copy",
                          ("process", "copy"))
PROCESS_CRASH_LOOPING = Family("cogo_process_crash_looping", "gauge",
                               "1 when the supervisor gave up on a crash-looping process (it stays stopped)",
                               ("process", "copy"))
QUEUE_DEPTH = Family("cogo_queue_depth", "gauge", "Messages ready in the route's queues (every shard), as the "
                     "broker says", ("route",))
QUEUE_OLDEST_AGE = Family("cogo_queue_oldest_age_seconds", "gauge",
                          "Age of the oldest row of the route that is due and that nobody took (0: none)", ("route",))
CIRCUIT_STATE = Family("cogo_circuit_state", "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                       ("service", "role", "model"))
AGENTS_LIVE = Family("cogo_agents_live", "gauge", "Live agents (worker processes heartbeating) serving the route",
                     ("route",))
RUNS_ACTIVE = Family("cogo_runs_active", "gauge", "Runs not ended, by workflow and status", ("workflow", "status"))
BROKER_UP = Family("cogo_broker_up", "gauge",
                   "1 when the broker told every queue depth of this scrape within its deadline, 0 when it did not "
                   "(cogo_queue_depth then lacks the routes it could not tell)")
FOLD_SUCCESS = Family("cogo_metrics_fold_last_success_timestamp_seconds", "gauge",
                      "When this metrics server last folded the audit log into the counters (epoch seconds)")
RETENTION_FOLD_WAIT = Family("cogo_retention_fold_wait_seconds", "gauge",
                             "How long retention has waited for the metrics fold to read the audit rows of the runs "
                             "it would prune, pruning nothing meanwhile (0: it does not wait)")

READ_AT_SCRAPE: tuple[Family, ...] = (PROCESS_RESTARTS, PROCESS_CRASH_LOOPING, QUEUE_DEPTH, BROKER_UP,
                                      QUEUE_OLDEST_AGE, CIRCUIT_STATE, AGENTS_LIVE, RUNS_ACTIVE, FOLD_SUCCESS,
                                      RETENTION_FOLD_WAIT)
"""The families read when scraped (cheap reads: open rows, small tables, the broker, a file)."""

CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


DECISION_QUALITY_TEXT = ("Decision quality: of the assignments that ended (done, failed for good, denied or "
                         "dead-lettered and discarded), the share that ended done on their first attempt — no retry, "
                         "no lost lease, no budget violation.")
"""``decision_quality`` in words: the dashboard shows it beside the number (the summary card carries it)."""
FAILURE_RATE_MAX = 0.05
"""Seed 003: the bus failure rate stays under 5 % over 24 h (the alert rules and the targets card)."""
WAIT_AVG_MAX_S = 5.0
"""Seed 003: the average queue wait stays under 5 s."""
DECISION_QUALITY_MIN = 0.85
"""Seed 003: decision quality stays at 85 % or more (``decision_quality``)."""


def decision_quality(first_attempt_done: float, ended: float) -> float | None:
    """Decision quality (seed 003's target: at least 0.85): of the assignments that ended — done, failed for good
    (or denied at admission), dead — the share that ended done on their first attempt. Such an assignment had no
    retry, no lost lease and no budget violation (a violation fails an assignment for good). None when none
    ended."""
    return first_attempt_done / ended if ended else None


def bounded(value: object) -> str:
    """A label value: text, at most ``LABEL_CHARS`` characters."""
    return str(value)[:LABEL_CHARS]


def label_text(labels: Mapping[str, object]) -> str:
    """The canonical text of a label set: sorted ``k="v"`` pairs, values escaped as Prometheus escapes them."""
    return ",".join(f'{k}="{_escape(bounded(v))}"' for k, v in sorted(labels.items()))


_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_labels(text: str) -> dict[str, str]:
    """The label set ``label_text`` wrote."""
    return {k: re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), v) for k, v in _PAIR.findall(text)}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def le_text(bound: float) -> str:
    """A bucket's ``le`` as Prometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))

"""The metric families' stored shape: histogram buckets are rows of ``metric_totals`` labelled by their ``le``
text, so their bounds (and how a bound is written) are pinned here — changing one needs a migration of the stored
rows (``docs/metrics.md``); and a label set's canonical text reads back as written."""

from __future__ import annotations

from coordinator.metrics import families as f
from coordinator.metrics.families import label_text, le_text, parse_labels


def test_bucket_bounds_are_pinned_because_metric_totals_stores_them():
    waits = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0",
             "300.0"]
    runs = ["0.01", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "300.0", "900.0",
            "3600.0"]
    assert [le_text(b) for b in f.WAIT_BUCKETS] == waits
    assert [le_text(b) for b in f.RUN_BUCKETS] == runs
    assert le_text(float("inf")) == "+Inf"
    buckets = {family.name: family.buckets for family in f.FOLDED if family.type == "histogram"}
    assert buckets == {"cogo_queue_wait_seconds": f.WAIT_BUCKETS, "cogo_assignment_duration_seconds": f.RUN_BUCKETS,
                       "cogo_step_latency_seconds": f.WAIT_BUCKETS, "cogo_ingress_latency_seconds": f.WAIT_BUCKETS}


def test_a_label_set_reads_back_as_written():
    labels = {"route": 't."odd"\\route\n', "le": "0.5", "tenant": "x" * 500}
    text = label_text(labels)
    assert text.startswith('le="0.5",route=')  # sorted
    assert parse_labels(text) == {**labels, "tenant": "x" * f.LABEL_CHARS}

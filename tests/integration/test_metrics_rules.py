"""Prometheus and Grafana as generated next to the compose file: the committed files are what the generator
writes, every query names a family the metrics server exports, ``promtool`` accepts the rules and the
configuration, the alerts of seed 003's targets fire on series that break them and stay quiet on series that
keep them, and so do the alerts on the metrics pipeline itself — the metrics server down, the fold stalled,
retention blocked, the broker unreachable (``promtool test rules``); Grafana has no anonymous access."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from coordinator.metrics import families
from ecosystem import observability
from tests.support.prometheus import run_promtool

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_files_are_what_the_generator_writes():
    for path, text in observability.rendered().items():
        assert (ROOT / path).read_text() == text, f"run `cogo manifests`: {path} is stale"


def exported() -> set[str]:
    """Every sample name the metrics server may export."""
    names = set()
    for family in (*families.FOLDED, *families.READ_AT_SCRAPE):
        if family.type == "counter":
            names.add(family.sample)
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def test_every_query_names_a_family_the_server_exports():
    board = observability.dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]] + [a.expr for a in observability.ALERTS]
    named = {name for e in exprs for name in re.findall(r"\bcogo_[a-z_]+\b", e)}
    assert named and named <= exported(), named - exported()
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for card in ("queue wait", "step latency", "by outcome", "decision quality", "failure rate", "cost by tenant",
                 "queue depth", "circuits"):
        assert card in titles, card
    assert all(t["datasource"]["uid"] == observability.DATASOURCE_UID for p in board["panels"] for t in p["targets"])
    assert json.loads((ROOT / "ecosystem/grafana/cogo.json").read_text())["uid"] == "cogo"


def test_promtool_accepts_the_rules_and_the_configuration(tmp_path):
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(ROOT / "ecosystem/prometheus" / name, tmp_path / name)
    run_promtool("check", "rules", "alerts.yml", cwd=tmp_path)
    key = tmp_path / "metrics.key"
    key.write_text("a-key\n")
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    authorization = config["scrape_configs"][0]["authorization"]
    assert authorization["credentials_file"] == f"/run/secrets/{observability.KEY_SECRET}"
    authorization["credentials_file"] = str(key)  # the secret, where compose mounts it
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)


SERVER = {"job": "cogo", "instance": "cogo-metrics-server:9108"}
LOOPING = {"process": "cogo-rag-embed", "copy": "cogo-rag-embed-2"}
CIRCUIT = {"service": "t", "role": "work", "model": "gpt-x"}


def series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _alert(name: str, eval_time: str, shown: str | None, labels: dict[str, str] | None = None) -> dict:
    """An alert expected to fire at ``eval_time`` with its value rendered as ``shown`` in its description (None:
    expected quiet), and the series' ``labels`` it keeps (and its description names)."""
    alert = next(a for a in observability.ALERTS if a.name == name)
    if shown is None:
        return {"eval_time": eval_time, "alertname": name, "exp_alerts": []}
    description = re.sub(r"\{\{ \$value \| \w+ \}\}", shown, alert.description)
    description = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda found: (labels or {})[found.group(1)], description)
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": [{
        "exp_labels": {"severity": alert.severity, **(labels or {})},
        "exp_annotations": {"summary": alert.summary, "description": description}}]}


def test_the_seed_targets_alerts_fire_when_broken_and_stay_quiet_when_kept(tmp_path):
    shutil.copy(ROOT / "ecosystem/prometheus/alerts.yml", tmp_path / "alerts.yml")
    broken = {"interval": "1m", "input_series": [
        # 21 assignments end a minute: 2 fail (9.5 %), 15 of them done at their first attempt (71 %).
        {"series": 'cogo_assignments_total{route="t.work",outcome="done"}', "values": "0+19x1600"},
        {"series": 'cogo_assignments_total{route="t.work",outcome="failed"}', "values": "0+2x1600"},
        {"series": 'cogo_assignments_first_attempt_done_total{route="t.work"}', "values": "0+15x1600"},
        # 60 attempts a minute waiting 6 s each.
        {"series": 'cogo_queue_wait_seconds_sum{route="t.work"}', "values": "0+360x1600"},
        {"series": 'cogo_queue_wait_seconds_count{route="t.work"}', "values": "0+60x1600"},
        {"series": "cogo_metrics_fold_last_success_timestamp_seconds", "values": "0+0x1600"},  # stopped at 0
        # The metrics server stops answering after 20 minutes; retention waits for the fold from the start; the
        # broker does not answer.
        {"series": series("up", SERVER), "values": "1x20 0x1580"},
        {"series": "cogo_retention_fold_wait_seconds", "values": "0+60x1600"},
        {"series": "cogo_broker_up", "values": "0x1600"},
        {"series": series("cogo_process_crash_looping", LOOPING), "values": "1x1600"},
        {"series": series("cogo_circuit_state", CIRCUIT), "values": "2x1600"},
    ], "alert_rule_test": [_alert("CogoBusFailureRateHigh", "25h", "9.524%"),
                           _alert("CogoDecisionQualityLow", "25h", "71.43%"),
                           _alert("CogoQueueWaitHigh", "30m", "6s"),
                           _alert("CogoMetricsFoldStalled", "10m", ""),
                           _alert("CogoMetricsDown", "20m", None),
                           _alert("CogoMetricsDown", "30m", "", SERVER),
                           _alert("CogoRetentionBlocked", "70m", None),  # over an hour at 60m, for 15m
                           _alert("CogoRetentionBlocked", "90m", "1h 30m 0s"),
                           _alert("CogoBrokerUnreachable", "10m", ""),
                           _alert("CogoProcessCrashLooping", "10m", "", LOOPING),
                           _alert("CogoCircuitOpen", "5m", None), _alert("CogoCircuitOpen", "15m", "", CIRCUIT)]}
    kept = {"interval": "1m", "input_series": [
        # 100 a minute: 1 fails (1 %), 90 done at their first attempt (90 %); waits of 0.5 s; the fold keeps up.
        {"series": 'cogo_assignments_total{route="t.work",outcome="done"}', "values": "0+99x1600"},
        {"series": 'cogo_assignments_total{route="t.work",outcome="failed"}', "values": "0+1x1600"},
        {"series": 'cogo_assignments_first_attempt_done_total{route="t.work"}', "values": "0+90x1600"},
        {"series": 'cogo_queue_wait_seconds_sum{route="t.work"}', "values": "0+50x1600"},
        {"series": 'cogo_queue_wait_seconds_count{route="t.work"}', "values": "0+100x1600"},
        {"series": "cogo_metrics_fold_last_success_timestamp_seconds", "values": "0+60x1600"},
        {"series": series("up", SERVER), "values": "1x1600"},
        {"series": "cogo_retention_fold_wait_seconds", "values": "0x1600"},
        {"series": "cogo_broker_up", "values": "1x1600"},
        {"series": series("cogo_process_crash_looping", LOOPING), "values": "0x1600"},
        {"series": series("cogo_circuit_state", CIRCUIT), "values": "1x1600"},  # half-open: a probe is out
    ], "alert_rule_test": [_alert(name, "25h", None) for name in
                           ("CogoBusFailureRateHigh", "CogoDecisionQualityLow", "CogoQueueWaitHigh",
                            "CogoMetricsFoldStalled", "CogoMetricsDown", "CogoRetentionBlocked",
                            "CogoBrokerUnreachable", "CogoProcessCrashLooping", "CogoCircuitOpen")]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
                                                        "tests": [broken, kept]}))
    run_promtool("test", "rules", "tests.yml", cwd=tmp_path)  # a failure names the alert that did (not) fire, when


def test_every_alert_is_tested_firing_and_quiet():
    """The rules test above covers every generated alert (a new alert without a test fails here)."""
    source = Path(__file__).read_text()
    for alert in observability.ALERTS:
        assert source.count(f'"{alert.name}"') >= 2, alert.name


def test_grafana_has_no_anonymous_access():
    grafana = observability.compose_services()["grafana"]
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_AUTH_ANONYMOUS_ORG_ROLE" not in environment
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"/run/secrets/{observability.GRAFANA_SECRET}"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"

"""What a bench result carries besides the numbers: versions, the machine, the targets of issue 4, a chart."""

from __future__ import annotations

import os
import platform
import sqlite3
from importlib import metadata
from pathlib import Path
from typing import Any

TARGETS = (
    ("step_latency", "p50", "step latency p50 ≤ 2 × plain Celery's", 2.0, "max"),
    ("step_latency", "p99", "step latency p99 ≤ 3 × plain Celery's", 3.0, "max"),
    ("throughput", "per_s", "throughput ≥ 0.5 × plain Celery's no-op tasks/s", 0.5, "min"),
    ("fanout", "wall", "1,000-way fan-out + join no slower than a Celery chord of 1,000", 1.0, "max"),
)
GROWTH_LIMIT = 1.2
# Issue 11: the 10,000-way fan-out within 12 × the 1,000-way one, i.e. 1.2 × the ratio of their widths.
LINEAR_SLACK = 1.2
RSS_FLAT_PCT = 5.0


def versions(broker_url: str, postgres_url: str | None) -> dict[str, str]:
    """Versions of everything measured."""
    import celery
    import kombu
    import redis
    import sqlalchemy

    out = {"python": platform.python_version(), "celery": celery.__version__, "kombu": kombu.__version__,
           "redis_py": redis.__version__, "sqlalchemy": sqlalchemy.__version__, "sqlite": sqlite3.sqlite_version,
           "dbos": metadata.version("dbos")}
    client = redis.Redis.from_url(broker_url)
    out["redis_server"] = client.info("server")["redis_version"]
    client.close()
    if postgres_url:
        out["postgres"] = _postgres_version(postgres_url)
    return out


def _postgres_version(url: str) -> str:
    from sqlalchemy import text

    from bus.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SHOW server_version")).scalar_one()
    except Exception as exc:  # the bench still reports what it can when PostgreSQL is away
        return f"unavailable: {exc.__class__.__name__}"
    finally:
        engine.dispose()


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model and OS of this machine."""
    import psutil

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": model, "platform": platform.platform()}


def targets(ledgers: dict[str, dict]) -> list[dict[str, Any]]:
    """Each target of issue 4 on each ledger: the measured value, the limit, and whether it was met."""
    out = []
    for kind, results in ledgers.items():
        for scenario, key, name, limit, sense in TARGETS:
            value = results.get(scenario, {}).get("ratio", {}).get(key)
            met = None if value is None else (value <= limit if sense == "max" else value >= limit)
            row = {"ledger": kind, "target": name, "value": value, "limit": limit, "met": met}
            if value is None:
                row["note"] = _why_missing(results.get(scenario, {}))
            out.append(row)
        out.extend(_growth_targets(kind, results.get("growth", {}).get("cogo", {})))
        out.extend(_linearity_target(kind, results.get("large_fanout", {})))
    return out


def _why_missing(result: dict) -> str:
    cogo = result.get("cogo", {})
    return cogo.get("reason") or result.get("celery", {}).get("reason") or "not measured"


def _linearity_target(kind: str, large: dict) -> list[dict[str, Any]]:
    """cogo's wide fan-out against its narrow one (none for a result from before cogo ran the wide one)."""
    measured = large.get("linearity")
    if not measured:
        return []
    narrow, wide = measured["items"]
    limit = round(LINEAR_SLACK * measured["items_ratio"], 3)
    value = measured["wall_ratio"]
    row = {"ledger": kind, "target": f"{wide:,}-way fan-out + join ≤ {limit:g} × the {narrow:,}-way one",
           "value": value, "limit": limit, "met": None if value is None else value <= limit}
    if value is None:
        row["note"] = _why_missing(large)
    return [row]


def _growth_targets(kind: str, growth: dict) -> list[dict[str, Any]]:
    ratio = growth.get("per_event_ratio")
    compared = growth.get("compared") or [None, None]
    rows = [{"ledger": kind, "target": f"per-event cost at {compared[1]} events of history ≤ 1.2 × at {compared[0]}",
             "value": ratio, "limit": GROWTH_LIMIT, "met": None if ratio is None else ratio <= GROWTH_LIMIT}]
    for key, label in (("brain_mib", "brain"), ("dispatcher_mib", "dispatcher")):
        pct = growth.get("rss_growth", {}).get(key)
        rows.append({"ledger": kind, "target": f"{label} RSS flat over the throughput runs "
                                               f"(≤ {RSS_FLAT_PCT:.0f}% growth after warm-up)",
                     "value": pct, "limit": RSS_FLAT_PCT, "met": None if pct is None else pct <= RSS_FLAT_PCT})
    return rows

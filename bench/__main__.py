"""``python -m bench run|events|handlers|profile|shards|ephemeral|fairness|table …`` (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench import chart, fleet, report, runner

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description="cogo vs plain Celery vs DBOS")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every scenario and write <out>/latest.json and latest.png")
    run.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of a few seconds per ledger")
    run.add_argument("--ledger", choices=["sqlite", "postgres", "both"], default="both")
    run.add_argument("--out", type=Path, default=RESULTS)
    run.add_argument("--workers", type=int, default=2, help="worker processes on each side (default 2)")
    costs = sub.add_parser("handlers", help="each handler's cost and SQL statements per call, in one process")
    costs.add_argument("--ledger", choices=["sqlite", "postgres", "both"], default="both")
    costs.add_argument("--runs", type=int, default=200)
    prof = sub.add_parser("profile", help="the throughput scenario with every cogo process under pyinstrument")
    prof.add_argument("--ledger", choices=["sqlite", "postgres"], default="sqlite")
    prof.add_argument("--runs", type=int, default=1000)
    prof.add_argument("--workers", type=int, default=2)
    prof.add_argument("--out", type=Path, default=RESULTS)
    events = sub.add_parser("events", help="step latency and throughput with task events on and off, interleaved")
    events.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    events.add_argument("--ledger", choices=["sqlite", "postgres"], default="sqlite")
    events.add_argument("--workers", type=int, default=2)
    events.add_argument("--throughput-runs", type=int, default=None,
                        help="runs per side in the throughput scenario (default: as in `run`)")
    events.add_argument("--out", type=Path, default=RESULTS)
    shards = sub.add_parser("shards", help="throughput and CPU per run of each process kind at 1, 2, 4 shards")
    shards.add_argument("--ledger", choices=["sqlite", "postgres"], default="postgres")
    shards.add_argument("--shards", type=shard_counts, default=(1, 2, 4), help="shard counts (default 1,2,4)")
    shards.add_argument("--runs", type=int, default=None,
                        help="measured runs per shard count (default: as in `run`, or the quick size with --quick)")
    shards.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    shards.add_argument("--workers", type=int, default=2)
    shards.add_argument("--out", type=Path, default=None,
                        help="write <out>/shards.json (default bench/results; a --quick run writes only with --out)")
    eph = sub.add_parser("ephemeral", help="per-assignment overhead of an ephemeral worker vs a long-running one")
    eph.add_argument("--runs", type=int, default=50, help="sequential one-task runs per mode (default 50)")
    eph.add_argument("--ledger", choices=["sqlite", "postgres"], default="sqlite")
    fair = sub.add_parser("fairness", help="a flooding tenant and a small one: the small one's latency, the throughput")
    fair.add_argument("--flood", type=int, default=1000, help="the flooding tenant's runs (default 1000)")
    fair.add_argument("--small", type=int, default=10, help="the small tenant's runs (default 10)")
    fair.add_argument("--ledger", choices=["sqlite", "postgres"], default="sqlite")
    fair.add_argument("--sleep-ms", type=float, default=200.0, help="how long each task takes (default 200)")
    fair.add_argument("--slots", type=int, default=3, help="the route's maxConcurrent in the fair scenario")
    fair.add_argument("--out", type=Path, default=None, help="also write <out>/fairness.json")
    table = sub.add_parser("table", help="print a result's tables as Markdown (for the README)")
    table.add_argument("path", type=Path, nargs="?", default=RESULTS / "latest.json")
    return parser.parse_args(argv)


def shard_counts(text: str) -> tuple[int, ...]:
    """``1,2,4`` → ``(1, 2, 4)``."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of shard counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"shard counts must be 1 or more: {text!r}")
    return counts


def shard_scaling(args: argparse.Namespace) -> int:
    """Print (and write to ``<out>/shards.json``) throughput and CPU per run at each shard count."""
    from bench import shards

    sizes = runner.QUICK if args.quick else runner.FULL
    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, fleet.own_redis(Path(tmp)) as broker:
        result = shards.run(ledger=args.ledger, counts=args.shards, runs=args.runs or sizes.shard_runs,
                            workers=args.workers, broker_url=broker, workdir=Path(tmp),
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    result["mode"], result["machine"] = "quick" if args.quick else "full", report.machine()
    out = args.out or (None if args.quick else RESULTS)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "shards.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


def handler_costs(args: argparse.Namespace) -> int:
    """Print each handler's cost per ledger as JSON."""
    from bench.handlers import measure

    out = {}
    for kind in ["sqlite", "postgres"] if args.ledger == "both" else [args.ledger]:
        with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, fleet.ledger(kind, Path(tmp)) as url:
            out[kind] = measure(url, runs=args.runs)
    print(json.dumps(out, indent=1))
    return 0


def task_events(args: argparse.Namespace) -> int:
    """Print (and write to ``<out>/events.json``) the cost of task events."""
    from bench import events

    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, fleet.own_redis(Path(tmp)) as broker:
        result = events.run(ledger=args.ledger, quick=args.quick, workers=args.workers, broker_url=broker,
                            workdir=Path(tmp), throughput_runs=args.throughput_runs,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    result["machine"] = report.machine()
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "events.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


def main(argv: list[str]) -> int:
    """Run the bench, write JSON and PNG, print the JSON."""
    args = parse(argv)
    if args.command == "handlers":
        return handler_costs(args)
    if args.command == "table":
        from bench.table import markdown

        print(markdown(json.loads(args.path.read_text())))
        return 0
    if args.command == "events":
        return task_events(args)
    if args.command == "shards":
        return shard_scaling(args)
    if args.command == "fairness":
        from bench import fairness

        result = fairness.main(args.flood, args.small, args.ledger, args.sleep_ms, args.slots)
        print(json.dumps(result, indent=1))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "fairness.json").write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if args.command == "ephemeral":
        from bench import ephemeral

        print(json.dumps(ephemeral.main(args.runs, args.ledger), indent=1))
        return 0
    if args.command == "profile":
        from bench.profile import profile

        with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, fleet.own_redis(Path(tmp)) as broker:
            measured = profile(kind=args.ledger, runs=args.runs, workers=args.workers, broker_url=broker,
                               out=args.out)
        print(json.dumps(measured, indent=1))
        return 0
    ledgers = ["sqlite", "postgres"] if args.ledger == "both" else [args.ledger]
    with tempfile.TemporaryDirectory(prefix="cogo-bench-") as tmp, fleet.own_redis(Path(tmp)) as broker:
        result = runner.run(ledgers=ledgers, quick=args.quick, workers=args.workers, broker_url=broker,
                            workdir=Path(tmp), log=lambda line: print(line, file=sys.stderr, flush=True))
        result["versions"] = report.versions(broker, fleet.POSTGRES_URL if "postgres" in ledgers else None)
    result["machine"] = report.machine()
    result["targets"] = report.targets(result["ledgers"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    result["chart"] = "latest.png" if chart.draw(result, args.out / "latest.png") else None
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

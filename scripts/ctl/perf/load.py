"""Load generator and benchmark (`./mlflowctl load`, `./mlflowctl benchmark`): N concurrent
metric loggers against a tracking server.

Loggers (ctl/perf/workload.py): per-metric, per-step, batch, batch-wide or async, through the
`mlflow` client (with its retries) or `raw` HTTP (no retry; every non-2xx counted by status).
`--runs K` is the shared-run shape: the loggers share K runs (as several training ranks do), keys
in random order, values unique per logger, so that acknowledged = stored still holds.

Targets (ctl/perf/plain.py): the stack through Nginx (https on 127.0.0.1, the only published
port), and for `benchmark` also `plain-mlflow` (compose profile `benchmark`): `mlflow server` with
its defaults in the same engine, on the stack's PostgreSQL and on one of its own with stock
settings (`plain-postgres`), published on 127.0.0.1:5001 (PLAIN_MLFLOW_PORT) only.
Reported (ctl/perf/measure.py, ctl/perf/report.py): requests/s, points/s, latency percentiles,
errors by type, CPU seconds and peak memory per component, and a no-loss check: points
acknowledged to clients == points stored in the tracking database.
"""

import os
import sys
import time
from pathlib import Path

from ctl import engine
from ctl import stackexec as sx
from ctl.perf.measure import stack_memory_mb
from ctl.perf.plain import PlainServer, insert_ceiling, stack_target
from ctl.perf.report import finish, print_report
from ctl.perf.workload import CLIENTS, MODES, run_load
from ctl.settings import ROOT, Settings


def sweep(args, target: dict, label: str) -> list:
    """Every (loggers, mode, client) combination of the command line against one target."""
    reports = []
    for loggers in args.loggers:
        for mode in args.mode:
            for client in args.client:
                if client == "raw" and mode == "async":
                    continue  # no async mode in plain HTTP
                r = run_load(
                    target["env"],
                    loggers,
                    args.duration,
                    mode,
                    args.batch_size,
                    args.metrics_per_step,
                    db=target["db"],
                    db_tcp=target.get("db_tcp"),
                    containers=target.get("containers"),
                    label=label,
                    client=client,
                    runs=args.runs,
                )
                print_report(r)
                reports.append(r)
    return reports


def cmd_load(args):
    reports = sweep(args, stack_target(Settings.load()), "stack")
    return finish(
        args, {"engine": sx.eng().kind, "reports": reports, "idle_stack_memory_mb": stack_memory_mb()}, reports
    )


def cmd_benchmark(args):
    import platform

    settings = Settings.load()
    idle = stack_memory_mb()
    print(f"idle stack memory (engine stats, MB): {idle} total {sum(idle.values())}", flush=True)
    with PlainServer(settings) as plain:
        idle_plain = stack_memory_mb({"plain-mlflow": engine.container_name(PlainServer.SERVICE)})
        reports = sweep(args, plain, "plain")
        ceiling = insert_ceiling()
    print(f"raw PostgreSQL insert ceiling: {ceiling} rows/s", flush=True)
    if "own" in args.baseline:
        with PlainServer(settings, own_postgres=True) as plain:
            reports += sweep(args, plain, "plain-own-pg")
    reports += sweep(args, stack_target(settings), "stack")
    ratios = []
    for r, base in (
        (r, b)
        for r in reports
        if r["label"] == "stack"
        for b in reports
        if b["label"].startswith("plain")
        and (b["mode"], b["loggers"], b["client"]) == (r["mode"], r["loggers"], r["client"])
    ):
        ratios.append(
            {
                "baseline": base["label"],
                "client": r["client"],
                "mode": r["mode"],
                "loggers": r["loggers"],
                "points_per_s_ratio": round(r["points_per_s"] / base["points_per_s"], 2)
                if base["points_per_s"]
                else None,
                "p99_stack_s": r["latency_s"]["p99"],
                "p99_plain_s": base["latency_s"]["p99"],
                "stack_fraction_of_ceiling": round(r["points_per_s"] / ceiling, 3),
                "errors_stack": r["error_count"],
                "errors_plain": base["error_count"],
                "lost_stack": r.get("no_loss", {}).get("lost"),
                "lost_plain": base.get("no_loss", {}).get("lost"),
            }
        )
        print(
            f"ratio stack/{base['label']:<12} {r['client']:<6} {r['mode']:<10} {r['loggers']:>4} loggers: "
            f"{ratios[-1]['points_per_s_ratio']}x points/s, "
            f"{ratios[-1]['stack_fraction_of_ceiling']:.1%} of the insert ceiling",
            flush=True,
        )
    summary = {
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        },
        "engine": sx.eng().kind,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
        "insert_ceiling_rows_per_s": ceiling,
        "idle_stack_memory_mb": idle,
        "idle_plain_memory_mb": idle_plain,
        "ratios": ratios,
        "reports": reports,
    }
    return finish(args, summary, reports)


def register(sub):
    def common(p):
        p.add_argument("--mode", nargs="+", choices=MODES, default=["per-metric"], help="logging mode(s)")
        p.add_argument(
            "--client",
            nargs="+",
            choices=CLIENTS,
            default=["mlflow"],
            help="mlflow: MlflowClient (retries); raw: plain HTTP, no retries, non-2xx counted by status",
        )
        p.add_argument("--loggers", nargs="+", type=int, default=[60], help="concurrent loggers (several: a sweep)")
        p.add_argument(
            "--runs",
            type=int,
            help="shared-run shape: the loggers share this many runs (keys in random order, values unique "
            "per logger); default: one run per logger",
        )
        p.add_argument("--duration", type=float, default=30, help="seconds of load per measurement (bounded)")
        p.add_argument(
            "--batch-size",
            type=int,
            default=100,
            help="metrics per log_batch request (max 1000); batch-wide: keys of the one step",
        )
        p.add_argument("--metrics-per-step", type=int, default=10, help="metrics per step (per-step/async/batch)")
        p.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "load.json", help="JSON report")
        p.add_argument("--chart", type=Path, default=ROOT / "var" / "bench" / "load.png", help="PNG chart")

    load = sub.add_parser(
        "load", help="N concurrent loggers against the stack; report throughput, latency, loss", description=__doc__
    )
    common(load)
    load.set_defaults(func=cmd_load)
    bench = sub.add_parser(
        "benchmark",
        help="the same load against a plain `mlflow server` and our stack; ratios",
        description="Runs the workload against (a) `plain-mlflow`: `mlflow server` with its "
        "defaults in the same engine on the stack's PostgreSQL (compose profile "
        "`benchmark`, 127.0.0.1:PLAIN_MLFLOW_PORT (5001), removed afterwards), (b) the same server on "
        "`plain-postgres`, a PostgreSQL of its own with the image's stock settings, (c) this stack "
        "through Nginx, plus the raw PostgreSQL insert ceiling measured inside the engine's "
        "network; prints ratios against each baseline and writes JSON + chart.",
    )
    common(bench)
    bench.add_argument(
        "--baseline",
        nargs="+",
        choices=("stack-pg", "own"),
        default=["stack-pg", "own"],
        help="plain MLflow on the stack's PostgreSQL (stack-pg: always run, it measures the insert "
        "ceiling) and/or on a PostgreSQL of its own with stock settings (own)",
    )
    bench.set_defaults(func=cmd_benchmark)

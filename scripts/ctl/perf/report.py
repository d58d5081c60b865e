"""Output of a load or benchmark: one line per measurement, the JSON report and the PNG chart."""

import json
from pathlib import Path


def print_report(r: dict):
    lat = r["latency_s"]
    loss = r.get("no_loss", {})
    print(
        f"{r['label'] or 'target':<8} {r.get('client', 'mlflow'):<6} {r['mode']:<10} {r['loggers']:>4} loggers/{r.get('runs', r['loggers'])} runs  {r['requests_per_s']:>8.1f} req/s "
        f"{r['points_per_s']:>9.1f} points/s  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}  "
        f"errors {r['error_count']}  lost {loss.get('lost', '?')}  cpu {r['cpu_seconds']}",
        flush=True,
    )


def chart(reports: list, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict = {}
    for r in reports:
        series.setdefault(f"{r['label']} {r.get('client', 'mlflow')} {r['mode']}", []).append(r)
    for name, rs in sorted(series.items()):
        rs.sort(key=lambda r: r["loggers"])
        x = [r["loggers"] for r in rs]
        ax1.plot(x, [r["points_per_s"] for r in rs], marker="o", label=name)
        ax2.plot(x, [r["latency_s"]["p99"] or 0 for r in rs], marker="o", label=name)
    ax1.set(xlabel="concurrent loggers", ylabel="metric points/s", title="Throughput", yscale="log")
    ax2.set(xlabel="concurrent loggers", ylabel="p99 latency (s)", title="p99 request latency", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def finish(args, summary: dict, reports: list) -> int:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    chart(reports, args.chart)
    print(f"wrote {args.json} and {args.chart}")
    bad = [
        r for r in reports if r["label"] == "stack" and (r["error_count"] or not r.get("no_loss", {}).get("ok", True))
    ]
    return 1 if bad else 0

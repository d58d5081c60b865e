"""Short load runs (a few seconds each) lose nothing and see no error.

The mlflow client (with its retries) and the raw HTTP client (no retries: any non-2xx would be
counted by status) both go through Nginx, the only published port; the no-loss count is done
with psql inside the postgres container, and the components' CPU and memory come from the engine.
The long runs are a benchmark (`./mlflowctl benchmark`, docs/benchmarks.md), not tests.
"""

import pytest

from ctl.perf import load


@pytest.mark.parametrize(
    "client,mode,loggers,runs",
    [
        ("mlflow", "per-metric", 50, None),
        ("mlflow", "batch", 50, None),
        ("raw", "batch-wide", 20, None),
        ("raw", "batch-wide", 20, 1),  # shared-run shape: 20 loggers on one run, keys in random order
        ("raw", "per-metric", 20, 2),
    ],
)
def test_short_load_no_errors_no_loss(stack, settings, client, mode, loggers, runs):
    target = load.stack_target(settings)
    report = load.run_load(
        target["env"],
        loggers=loggers,
        duration=5,
        mode=mode,
        batch_size=100,
        db=target["db"],
        label="test",
        client=client,
        runs=runs,
    )
    assert report["requests"] > 0
    assert report["errors"] == {}
    assert report["no_loss"]["ok"] and report["no_loss"]["stored"] == report["points_acked"] > 0
    if mode == "batch-wide":  # 100 keys of one step per request
        assert report["points_acked"] == 100 * report["requests"]
    # Measured per component from the engine: every stack container, with CPU time and memory.
    assert set(report["cpu_seconds"]) >= {"postgres", "pgbouncer", "mlflow", "nginx"}
    assert all(report["memory_peak_mb"].get(c, 0) > 0 for c in ("postgres", "mlflow", "nginx"))

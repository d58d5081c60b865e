"""The workload: N concurrent metric loggers against a tracking server, bounded in time.

Each logger logs to one run in a pre-created experiment, in one of five modes: per-metric
(`log_metric` per point), per-step (`log_metrics` per step), batch (`log_batch` across steps, up
to 1000 metrics a request), batch-wide (`log_batch` of --batch-size keys of ONE step, e.g. 100
metrics of a step) or async (MLflow async logging). Two clients: `mlflow` (MlflowClient, with its
retries) and `raw` (plain HTTP with requests, no retry at all: every non-2xx answer is counted by
its status). Loggers are threads spread over processes, so the client is not one GIL.
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

from ctl.errors import CommandError
from ctl.perf import measure
from ctl.settings import ROOT

MODES = ("per-metric", "per-step", "batch", "batch-wide", "async")
CLIENTS = ("mlflow", "raw")
ASYNC_MAX_PENDING_STEPS = 50  # async mode: steps a logger may have in flight before it waits


def _points(mode, step, now, batch_size, metrics_per_step):
    """The (key, value, timestamp, step) points of one request of MODE, and the next step."""
    if mode == "per-metric":
        return [("loss", 1.0 / (step + 1), now, step)], step + 1
    if mode in ("per-step", "async"):
        keys, steps = metrics_per_step, 1
    elif mode == "batch-wide":  # many keys, one step: the shape of a wide training loop
        keys, steps = batch_size, 1
    else:  # batch: across steps, up to batch_size points
        keys, steps = metrics_per_step, max(1, batch_size // metrics_per_step)
    points = [(f"m{k}", float(k + s), now, s) for s in range(step, step + steps) for k in range(keys)]
    return points[: batch_size if mode == "batch" else None], step + steps


def _shaper(logger: int, shared: bool):
    """Values unique per logger: loggers that share a run write the same keys, steps and
    timestamps, and equal points would be stored once (acknowledged > stored). Shared runs also
    get their keys in random order, as independent training ranks send them."""
    rng, offset = random.Random(logger), logger * 1e6

    def shape(points):
        points = [(k, v + offset, t, s) for k, v, t, s in points]
        if shared:
            rng.shuffle(points)
        return points

    return shape


def _log_for(mode, run_id, deadline, batch_size, metrics_per_step, out, logger=0, shared=False):
    import mlflow
    from mlflow.entities import Metric

    client, shape = mlflow.MlflowClient(), _shaper(logger, shared)
    step, ops = 0, []
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        points, next_step = _points(mode, step, int(time.time() * 1000), batch_size, metrics_per_step)
        points = shape(points)
        try:
            if mode == "per-metric":
                client.log_metric(run_id, *points[0])
            elif mode == "per-step":
                mlflow.log_metrics({k: v for k, v, _, _ in points}, step=step, run_id=run_id)
            elif mode == "async":  # returns at once; acknowledged when the flush below succeeds
                ops.append(client.log_batch(run_id, [Metric(*p) for p in points], synchronous=False))
                out["pending"] += len(points)
                if len(ops) > ASYNC_MAX_PENDING_STEPS:  # backpressure, as a training loop would see
                    ops.pop(0).wait()
                step = next_step
                continue
            else:
                client.log_batch(run_id, metrics=[Metric(*p) for p in points])
            out["latencies"].append(time.perf_counter() - t0)
            out["acked"] += len(points)
            out["requests"] += 1
        except Exception as exc:  # counted and reported, never hidden
            status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "error_code", "")
            out["errors"][f"{type(exc).__name__} {status}".strip() + f": {str(exc)[:100]}"] += 1
        step = next_step
    if mode == "async":
        t0 = time.perf_counter()
        try:
            mlflow.flush_async_logging()
            out["acked"] += out["pending"]
            out["latencies"].append(time.perf_counter() - t0)
        except Exception as exc:
            out["errors"][f"async flush {type(exc).__name__}"] += 1


def _raw_session(env):
    """requests without retries or environment overrides, authenticated and trusting the CA that
    ENV (a client environment) names."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE & co. would override verify=
    session.mount("http://", HTTPAdapter(max_retries=0, pool_maxsize=4))
    session.mount("https://", HTTPAdapter(max_retries=0, pool_maxsize=4))
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    session.auth = (user, password) if user else None
    if not user and env.get("MLFLOW_TRACKING_TOKEN"):  # AUTH_MODE=oidc: a bearer token, as the mlflow client sends it
        session.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    session.verify = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    return session


def _api(env) -> str:
    return env["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/"


def _raw_log_for(mode, run_id, deadline, batch_size, metrics_per_step, out, logger=0, shared=False):
    """The same shapes as _log_for, as plain REST calls: one attempt each, every answer counted."""
    import requests

    session, shape = _raw_session(os.environ), _shaper(logger, shared)
    base = _api(os.environ) + "runs/"
    step = 0
    while time.monotonic() < deadline:
        points, next_step = _points(mode, step, int(time.time() * 1000), batch_size, metrics_per_step)
        metrics = [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in shape(points)]
        if mode == "per-metric":
            path, body = "log-metric", {"run_id": run_id, **metrics[0]}
        else:
            path, body = "log-batch", {"run_id": run_id, "metrics": metrics}
        t0 = time.perf_counter()
        try:
            r = session.post(base + path, json=body, timeout=60)
            if 200 <= r.status_code < 300:
                out["latencies"].append(time.perf_counter() - t0)
                out["acked"] += len(metrics)
                out["requests"] += 1
            else:
                out["errors"][f"HTTP {r.status_code}"] += 1
        except requests.RequestException as exc:
            out["errors"][f"{type(exc).__name__} (no HTTP status)"] += 1
        step = next_step
    session.close()


def worker_main():
    """A logger process (started by run_load with the client's environment): reads its job as JSON
    on stdin, imports the client, prints `ready`, waits for `go` on stdin, logs for the job's
    duration, and prints its results as JSON."""
    job = json.loads(sys.stdin.readline())
    import mlflow  # noqa: F401 (imported before `ready`: ~2 s a process that must not eat the measured time)

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    print(json.dumps(_worker(**job)), flush=True)


def _worker(loggers, mode, duration, batch_size, metrics_per_step, client="mlflow", shared=False):
    """LOGGERS: [logger index, run id] pairs, one thread each."""
    deadline = time.monotonic() + duration
    results = [{"latencies": [], "acked": 0, "requests": 0, "pending": 0, "errors": Counter()} for _ in loggers]
    target = _raw_log_for if client == "raw" else _log_for
    threads = [
        threading.Thread(target=target, args=(mode, rid, deadline, batch_size, metrics_per_step, res, logger, shared))
        for (logger, rid), res in zip(loggers, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 300)  # bounded: a request stuck past its own timeout is reported as lost
    return {
        "latencies": [x for r in results for x in r["latencies"]],
        "acked": [[rid, r["acked"]] for (_, rid), r in zip(loggers, results, strict=True)],
        "requests": sum(r["requests"] for r in results),
        "errors": dict(sum((r["errors"] for r in results), Counter())),
    }


def _start_workers(env: dict, jobs: list, timeout: float) -> list:
    """One logger process per job, with ENV as its whole environment; returns them once every one
    has imported its client (`ready`)."""
    code = "from ctl.perf.workload import worker_main; worker_main()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in jobs
    ]
    deadline = time.monotonic() + timeout
    for proc, job in zip(procs, jobs, strict=True):
        assert proc.stdin is not None  # stdin=PIPE
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
    for proc in procs:
        ready = _read_line(proc, deadline)
        if ready != "ready":
            for p in procs:
                p.kill()
            raise CommandError(f"a logger process did not start (exit {proc.poll()}, said {ready!r})")
    return procs


def _read_line(proc, deadline: float) -> str:
    """Next stdout line of PROC, or "" once DEADLINE passes (the process is then killed)."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not box:
        proc.kill()
        return ""
    return box[0].strip()


def _create_runs(env: dict, name: str, count: int) -> list:
    """A new experiment with COUNT runs (pre-created: mlflow #1811), over the REST API."""
    session = _raw_session(env)
    try:
        exp = session.post(_api(env) + "experiments/create", json={"name": name}, timeout=60)
        exp.raise_for_status()
        exp_id = exp.json()["experiment_id"]
        runs = []
        for _ in range(count):
            r = session.post(_api(env) + "runs/create", json={"experiment_id": exp_id}, timeout=60)
            r.raise_for_status()
            runs.append(r.json()["run"]["info"]["run_id"])
        return runs
    finally:
        session.close()


def run_load(
    client_env: dict,
    loggers,
    duration,
    mode,
    batch_size=100,
    metrics_per_step=10,
    procs=None,
    db=None,
    db_tcp=None,
    containers=None,
    label="",
    client="mlflow",
    runs=None,
) -> dict:
    """Run one bounded load and return its report.

    client_env: the loggers' whole environment (Settings.client_env(): URI, credentials, CA);
    db: tracking database for the no-loss count (db_tcp: its server, if not the stack's); containers: component -> container to measure;
    runs: the shared-run shape, LOGGERS loggers on RUNS runs (default: a run per logger)."""
    if client == "raw" and mode == "async":
        raise ValueError("the raw HTTP client has no async mode")
    shared = bool(runs) and runs < loggers
    run_ids = _create_runs(client_env, f"load/{mode}/{uuid.uuid4().hex[:12]}", runs if shared else loggers)
    assignment = [[i, run_ids[i % len(run_ids)]] for i in range(loggers)]
    procs = procs or min(loggers, max(4, 2 * (os.cpu_count() or 2)))
    chunks = [c for c in (assignment[i::procs] for i in range(procs)) if c]
    env = {
        **client_env,
        "MLFLOW_HTTP_POOL_MAXSIZE": str(max(10, len(chunks[0]))),
        # Without a buffering window MLflow's async queue sends every call as its own request.
        "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": client_env.get("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1"),
    }
    jobs = [
        {
            "loggers": c,
            "mode": mode,
            "duration": duration,
            "batch_size": batch_size,
            "metrics_per_step": metrics_per_step,
            "client": client,
            "shared": shared,
        }
        for c in chunks
    ]
    workers = _start_workers(env, jobs, timeout=120)
    containers = measure.components() if containers is None else containers
    before, own_cpu_before, t0 = measure.container_stats(containers), measure.own_cpu(), time.monotonic()
    sampler = measure.Sampler(containers)
    sampler.start()
    for w in workers:
        w.stdin.write("go\n")
        w.stdin.close()
    deadline = time.monotonic() + duration + 600
    lines = [_read_line(w, deadline) for w in workers]
    for w in workers:
        w.wait(60)
    if not all(lines):
        raise CommandError(f"{lines.count('')} of {len(workers)} logger processes did not report")
    results = [json.loads(line) for line in lines]
    elapsed = time.monotonic() - t0
    sampler.stop.set()
    after = measure.container_stats(containers)
    cpu = {
        k: round(v[0] - before[k][0], 1)
        for k, v in after.items()
        if k in before and v[0] is not None and before[k][0] is not None
    }
    cpu["load generator"] = round(measure.own_cpu() - own_cpu_before, 1)
    latencies = [x for r in results for x in r["latencies"]]
    acked: Counter = Counter()
    for r in results:
        for rid, n in r["acked"]:
            acked[rid] += n
    errors = dict(sum((Counter(r["errors"]) for r in results), Counter()))
    requests_total = sum(r["requests"] for r in results)
    report = {
        "label": label,
        "client": client,
        "mode": mode,
        "loggers": loggers,
        "runs": len(run_ids),
        "duration_s": round(elapsed, 1),
        "requests": requests_total,
        "requests_per_s": round(requests_total / elapsed, 1),
        "points_acked": sum(acked.values()),
        "points_per_s": round(sum(acked.values()) / elapsed, 1),
        "latency_s": {f"p{q}": round(measure.percentile(latencies, q), 4) if latencies else None for q in (50, 95, 99)}
        | {"max": round(max(latencies), 4) if latencies else None},
        "errors": errors,
        "error_count": sum(errors.values()),
        "cpu_seconds": cpu,
        "memory_peak_mb": {k: round(v / 2**20) for k, v in sampler.peak.items()},
    }
    if db:
        stored = measure.stored_points(run_ids, db, db_tcp)
        lost = {rid: acked.get(rid, 0) - n for rid, n in stored.items() if n < acked.get(rid, 0)}
        report["no_loss"] = {
            "stored": sum(stored.values()),
            "acked": sum(acked.values()),
            "lost": sum(lost.values()),
            "extra_stored": sum(max(0, n - acked.get(r, 0)) for r, n in stored.items()),
            "ok": not lost,
        }
    return report

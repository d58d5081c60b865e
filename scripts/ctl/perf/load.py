"""Load generator and benchmark: N concurrent metric loggers against a tracking server.

Each logger owns one run in a pre-created experiment and logs for a bounded duration in one of
five modes: per-metric (`log_metric` per point), per-step (`log_metrics` per step), batch
(`log_batch` across steps, up to 1000 metrics a request), batch-wide (`log_batch` of
--batch-size keys of ONE step, e.g. 100 metrics of a step) or async (MLflow async logging).
Two clients: `mlflow` (MlflowClient, with its retries) and `raw` (plain HTTP with requests, no
retry at all: every non-2xx answer is counted by its status). Loggers are threads spread over
processes, so the client is not one GIL.

Targets: the stack through Nginx (https on 127.0.0.1, the only published port), and for
`benchmark` also `plain-mlflow` (compose profile `benchmark`): `mlflow server` with its defaults in
the same engine, on the same PostgreSQL, published on 127.0.0.1:5001 only. Reported: requests/s,
points/s, latency percentiles, errors by type, CPU seconds and peak memory per component (its
container, from the engine's `stats`), and a no-loss check: points acknowledged to clients ==
points stored in the tracking database (counted with psql inside the postgres container).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from ctl import engine
from ctl import stackexec as sx
from ctl.errors import CommandError
from ctl.settings import ROOT, Settings, long_running_services

MODES = ("per-metric", "per-step", "batch", "batch-wide", "async")
CLIENTS = ("mlflow", "raw")
ASYNC_MAX_PENDING_STEPS = 50  # async mode: steps a logger may have in flight before it waits


# --- one logger ---------------------------------------------------------------------------
def _log_for(mode, run_id, deadline, batch_size, metrics_per_step, out):
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    step, ops = 0, []
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            now = int(time.time() * 1000)
            if mode == "per-metric":
                client.log_metric(run_id, "loss", 1.0 / (step + 1), timestamp=now, step=step)
                points = 1
            elif mode == "per-step":
                mlflow.log_metrics(
                    {f"m{k}": float(k + step) for k in range(metrics_per_step)}, step=step, run_id=run_id
                )
                points = metrics_per_step
            elif mode == "batch":
                steps = max(1, batch_size // metrics_per_step)
                batch = [
                    Metric(f"m{k}", float(k + s), now, s)
                    for s in range(step, step + steps)
                    for k in range(metrics_per_step)
                ][:batch_size]
                client.log_batch(run_id, metrics=batch)
                points, step = len(batch), step + steps - 1
            elif mode == "batch-wide":  # many keys, one step: the shape of a wide training loop
                client.log_batch(
                    run_id, metrics=[Metric(f"m{k}", float(k + step), now, step) for k in range(batch_size)]
                )
                points = batch_size
            else:  # async: returns at once; acknowledged when the flush below succeeds
                ops.append(
                    client.log_batch(
                        run_id,
                        [Metric(f"m{k}", float(k + step), now, step) for k in range(metrics_per_step)],
                        synchronous=False,
                    )
                )
                out["pending"] += metrics_per_step
                if len(ops) > ASYNC_MAX_PENDING_STEPS:  # backpressure, as a training loop would see
                    ops.pop(0).wait()
                step += 1
                continue
            out["latencies"].append(time.perf_counter() - t0)
            out["acked"] += points
            out["requests"] += 1
        except Exception as exc:  # counted and reported, never hidden
            status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "error_code", "")
            out["errors"][f"{type(exc).__name__} {status}".strip() + f": {str(exc)[:100]}"] += 1
        step += 1
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
    session.verify = env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    return session


def _api(env) -> str:
    return env["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/"


def _raw_log_for(mode, run_id, deadline, batch_size, metrics_per_step, out):
    """The same shapes as _log_for, as plain REST calls: one attempt each, every answer counted."""
    import requests

    session = _raw_session(os.environ)
    base = _api(os.environ) + "runs/"
    step = 0
    while time.monotonic() < deadline:
        now = int(time.time() * 1000)
        if mode == "per-metric":
            path, body = (
                "log-metric",
                {"run_id": run_id, "key": "loss", "value": 1.0 / (step + 1), "timestamp": now, "step": step},
            )
            points, next_step = 1, step + 1
        else:
            if mode == "per-step":
                keys, steps = metrics_per_step, 1
            elif mode == "batch-wide":
                keys, steps = batch_size, 1
            else:  # batch
                keys, steps = metrics_per_step, max(1, batch_size // metrics_per_step)
            metrics = [
                {"key": f"m{k}", "value": float(k + s), "timestamp": now, "step": s}
                for s in range(step, step + steps)
                for k in range(keys)
            ][: batch_size if mode == "batch" else None]
            path, body = "log-batch", {"run_id": run_id, "metrics": metrics}
            points, next_step = len(metrics), step + steps
        t0 = time.perf_counter()
        try:
            r = session.post(base + path, json=body, timeout=60)
            if 200 <= r.status_code < 300:
                out["latencies"].append(time.perf_counter() - t0)
                out["acked"] += points
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


def _worker(run_ids, mode, duration, batch_size, metrics_per_step, client="mlflow"):
    deadline = time.monotonic() + duration
    results = [{"latencies": [], "acked": 0, "requests": 0, "pending": 0, "errors": Counter()} for _ in run_ids]
    target = _raw_log_for if client == "raw" else _log_for
    threads = [
        threading.Thread(target=target, args=(mode, rid, deadline, batch_size, metrics_per_step, res))
        for rid, res in zip(run_ids, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 300)  # bounded: a request stuck past its own timeout is reported as lost
    return {
        "latencies": [x for r in results for x in r["latencies"]],
        "acked": {rid: r["acked"] for rid, r in zip(run_ids, results, strict=True)},
        "requests": sum(r["requests"] for r in results),
        "errors": dict(sum((r["errors"] for r in results), Counter())),
    }


def _start_workers(env: dict, jobs: list, timeout: float) -> list:
    """One logger process per job, with ENV as its whole environment; returns them once every one
    has imported its client (`ready`)."""
    code = "from ctl.perf.load import worker_main; worker_main()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in jobs
    ]
    deadline = time.monotonic() + timeout
    for proc, job in zip(procs, jobs, strict=True):
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


# --- measurement of the stack ---------------------------------------------------------------
def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (the logger processes)."""
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def components(extra: dict = None) -> dict:
    """Component name -> its container, for every server of the compose model (EXTRA added)."""
    names = long_running_services(engine.model(sx.eng()))
    return {**{name: engine.container_name(name) for name in names}, **(extra or {})}


_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _bytes(text: str) -> float:
    """'594.3MB' (podman) or '594.3MiB' (docker) -> bytes."""
    import re

    found = re.match(r"\s*([\d.]+)\s*([a-zA-Z]*)", text or "")
    return float(found.group(1)) * _UNITS.get(found.group(2).lower() or "b", 1) if found else 0.0


def _seconds(text: str):
    """podman's cpu_time ('7.49s', '548.8ms', '1m2.5s') -> seconds."""
    import re

    if not text:
        return None
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(h|ms|µs|us|ns|m|s)", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}[unit]
    return total


def _cgroup_cpu(eng, container: str):
    """CPU seconds of a container from its own cgroup (cgroup v2 cpu.stat, or v1 cpuacct.usage)."""
    out = engine.run([*eng.cli, "exec", container, "cat", "/sys/fs/cgroup/cpu.stat"], timeout=30, env=eng.env)
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        if line.startswith("usage_usec "):
            return int(line.split()[1]) / 1e6
    out = engine.run(
        [*eng.cli, "exec", container, "cat", "/sys/fs/cgroup/cpuacct/cpuacct.usage"], timeout=30, env=eng.env
    )
    return int(out.stdout) / 1e9 if out.returncode == 0 and out.stdout.strip().isdigit() else None


def container_stats(containers: dict, cpu: bool = True) -> dict:
    """Component -> (cpu seconds so far or None, memory bytes), from `ENGINE stats --no-stream`.

    Memory is the engine's figure for the container's cgroup (podman and docker both leave the
    inactive page cache out). CPU: podman reports it (cpu_time); docker does not, so it comes from
    the container's cgroup file."""
    eng = sx.eng()
    out = engine.run(
        [*eng.cli, "stats", "--no-stream", "--format", "json", *containers.values()], timeout=60, env=eng.env
    )
    if out.returncode:
        return {}
    rows = engine.json_rows(out.stdout)
    by_name = {(r.get("name") or r.get("Name") or "").lstrip("/"): r for r in rows}
    result = {}
    for component, container in containers.items():
        row = by_name.get(container)
        if row is None:
            continue
        mem = _bytes((row.get("mem_usage") or row.get("MemUsage") or "").split("/")[0])
        seconds = _seconds(row.get("cpu_time")) if cpu else None
        if cpu and seconds is None:
            seconds = _cgroup_cpu(eng, container)
        result[component] = (seconds, mem)
    return result


class Sampler(threading.Thread):
    """Samples the components' memory once a second; keeps the sample with the largest total."""

    def __init__(self, containers: dict, interval: float = 1.0):
        super().__init__(daemon=True)
        self.containers, self.interval, self.peak, self.stop = containers, interval, {}, threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            mem = {k: v[1] for k, v in container_stats(self.containers, cpu=False).items()}
            if sum(mem.values()) > sum(self.peak.values()):
                self.peak = mem


def stored_points(run_ids, db: str) -> dict:
    """Points stored per run, counted by psql inside the postgres container."""
    rows = sx.psql(
        "SELECT run_uuid, count(*) FROM metrics WHERE run_uuid = ANY(string_to_array(:'ids', ',')) GROUP BY run_uuid",
        db,
        {"ids": ",".join(run_ids)},
        timeout=300,
    )
    found = {rid: int(n) for rid, n in rows}
    return {rid: found.get(rid, 0) for rid in run_ids}


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)]


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
    containers=None,
    label="",
    client="mlflow",
) -> dict:
    """Run one bounded load and return its report.

    client_env: the loggers' whole environment (Settings.client_env(): URI, credentials, CA);
    db: tracking database for the no-loss count; containers: component -> container to measure."""
    if client == "raw" and mode == "async":
        raise ValueError("the raw HTTP client has no async mode")
    run_ids = _create_runs(client_env, f"load/{mode}/{uuid.uuid4().hex[:12]}", loggers)
    procs = procs or min(loggers, max(4, 2 * (os.cpu_count() or 2)))
    chunks = [c for c in (run_ids[i::procs] for i in range(procs)) if c]
    env = {
        **client_env,
        "MLFLOW_HTTP_POOL_MAXSIZE": str(max(10, len(chunks[0]))),
        # Without a buffering window MLflow's async queue sends every call as its own request.
        "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": client_env.get("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1"),
    }
    jobs = [
        {
            "run_ids": c,
            "mode": mode,
            "duration": duration,
            "batch_size": batch_size,
            "metrics_per_step": metrics_per_step,
            "client": client,
        }
        for c in chunks
    ]
    workers = _start_workers(env, jobs, timeout=120)
    containers = components() if containers is None else containers
    before, own_cpu_before, t0 = container_stats(containers), _own_cpu(), time.monotonic()
    sampler = Sampler(containers)
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
    after = container_stats(containers)
    cpu = {
        k: round(v[0] - before[k][0], 1)
        for k, v in after.items()
        if k in before and v[0] is not None and before[k][0] is not None
    }
    cpu["load generator"] = round(_own_cpu() - own_cpu_before, 1)
    latencies = [x for r in results for x in r["latencies"]]
    acked = {k: v for r in results for k, v in r["acked"].items()}
    errors = dict(sum((Counter(r["errors"]) for r in results), Counter()))
    requests_total = sum(r["requests"] for r in results)
    report = {
        "label": label,
        "client": client,
        "mode": mode,
        "loggers": loggers,
        "duration_s": round(elapsed, 1),
        "requests": requests_total,
        "requests_per_s": round(requests_total / elapsed, 1),
        "points_acked": sum(acked.values()),
        "points_per_s": round(sum(acked.values()) / elapsed, 1),
        "latency_s": {f"p{q}": round(percentile(latencies, q), 4) if latencies else None for q in (50, 95, 99)}
        | {"max": round(max(latencies), 4) if latencies else None},
        "errors": errors,
        "error_count": sum(errors.values()),
        "cpu_seconds": cpu,
        "memory_peak_mb": {k: round(v / 2**20) for k, v in sampler.peak.items()},
    }
    if db:
        stored = stored_points(run_ids, db)
        lost = {rid: acked.get(rid, 0) - n for rid, n in stored.items() if n < acked.get(rid, 0)}
        report["no_loss"] = {
            "stored": sum(stored.values()),
            "acked": sum(acked.values()),
            "lost": sum(lost.values()),
            "extra_stored": sum(max(0, n - acked.get(r, 0)) for r, n in stored.items()),
            "ok": not lost,
        }
    return report


def stack_memory_mb(containers: dict = None) -> dict:
    return {k: round(v[1] / 2**20) for k, v in container_stats(containers or components(), cpu=False).items()}


# --- targets ---------------------------------------------------------------------------------
def stack_target(settings: Settings, extra_env: dict = None) -> dict:
    """Our stack through Nginx/TLS with the admin's credentials and our CA."""
    return {"env": {**settings.client_env(), **(extra_env or {})}, "db": "mlflow"}


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


def ensure_database(db: str, owner: str = "mlflow"):
    """CREATE DATABASE DB OWNER OWNER unless it exists (psql in the postgres container)."""
    if not sx.psql("SELECT 1 FROM pg_database WHERE datname = :'db'", "postgres", {"db": db}):
        sx.psql('CREATE DATABASE :"db" OWNER :"owner"', "postgres", {"db": db, "owner": owner})


class PlainServer:
    """`plain-mlflow` (compose profile `benchmark`): `mlflow server` with its defaults (uvicorn, no
    auth, no TLS, no PgBouncer) in the same engine, on the same PostgreSQL (its own database),
    published on 127.0.0.1:5001 only. Started for the comparison and removed afterwards."""

    SERVICE, DB, URI = "plain-mlflow", "mlflow_plain", "http://127.0.0.1:5001"
    PROFILES = ("local", "benchmark")

    def __init__(self, settings: Settings):
        self.settings = settings

    def __enter__(self):
        ensure_database(self.DB)
        engine.start_ticker(sx.eng())  # podman: `--wait` needs the health checks run (no-op when running)
        engine.log(f"starting {self.SERVICE} (compose profile benchmark)")
        sx.run(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            "300",
            "--no-deps",
            self.SERVICE,
            profiles=self.PROFILES,
            timeout=400,
        )
        deadline = time.monotonic() + 120
        while not http_ok(f"{self.URI}/health"):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{self.SERVICE} does not answer on {self.URI}; "
                    f"see `./mlflowctl compose --profile benchmark logs {self.SERVICE}`"
                )
            time.sleep(1)
        return {
            "env": self.settings.client_env(url=self.URI),
            "db": self.DB,
            "containers": components({"mlflow": engine.container_name(self.SERVICE)}),
        }

    def __exit__(self, *exc):
        sx.run("rm", "--stop", "--force", "--volumes", self.SERVICE, profiles=self.PROFILES, timeout=120, check=False)


# Runs in the plain-mlflow container (our image, on the backend network): SECONDS CONNECTIONS ROWS.
CEILING_CODE = r"""
import sys, threading, time, uuid
import psycopg2
from psycopg2.extras import execute_values
seconds, connections, rows_per_insert = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dsn = "host=postgres port=5432 user=mlflow dbname=mlflow_plain"  # password: PGPASSWORD of the service
with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
    cur.execute("DROP TABLE IF EXISTS metrics_ceiling; CREATE TABLE metrics_ceiling (LIKE metrics INCLUDING ALL)")
conn.close()
counts = [0] * connections
def insert(i):
    c = psycopg2.connect(dsn)
    run_uuid, deadline, step = uuid.uuid4().hex, time.monotonic() + seconds, 0
    with c.cursor() as cur:
        while time.monotonic() < deadline:
            rows = [(f"m{k % 10}", float(k), int(time.time() * 1000), run_uuid, step + k // 10, False)
                    for k in range(rows_per_insert)]
            execute_values(cur, "INSERT INTO metrics_ceiling (key, value, timestamp, run_uuid, step, is_nan) VALUES %s", rows)
            c.commit()  # one transaction per request, as MLflow commits per log_batch
            counts[i] += rows_per_insert
            step += rows_per_insert // 10
    c.close()
t0 = time.monotonic()
threads = [threading.Thread(target=insert, args=(i,)) for i in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join(seconds + 120)
rate = sum(counts) / (time.monotonic() - t0)
with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
    cur.execute("DROP TABLE metrics_ceiling")
conn.close()
print(round(rate, 1))
"""


def insert_ceiling(seconds: float = 10, connections: int = 4, rows_per_insert: int = 1000) -> float:
    """Rows/s of the same metric rows inserted straight into PostgreSQL (no MLflow, no HTTP), from
    inside the engine's network (the plain-mlflow container, which must be up)."""
    out = sx.python(
        CEILING_CODE, seconds, connections, rows_per_insert, service=PlainServer.SERVICE, timeout=seconds + 300
    )
    return float(out.stdout.strip().splitlines()[-1])


# --- output ----------------------------------------------------------------------------------
def print_report(r: dict):
    lat = r["latency_s"]
    loss = r.get("no_loss", {})
    print(
        f"{r['label'] or 'target':<8} {r.get('client', 'mlflow'):<6} {r['mode']:<10} {r['loggers']:>4} loggers  {r['requests_per_s']:>8.1f} req/s "
        f"{r['points_per_s']:>9.1f} points/s  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}  "
        f"errors {r['error_count']}  lost {loss.get('lost', '?')}  cpu {r['cpu_seconds']}",
        flush=True,
    )


def chart(reports: list, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {}
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
                    containers=target.get("containers"),
                    label=label,
                    client=client,
                )
                print_report(r)
                reports.append(r)
    return reports


def cmd_load(args):
    reports = sweep(args, stack_target(Settings.load()), "stack")
    return finish(
        args, {"engine": sx.eng().kind, "reports": reports, "idle_stack_memory_mb": stack_memory_mb()}, reports
    )


def cmd_compare(args):
    import platform

    settings = Settings.load()
    idle = stack_memory_mb()
    print(f"idle stack memory (engine stats, MB): {idle} total {sum(idle.values())}", flush=True)
    with PlainServer(settings) as plain:
        idle_plain = stack_memory_mb({"plain-mlflow": engine.container_name(PlainServer.SERVICE)})
        reports = sweep(args, plain, "plain")
        ceiling = insert_ceiling()
    print(f"raw PostgreSQL insert ceiling: {ceiling} rows/s", flush=True)
    reports += sweep(args, stack_target(settings), "stack")
    ratios = []
    for r in (x for x in reports if x["label"] == "stack"):
        base = next(
            x
            for x in reports
            if x["label"] == "plain"
            and x["mode"] == r["mode"]
            and x["loggers"] == r["loggers"]
            and x["client"] == r["client"]
        )
        ratios.append(
            {
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
            f"ratio stack/plain {r['client']:<6} {r['mode']:<10} {r['loggers']:>4} loggers: "
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


def finish(args, summary: dict, reports: list) -> int:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    chart(reports, args.chart)
    print(f"wrote {args.json} and {args.chart}")
    bad = [
        r for r in reports if r["label"] == "stack" and (r["error_count"] or not r.get("no_loss", {}).get("ok", True))
    ]
    return 1 if bad else 0


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
        "load",
        help="N concurrent loggers against the stack; report throughput, latency, loss",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(load)
    load.set_defaults(func=cmd_load)
    cmp_ = sub.add_parser(
        "benchmark",
        help="the same load against a plain `mlflow server` and our stack; ratios",
        description="Runs the workload against (a) `plain-mlflow`: `mlflow server` with its "
        "defaults in the same engine on the same PostgreSQL (compose profile "
        "`benchmark`, 127.0.0.1:5001, removed afterwards), (b) this stack through "
        "Nginx, plus the raw PostgreSQL insert ceiling measured inside the engine's "
        "network; prints ratios and writes JSON + chart.",
    )
    common(cmp_)
    cmp_.set_defaults(func=cmd_compare)

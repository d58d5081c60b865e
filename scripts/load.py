"""Load generator and benchmark: N concurrent metric loggers against a tracking server.

Each logger owns one run in a pre-created experiment and logs for a bounded duration in one of
four modes: per-metric (`log_metric` per point), per-step (`log_metrics` per step), batch
(`log_batch` across steps, up to 1000 metrics a request) or async (MLflow async logging).
Loggers are threads spread over processes, so the client is not one GIL. Reported: requests/s,
points/s, latency percentiles, errors by type, CPU seconds and memory by stack component, and a
no-loss check: points acknowledged to clients == points stored in the tracking database.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

MODES = ("per-metric", "per-step", "batch", "async")
ASYNC_MAX_PENDING_STEPS = 50  # async mode: steps a logger may have in flight before it waits
ROOT = Path(__file__).resolve().parent.parent


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
                mlflow.log_metrics({f"m{k}": float(k + step) for k in range(metrics_per_step)}, step=step, run_id=run_id)
                points = metrics_per_step
            elif mode == "batch":
                steps = max(1, batch_size // metrics_per_step)
                batch = [Metric(f"m{k}", float(k + s), now, s) for s in range(step, step + steps)
                         for k in range(metrics_per_step)][:batch_size]
                client.log_batch(run_id, metrics=batch)
                points, step = len(batch), step + steps - 1
            else:  # async: returns at once; acknowledged when the flush below succeeds
                ops.append(client.log_batch(run_id, [Metric(f"m{k}", float(k + step), now, step)
                                                     for k in range(metrics_per_step)], synchronous=False))
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


def _worker(run_ids, mode, duration, batch_size, metrics_per_step, queue):
    os.environ["MLFLOW_HTTP_POOL_MAXSIZE"] = str(max(10, len(run_ids)))
    # Without a buffering window MLflow's async queue sends every call as its own request.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    deadline = time.monotonic() + duration
    results = [{"latencies": [], "acked": 0, "requests": 0, "pending": 0, "errors": Counter()} for _ in run_ids]
    threads = [threading.Thread(target=_log_for, args=(mode, rid, deadline, batch_size, metrics_per_step, res))
               for rid, res in zip(run_ids, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 300)  # bounded: a request stuck past its own timeout is reported as lost
    queue.put({"latencies": [x for r in results for x in r["latencies"]],
               "acked": {rid: r["acked"] for rid, r in zip(run_ids, results)},
               "requests": sum(r["requests"] for r in results),
               "errors": dict(sum((r["errors"] for r in results), Counter()))})


# --- measurement of the stack ---------------------------------------------------------------
def _proc_stats():
    """pid -> (parent pid, cpu seconds incl. reaped children, pss bytes) for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
            pss = 0
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
            out[int(pid)] = (int(fields[1]), cpu, pss)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (the logger processes)."""
    import resource
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def components() -> dict:
    """Component name -> main pid of its native service."""
    from scripts import native
    pids = {name: native.main_pid(name) for name in ("postgres", "pgbouncer", "mlflow", "nginx")}
    return {name: pid for name, pid in pids.items() if pid}


def by_component(stats, roots):
    """Sum CPU and PSS over each component's process tree (PostgreSQL backends call setsid)."""
    owner = {pid: name for name, pid in roots.items()}
    totals = {name: [0.0, 0] for name in roots}
    for pid, (ppid, cpu, pss) in stats.items():
        node, hops = pid, 0
        while node not in owner and node in stats and hops < 64:
            node, hops = stats[node][0], hops + 1
        if node in owner:
            totals[owner[node]][0] += cpu
            totals[owner[node]][1] += pss
    return totals


class Sampler(threading.Thread):
    """Samples memory (PSS) of the stack once a second; keeps the sample with the largest total."""
    def __init__(self, roots):
        super().__init__(daemon=True)
        self.roots, self.peak, self.stop = roots, {}, threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            mem = {k: v[1] for k, v in by_component(_proc_stats(), self.roots).items()}
            if sum(mem.values()) > sum(self.peak.values()):
                self.peak = mem


def stored_points(run_ids, db_uri) -> dict:
    import psycopg2
    with psycopg2.connect(db_uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, count(*) FROM metrics WHERE run_uuid = ANY(%s) GROUP BY run_uuid", (list(run_ids),))
        found = dict(cur.fetchall())
    conn.close()
    return {rid: found.get(rid, 0) for rid in run_ids}


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)]


def run_load(tracking_uri, loggers, duration, mode, batch_size=100, metrics_per_step=10, procs=None,
             db_uri=None, roots=None, label="") -> dict:
    """Run one bounded load and return its report (the tracking env vars carry credentials/CA)."""
    import mlflow
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    client = mlflow.MlflowClient(tracking_uri)
    exp_id = client.create_experiment(f"load/{mode}/{uuid.uuid4().hex[:12]}")  # pre-created: mlflow #1811
    run_ids = [client.create_run(exp_id).info.run_id for _ in range(loggers)]
    procs = procs or min(loggers, max(4, 2 * (os.cpu_count() or 2)))
    chunks = [run_ids[i::procs] for i in range(procs)]
    roots = components() if roots is None else roots
    before, own_cpu_before, t0 = _proc_stats(), _own_cpu(), time.monotonic()
    sampler = Sampler(roots)
    sampler.start()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(c, mode, duration, batch_size, metrics_per_step, queue)) for c in chunks if c]
    for w in workers:
        w.start()
    results = [queue.get(timeout=duration + 600) for _ in workers]
    for w in workers:
        w.join(60)
    elapsed = time.monotonic() - t0
    sampler.stop.set()
    after = _proc_stats()
    cpu_before = by_component(before, roots)
    cpu = {k: round(v[0] - cpu_before[k][0], 1) for k, v in by_component(after, roots).items()}
    cpu["load generator"] = round(_own_cpu() - own_cpu_before, 1)
    latencies = [x for r in results for x in r["latencies"]]
    acked = {k: v for r in results for k, v in r["acked"].items()}
    errors = dict(sum((Counter(r["errors"]) for r in results), Counter()))
    requests_total = sum(r["requests"] for r in results)
    report = {
        "label": label, "mode": mode, "loggers": loggers, "duration_s": round(elapsed, 1),
        "requests": requests_total, "requests_per_s": round(requests_total / elapsed, 1),
        "points_acked": sum(acked.values()), "points_per_s": round(sum(acked.values()) / elapsed, 1),
        "latency_s": {f"p{q}": round(percentile(latencies, q), 4) if latencies else None for q in (50, 95, 99)}
        | {"max": round(max(latencies), 4) if latencies else None},
        "errors": errors, "error_count": sum(errors.values()), "cpu_seconds": cpu,
        "memory_peak_mb": {k: round(v / 2**20) for k, v in sampler.peak.items()},
    }
    if db_uri:
        stored = stored_points(run_ids, db_uri)
        lost = {rid: acked.get(rid, 0) - n for rid, n in stored.items() if n < acked.get(rid, 0)}
        report["no_loss"] = {"stored": sum(stored.values()), "acked": sum(acked.values()),
                             "lost": sum(lost.values()), "extra_stored": sum(max(0, n - acked.get(r, 0)) for r, n in stored.items()),
                             "ok": not lost}
    return report


def stack_memory_mb() -> dict:
    return {k: round(v[1] / 2**20) for k, v in by_component(_proc_stats(), components()).items()}


# --- targets ---------------------------------------------------------------------------------
def stack_target(env: dict) -> dict:
    """Our stack through Nginx/TLS with the admin's credentials and our CA."""
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(var, None)  # requests would let these override the CA we pass (PITFALLS)
    os.environ.update(MLFLOW_TRACKING_USERNAME=env["MLFLOW_ADMIN_USERNAME"],
                      MLFLOW_TRACKING_PASSWORD=env["MLFLOW_ADMIN_PASSWORD"],
                      MLFLOW_TRACKING_SERVER_CERT_PATH=str(ROOT / "certs" / "ca.crt"))
    port = env.get("HTTPS_PORT", "443")
    return {"uri": f"https://{env['MLFLOW_PUBLIC_HOST']}" + ("" if port == "443" else f":{port}"),
            "db": db_uri(env, "mlflow")}


def db_uri(env: dict, db: str, user="mlflow", password_var="MLFLOW_DB_PASSWORD") -> str:
    return f"postgresql://{user}:{env[password_var]}@127.0.0.1:5432/{db}"  # direct, for counting


class PlainServer:
    """`mlflow server` with its defaults (uvicorn x4, no auth, no TLS) on the same PostgreSQL."""
    DB, PORT = "mlflow_plain", 5050

    def __init__(self, env: dict, workdir: Path):
        self.env, self.workdir, self.proc = env, workdir, None

    def __enter__(self):
        import subprocess
        from scripts.migrate import ensure_role_and_databases
        ensure_role_and_databases("127.0.0.1", "5432", "postgres", self.env["POSTGRES_PASSWORD"],
                                  self.env["MLFLOW_DB_PASSWORD"], databases=(self.DB,))
        uri = f"postgresql+psycopg2://mlflow@127.0.0.1:5432/{self.DB}"
        penv = {**os.environ, "PGPASSWORD": self.env["MLFLOW_DB_PASSWORD"]}
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            penv.pop(var, None)
        subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], env=penv, check=True,
                       capture_output=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "plain-server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                      str(self.PORT), "--backend-store-uri", uri, "--artifacts-destination",
                                      str(self.workdir / "artifacts")], env=penv, cwd=self.workdir,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        from scripts.native import http_ok, wait_until
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.PORT}/health") or self.proc.poll() is not None, 180)
        if not http_ok(f"http://127.0.0.1:{self.PORT}/health"):
            raise SystemExit(f"load: plain mlflow server did not start; see {self.workdir / 'plain-server.log'}")
        return {"uri": f"http://127.0.0.1:{self.PORT}", "db": db_uri(self.env, self.DB),
                "roots": {"mlflow": self.proc.pid}}

    def __exit__(self, *exc):
        import signal
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def insert_ceiling(env: dict, seconds: float = 10, connections: int = 4, rows_per_insert: int = 1000) -> float:
    """Rows/s of the same metric rows inserted straight into PostgreSQL (no MLflow, no HTTP)."""
    import psycopg2
    from psycopg2.extras import execute_values
    uri = db_uri(env, PlainServer.DB)
    with psycopg2.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS metrics_ceiling; CREATE TABLE metrics_ceiling (LIKE metrics INCLUDING ALL)")
    conn.close()
    counts = [0] * connections

    def insert(i):
        c = psycopg2.connect(uri)
        run_uuid, deadline, step = uuid.uuid4().hex, time.monotonic() + seconds, 0
        with c.cursor() as cur:
            while time.monotonic() < deadline:
                rows = [(f"m{k % 10}", float(k), int(time.time() * 1000), run_uuid, step + k // 10, False)
                        for k in range(rows_per_insert)]
                execute_values(cur, "INSERT INTO metrics_ceiling (key, value, timestamp, run_uuid, step, is_nan) "
                                    "VALUES %s", rows)
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
    with psycopg2.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE metrics_ceiling")
    conn.close()
    return round(rate, 1)


# --- output ----------------------------------------------------------------------------------
def print_report(r: dict):
    lat = r["latency_s"]
    loss = r.get("no_loss", {})
    print(f"{r['label'] or 'target':<8} {r['mode']:<10} {r['loggers']:>4} loggers  {r['requests_per_s']:>8.1f} req/s "
          f"{r['points_per_s']:>9.1f} points/s  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}  "
          f"errors {r['error_count']}  lost {loss.get('lost', '?')}  cpu {r['cpu_seconds']}", flush=True)


def chart(reports: list, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {}
    for r in reports:
        series.setdefault(f"{r['label']} {r['mode']}", []).append(r)
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


def sweep(args, uri: str, db: str, label: str, roots=None) -> list:
    """Every (loggers, mode) combination of the command line against one target."""
    reports = []
    for loggers in args.loggers:
        for mode in args.mode:
            r = run_load(uri, loggers, args.duration, mode, args.batch_size, args.metrics_per_step,
                         db_uri=db, roots=roots, label=label)
            print_report(r)
            reports.append(r)
    return reports


def cmd_load(args):
    from scripts.bootstrap import read_env
    target = stack_target(read_env())
    reports = sweep(args, target["uri"], target["db"], "stack")
    return finish(args, {"reports": reports, "idle_stack_memory_mb": stack_memory_mb()}, reports)


def cmd_compare(args):
    from scripts.bootstrap import read_env
    import platform
    import tempfile
    env = read_env()
    idle = stack_memory_mb()
    print(f"idle stack memory (PSS, MB): {idle} total {sum(idle.values())}", flush=True)
    with PlainServer(env, Path(tempfile.mkdtemp(prefix="mlflow-plain-"))) as plain:
        reports = sweep(args, plain["uri"], plain["db"], "plain", roots={**components(), **plain["roots"]})
    ceiling = insert_ceiling(env)
    print(f"raw PostgreSQL insert ceiling: {ceiling} rows/s", flush=True)
    target = stack_target(env)
    reports += sweep(args, target["uri"], target["db"], "stack")
    ratios = []
    for r in (x for x in reports if x["label"] == "stack"):
        base = next(x for x in reports if x["label"] == "plain" and x["mode"] == r["mode"] and x["loggers"] == r["loggers"])
        ratios.append({"mode": r["mode"], "loggers": r["loggers"],
                       "points_per_s_ratio": round(r["points_per_s"] / base["points_per_s"], 2) if base["points_per_s"] else None,
                       "p99_stack_s": r["latency_s"]["p99"], "p99_plain_s": base["latency_s"]["p99"],
                       "stack_fraction_of_ceiling": round(r["points_per_s"] / ceiling, 3),
                       "errors_stack": r["error_count"], "errors_plain": base["error_count"],
                       "lost_stack": r.get("no_loss", {}).get("lost"), "lost_plain": base.get("no_loss", {}).get("lost")})
        print(f"ratio stack/plain {r['mode']:<10} {r['loggers']:>4} loggers: {ratios[-1]['points_per_s_ratio']}x points/s, "
              f"{ratios[-1]['stack_fraction_of_ceiling']:.1%} of the insert ceiling", flush=True)
    summary = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                           "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
               "insert_ceiling_rows_per_s": ceiling, "idle_stack_memory_mb": idle, "ratios": ratios, "reports": reports}
    return finish(args, summary, reports)


def finish(args, summary: dict, reports: list) -> int:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    chart(reports, args.chart)
    print(f"wrote {args.json} and {args.chart}")
    bad = [r for r in reports if r["label"] == "stack" and (r["error_count"] or not r.get("no_loss", {}).get("ok", True))]
    return 1 if bad else 0


def add_commands(sub):
    def common(p):
        p.add_argument("--mode", nargs="+", choices=MODES, default=["per-metric"], help="logging mode(s)")
        p.add_argument("--loggers", nargs="+", type=int, default=[60], help="concurrent loggers (several: a sweep)")
        p.add_argument("--duration", type=float, default=30, help="seconds of load per measurement (bounded)")
        p.add_argument("--batch-size", type=int, default=100, help="metrics per log_batch request (max 1000)")
        p.add_argument("--metrics-per-step", type=int, default=10, help="metrics per step (per-step/async/batch)")
        p.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "load.json", help="JSON report")
        p.add_argument("--chart", type=Path, default=ROOT / "var" / "bench" / "load.png", help="PNG chart")

    load = sub.add_parser("load", help="N concurrent loggers against the stack; report throughput, latency, loss",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(load)
    load.set_defaults(func=cmd_load)
    cmp_ = sub.add_parser("benchmark", help="the same load against a plain `mlflow server` and our stack; ratios",
                          description="Runs the workload against (a) `mlflow server` with its defaults on the same "
                                      "PostgreSQL, (b) this stack, plus the raw PostgreSQL insert ceiling; prints "
                                      "ratios and writes JSON + chart.")
    common(cmp_)
    cmp_.set_defaults(func=cmd_compare)

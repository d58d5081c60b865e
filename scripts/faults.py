"""Fault injection under load: one fault at a time while 60 loggers log against the native stack.

For each scenario: a steady load (scripts/load.py) runs; after a warm-up the fault is injected;
a probe measures how long until an authenticated request through Nginx succeeds again; when the
load ends, the no-loss check compares points acknowledged to clients with points stored (points
stored twice because a client retried a request that had in fact committed are reported as
duplicates). Clients use the retry settings in CLIENT_RETRY_ENV, which the bundle recommends.
"""
import argparse
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from scripts import load, native

# What the bundle recommends to clients (README "Reliability"): ride out a restart of any
# component (<30 s) without surfacing an error, and give up on a dead server within minutes.
CLIENT_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",       # 1+2+4+8+16+32+60 s of backoff at most
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def _gunicorn_worker() -> int:
    master = subprocess.run(["pgrep", "-f", "-P", str(native.main_pid("mlflow")), "gunicorn"], capture_output=True, text=True)
    workers = subprocess.run(["pgrep", "-P", master.stdout.split()[0]], capture_output=True, text=True)
    return int(workers.stdout.split()[0])


def _pgbouncer_pause_resume():
    pid = native.main_pid("pgbouncer")
    os.kill(pid, signal.SIGHUP)   # RELOAD
    os.kill(pid, signal.SIGUSR1)  # PAUSE: waits for transactions, then holds clients
    time.sleep(3)                 # the fault itself: a 3 s pause
    os.kill(pid, signal.SIGUSR2)  # RESUME


# Restarts restart one service, as a restart policy or `compose restart` does (no one-shot steps).
SCENARIOS = {
    "postgres-restart": lambda: native.restart_one("postgres"),     # fast shutdown (SIGINT), start
    "pgbouncer-restart": lambda: native.restart_one("pgbouncer"),
    "pgbouncer-reload-pause-resume": _pgbouncer_pause_resume,
    "mlflow-worker-sigkill": lambda: os.kill(_gunicorn_worker(), signal.SIGKILL),
    "mlflow-restart": lambda: native.restart_one("mlflow"),
    "nginx-reload": lambda: os.kill(native.main_pid("nginx"), signal.SIGHUP),
    "nginx-restart": lambda: native.restart_one("nginx"),
}


class Probe(threading.Thread):
    """Authenticated request through Nginx every 0.2 s; records failures after the fault."""
    def __init__(self, uri, auth, ca):
        super().__init__(daemon=True)
        import requests
        self.session = requests.Session()
        self.session.trust_env = False
        self.url, self.auth, self.ca = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", auth, ca
        self.fault_at = self.last_failure = None
        self.failures = []  # seconds after the fault at which a probe failed
        self.stop = threading.Event()

    def ok(self) -> bool:
        try:
            return self.session.get(self.url, auth=self.auth, verify=self.ca, timeout=5).status_code == 200
        except Exception:
            return False

    def run(self):
        while not self.stop.wait(0.2):
            if not self.ok() and self.fault_at:
                self.last_failure = time.monotonic()
                self.failures.append(round(self.last_failure - self.fault_at, 1))

    def recovery_s(self) -> float:
        """Seconds from the fault to the first success after the last failure (0: never failed)."""
        return round(self.last_failure - self.fault_at + 0.2, 1) if self.last_failure else 0.0


def run_scenario(name: str, env: dict, loggers: int, duration: float, warmup: float, mode: str) -> dict:
    os.environ.update(CLIENT_RETRY_ENV)
    target = load.stack_target(env)
    probe = Probe(target["uri"], (env["MLFLOW_ADMIN_USERNAME"], env["MLFLOW_ADMIN_PASSWORD"]),
                  os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    result = {}
    runner = threading.Thread(target=lambda: result.update(load.run_load(
        target["uri"], loggers, duration, mode, db_uri=target["db"], label=name)))
    probe.start()
    runner.start()
    time.sleep(warmup)  # the load is running; inject at a known point of it
    probe.fault_at = time.monotonic()
    SCENARIOS[name]()
    runner.join(duration + 900)
    probe.stop.set()
    if not result:
        raise SystemExit(f"faults: {name}: the load did not finish")
    loss = result["no_loss"]
    return {"scenario": name, "client_errors": result["error_count"], "errors": result["errors"],
            "recovery_s": probe.recovery_s(), "points_acked": loss["acked"], "points_lost": loss["lost"],
            "duplicates": loss["extra_stored"], "points_per_s": result["points_per_s"],
            "p99_s": result["latency_s"]["p99"], "max_s": result["latency_s"]["max"], "probe_failures_at_s": probe.failures}


def cmd_faults(args):
    from scripts.bootstrap import read_env
    env = read_env()
    rows = []
    for name in args.scenario:
        print(f"faults: {name}: {args.loggers} loggers, fault after {args.warmup:.0f} s of {args.duration:.0f} s",
              flush=True)
        row = run_scenario(name, env, args.loggers, args.duration, args.warmup, args.mode)
        print(f"faults: {name}: client errors {row['client_errors']}, serving again after {row['recovery_s']} s, "
              f"points lost {row['points_lost']}, duplicates {row['duplicates']}", flush=True)
        rows.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                     "client_retry_env": CLIENT_RETRY_ENV, "rows": rows}, indent=2))
    print("\n| scenario | client errors | serving again after | points lost | duplicates |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['client_errors']} | {r['recovery_s']} s | {r['points_lost']} | {r['duplicates']} |")
    survived = [r for r in rows if r["points_lost"] == 0 and r["recovery_s"] <= 30]
    print(f"\n{len(survived)} of {len(rows)} scenarios survived (no acknowledged point lost, serving within 30 s)")
    return 0 if len(survived) == len(rows) else 1


def add_commands(sub):
    p = sub.add_parser("faults", help="inject faults one at a time under load; report errors, recovery, loss",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--loggers", type=int, default=60)
    p.add_argument("--duration", type=float, default=40, help="seconds of load per scenario")
    p.add_argument("--warmup", type=float, default=10, help="seconds of load before the fault")
    p.add_argument("--mode", choices=load.MODES, default="per-metric")
    p.add_argument("--json", type=Path, default=load.ROOT / "var" / "bench" / "faults.json")
    p.set_defaults(func=cmd_faults)

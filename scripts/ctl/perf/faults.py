"""Fault injection under load: one fault at a time while 60 loggers log against the stack in its engine.

For each scenario: a steady load (scripts/ctl/perf/load.py) runs through Nginx; after a warm-up the fault is
injected through the container engine; a probe measures how long until an authenticated request
through Nginx succeeds again; when the load ends, the no-loss check compares points acknowledged
to clients with points stored (points stored twice because a client retried a request that had in
fact committed are reported as duplicates). Clients use the retry settings in CLIENT_RETRY_ENV,
which the bundle recommends.

Faults, all through the engine (`docker compose` for the stack, or the engine's own CLI):
  SERVICE-restart        `compose stop SERVICE` (its stop_signal), then `compose start`
  pgbouncer-reload-pause-resume   `compose kill -s SIGHUP|SIGUSR1|SIGUSR2 pgbouncer` (3 s pause)
  mlflow-worker-sigkill  SIGKILL of one gunicorn worker, sent from inside the container (exec)
  nginx-reload           `compose kill -s SIGHUP nginx`
  SERVICE-crash          SIGKILL of the container's main process, as the kernel's OOM killer or a
                         segfault ends it: the engine sees the container die on its own, and the
                         restart policy (`unless-stopped`) must bring it back.
  SERVICE-engine-kill    `compose kill -s SIGKILL SERVICE`. The engine records this as a stop BY
                         THE USER, and a restart policy does not restart a container the user
                         stopped (podman 4.3 and Docker alike): the scenario reports that, waits
                         a bounded time for the engine, then brings the service back itself with
                         `compose up -d --wait SERVICE`. Only run when named (--scenario).
For crashes, the row also says whether the engine restarted the container and when it was running
(and healthy) again.
"""

import json
import os
import threading
import time
from pathlib import Path

from ctl import engine
from ctl import stackexec as sx
from ctl.errors import CommandError
from ctl.perf import load
from ctl.settings import ROOT, Settings

# What the bundle recommends to clients (README "Reliability"): ride out a restart of any
# component (<30 s) without surfacing an error, and give up on a dead server within minutes.
CLIENT_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",  # 1+2+4+8+16+32+60 s of backoff at most
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
ENGINE_RESTART_WAIT_S = 60  # how long a crash scenario waits for the restart policy before stepping in

# Runs in the mlflow container: SIGKILL one gunicorn worker (a child of the gunicorn master). Our
# image has no ps/pgrep: the process table is read from /proc.
KILL_WORKER_CODE = r"""
import os, signal
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        continue
    procs[int(pid)] = (ppid, cmd)
workers = sorted(p for p, (pp, cmd) in procs.items() if "gunicorn" in cmd and "gunicorn" in procs.get(pp, (0, ""))[1])
if not workers:
    raise SystemExit("no gunicorn worker found")
os.kill(workers[0], signal.SIGKILL)
print(workers[0])
"""


def compose(*args, timeout=300):
    return sx.run(*args, timeout=timeout)


def signal_service(service: str, sig: str):
    """`compose kill -s SIG SERVICE`: the signal goes to the container's main process."""
    compose("kill", "-s", sig, service)


def _pgbouncer_pause_resume():
    signal_service("pgbouncer", "SIGHUP")  # RELOAD
    signal_service("pgbouncer", "SIGUSR1")  # PAUSE: waits for transactions, then holds clients
    time.sleep(3)  # the fault itself: a 3 s pause
    signal_service("pgbouncer", "SIGUSR2")  # RESUME


def _kill_worker():
    sx.python(KILL_WORKER_CODE, timeout=60)


def service_state(service: str) -> dict:
    """The engine's view of the service's container: state, health, main pid, restart count."""
    eng = sx.eng()
    out = engine.run(
        [*eng.cli, "inspect", "--format", "{{json .State}}|{{.RestartCount}}", engine.container_name(service)],
        timeout=30,
        env=eng.env,
    )
    if out.returncode:
        return {}
    state, _, restarts = out.stdout.strip().rpartition("|")
    state = json.loads(state)
    health = state.get("Health") or state.get("Healthcheck") or {}
    return {
        "status": state.get("Status"),
        "pid": state.get("Pid"),
        "restarts": int(restarts or 0),
        "health": health.get("Status", ""),
        "started": state.get("StartedAt"),
    }


class Crash:
    """SIGKILL of SERVICE's main process; record whether and when the engine restarted it."""

    def __init__(self, service: str, via_engine: bool):
        self.service, self.via_engine = service, via_engine
        self.info: dict = {}

    def __call__(self):
        before = service_state(self.service)
        t0 = time.monotonic()
        if self.via_engine:
            signal_service(self.service, "SIGKILL")
        else:
            # The engine reports the main process's host pid; killing it from outside is what the
            # kernel's OOM killer does. The engine then sees the container exit by itself.
            os.kill(int(before["pid"]), 9)
        self.info = {
            "killed": "compose kill -s SIGKILL" if self.via_engine else f"kill -9 of main pid {before['pid']}",
            "restarted_by_engine": False,
        }
        deadline, seen_exit = t0 + ENGINE_RESTART_WAIT_S, False
        while time.monotonic() < deadline:
            now = service_state(self.service)
            seen_exit |= now.get("status") != "running" or now.get("pid") != before["pid"]
            if seen_exit and now.get("status") == "running" and now.get("pid") != before["pid"]:
                # The restart count grows only when the restart policy restarted it; a `start` or
                # `up` by someone else brings it back without counting.
                self.info.update(
                    restarted_by_engine=now["restarts"] > before["restarts"],
                    running_again_s=round(time.monotonic() - t0, 1),
                    restart_count=now["restarts"],
                )
                if not self.info["restarted_by_engine"]:
                    self.info["engine_state_after_wait"] = "started again by something else (restart count unchanged)"
                break
            time.sleep(0.2)
        else:
            now = service_state(self.service)
            self.info["engine_state_after_wait"] = (
                f"{now.get('status')} (exit not restarted within "
                f"{ENGINE_RESTART_WAIT_S} s; restart count {now.get('restarts')})"
            )
            # Never leave the stack broken: bring the service back ourselves.
            engine.start_ticker(sx.eng())
            compose("up", "--detach", "--wait", "--no-deps", "--no-recreate", self.service, timeout=600)
            self.info["brought_back_by_tool_s"] = round(time.monotonic() - t0, 1)
        while time.monotonic() < t0 + 300:  # bounded: healthy again (health checks run on their interval)
            if service_state(self.service).get("health") in ("healthy", ""):
                self.info["healthy_again_s"] = round(time.monotonic() - t0, 1)
                break
            time.sleep(0.5)


def _restart(service):
    return lambda: engine.restart(sx.eng(), service)


# Restarts restart one service (stop with its stop_signal, then start), as an operator does (no one-shot steps).
SCENARIOS = {
    "postgres-restart": _restart("postgres"),  # stop_signal SIGINT: fast shutdown, then start
    "pgbouncer-restart": _restart("pgbouncer"),
    "pgbouncer-reload-pause-resume": _pgbouncer_pause_resume,
    "mlflow-worker-sigkill": _kill_worker,
    "mlflow-restart": _restart("mlflow"),
    "nginx-reload": lambda: signal_service("nginx", "SIGHUP"),
    "nginx-restart": _restart("nginx"),
    "mlflow-crash": lambda: Crash("mlflow", via_engine=False),
    "postgres-crash": lambda: Crash("postgres", via_engine=False),
    "mlflow-engine-kill": lambda: Crash("mlflow", via_engine=True),
    "postgres-engine-kill": lambda: Crash("postgres", via_engine=True),
}
FACTORIES = {"mlflow-crash", "postgres-crash", "mlflow-engine-kill", "postgres-engine-kill"}
# The engine-kill scenarios show the engine's semantics (a kill through the engine is a user's stop)
# rather than the stack's: they run only when named.
DEFAULT_SCENARIOS = [name for name in SCENARIOS if not name.endswith("-engine-kill")]


class Probe(threading.Thread):
    """Authenticated request through Nginx every 0.2 s; records failures after the fault."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        self.session = settings.http(auth=settings.admin_auth)
        self.url = f"{settings.public_url}/api/2.0/mlflow/experiments/search?max_results=1"
        self.fault_at: float | None = None
        self.last_failure: float | None = None
        self.failures: list = []  # seconds after the fault at which a probe failed
        self.stop = threading.Event()

    def ok(self) -> bool:
        try:
            return self.session.get(self.url, timeout=5).status_code == 200
        except Exception:
            return False

    def run(self):
        while not self.stop.wait(0.2):
            if not self.ok() and self.fault_at:
                self.last_failure = time.monotonic()
                self.failures.append(round(self.last_failure - self.fault_at, 1))

    def recovery_s(self) -> float:
        """Seconds from the fault to the first success after the last failure (0: never failed)."""
        if self.last_failure is None or self.fault_at is None:
            return 0.0
        return round(self.last_failure - self.fault_at + 0.2, 1)


def run_scenario(
    name: str, settings: Settings, loggers: int, duration: float, warmup: float, mode: str, client: str = "mlflow"
) -> dict:
    target = load.stack_target(settings, CLIENT_RETRY_ENV)
    probe = Probe(settings)
    result = {}
    runner = threading.Thread(
        target=lambda: result.update(
            load.run_load(target["env"], loggers, duration, mode, db=target["db"], label=name, client=client)
        )
    )
    fault = SCENARIOS[name]() if name in FACTORIES else SCENARIOS[name]
    probe.start()
    runner.start()
    time.sleep(warmup)  # the load is running; inject at a known point of it
    probe.fault_at = time.monotonic()
    fault()
    runner.join(duration + 900)
    probe.stop.set()
    if not result:
        raise CommandError(f"{name}: the load did not finish")
    loss = result["no_loss"]
    return {
        "scenario": name,
        "client": client,
        "engine": sx.eng().kind,
        **getattr(fault, "info", {}),
        "client_errors": result["error_count"],
        "errors": result["errors"],
        "recovery_s": probe.recovery_s(),
        "points_acked": loss["acked"],
        "points_lost": loss["lost"],
        "duplicates": loss["extra_stored"],
        "points_per_s": result["points_per_s"],
        "p99_s": result["latency_s"]["p99"],
        "max_s": result["latency_s"]["max"],
        "probe_failures_at_s": probe.failures,
    }


def cmd_faults(args):
    settings = Settings.load()
    engine.start_ticker(sx.eng())  # podman: health states (healthy again?) need the health checks run
    rows = []
    for name in args.scenario:
        print(
            f"faults: {name}: {args.loggers} loggers, fault after {args.warmup:.0f} s of {args.duration:.0f} s",
            flush=True,
        )
        row = run_scenario(name, settings, args.loggers, args.duration, args.warmup, args.mode, args.client)
        crash = ""
        if "restarted_by_engine" in row:
            crash = (
                f", engine restarted it: running after {row['running_again_s']} s"
                if row["restarted_by_engine"]
                else f", NOT restarted by the engine ({row['engine_state_after_wait']})"
                + (
                    f"; brought back by this tool after {row['brought_back_by_tool_s']} s"
                    if "brought_back_by_tool_s" in row
                    else ""
                )
            ) + f", healthy after {row.get('healthy_again_s')} s"
        print(
            f"faults: {name}: client errors {row['client_errors']}, serving again after {row['recovery_s']} s, "
            f"points lost {row['points_lost']}, duplicates {row['duplicates']}{crash}",
            flush=True,
        )
        rows.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "engine": sx.eng().kind,
                "client_retry_env": CLIENT_RETRY_ENV,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(
        f"\nengine: {sx.eng().kind}\n| scenario | client errors | serving again after | points lost | duplicates "
        f"| restarted by the engine |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        restarted = {
            True: f"yes, running after {r.get('running_again_s')} s",
            False: f"no: {r.get('engine_state_after_wait', '')}",
        }.get(r.get("restarted_by_engine"), "")
        print(
            f"| {r['scenario']} | {r['client_errors']} | {r['recovery_s']} s | {r['points_lost']} | {r['duplicates']} "
            f"| {restarted} |"
        )
    # A crash the restart policy did not recover from is not survived, whatever the tool did after.
    survived = [
        r for r in rows if r["points_lost"] == 0 and r["recovery_s"] <= 30 and r.get("restarted_by_engine", True)
    ]
    print(
        f"\n{len(survived)} of {len(rows)} scenarios survived (no acknowledged point lost, serving within 30 s, "
        f"crashes restarted by the engine)"
    )
    return 0 if len(survived) == len(rows) else 1


def register(sub):
    p = sub.add_parser(
        "faults", help="inject faults one at a time under load; report errors, recovery, loss", description=__doc__
    )
    p.add_argument(
        "--scenario",
        nargs="+",
        choices=list(SCENARIOS),
        default=DEFAULT_SCENARIOS,
        help="scenarios to run, one after the other (default: all but the *-engine-kill ones)",
    )
    p.add_argument("--loggers", type=int, default=60)
    p.add_argument("--duration", type=float, default=40, help="seconds of load per scenario")
    p.add_argument("--warmup", type=float, default=10, help="seconds of load before the fault")
    p.add_argument("--mode", choices=load.MODES, default="per-metric")
    p.add_argument(
        "--client",
        choices=load.CLIENTS,
        default="mlflow",
        help="mlflow (retries per CLIENT_RETRY_ENV) or raw HTTP (no retries: every error counted)",
    )
    p.add_argument("--json", type=Path, default=ROOT / "var" / "bench" / "faults.json")
    p.set_defaults(func=cmd_faults)

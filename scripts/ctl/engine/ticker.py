"""The health-check ticker (podman only): podman runs health checks from systemd timers, and there is
no systemd here. It runs `podman healthcheck run` on each container's interval (every
`start_interval` while the container is starting), and exits once the project has had no running
container for a minute."""

import datetime
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ctl.engine.core import PROJECT, VAR, Engine, alive, run, start_daemon


def ticker_pid() -> Path:
    """One ticker per compose project: it checks only its own project's containers."""
    return VAR / "run" / f"healthcheck-ticker-{PROJECT}.pid"


def start_ticker(engine: Engine):
    if engine.kind == "podman" and not alive(ticker_pid()):
        start_daemon([sys.executable, "-m", "ctl.engine", "tick"], ticker_pid(), "healthcheck-ticker.log")


def duration_s(ns) -> float:
    return (ns or 0) / 1e9


def in_start_period(info: dict, check: dict) -> bool:
    started = datetime.datetime.fromisoformat(info.get("State", {}).get("StartedAt") or "1970-01-01T00:00:00Z")
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    return elapsed < duration_s(check.get("StartPeriod"))


def tick(idle_exit_s: float = 60, max_hours: float = 24 * 30):
    """Run each project container's health check when due; exit when the project stays empty."""
    due: dict = {}
    last_seen = time.monotonic()
    stop = time.monotonic() + max_hours * 3600
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while time.monotonic() < stop:
        try:
            out = run(
                ["podman", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "{{.ID}}"],
                timeout=30,
            )
            ids = out.stdout.split()
            infos = json.loads(run(["podman", "inspect", *ids], timeout=30).stdout or "[]") if ids else []
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            # podman answers slowly on a loaded machine: a missed round is retried, never the end of
            # the ticker (the containers would stay "starting" for good).
            print(f"podman did not answer ({type(exc).__name__}): retrying", flush=True)
            time.sleep(1)
            continue
        now = time.monotonic()
        if out.returncode != 0:
            print(f"podman ps failed: {out.stderr.strip()[:200]}", flush=True)
        elif ids:
            last_seen = now
        elif now - last_seen > idle_exit_s:
            print("no running container for a minute: ticker exits", flush=True)
            return
        if ids:
            for info in infos:
                check = info.get("Config", {}).get("Healthcheck") or {}
                if not check.get("Test") or check["Test"][0] == "NONE":
                    continue
                interval = duration_s(check.get("Interval")) or 30
                if in_start_period(info, check):  # as Docker: start_interval only in the start period
                    interval = min(interval, duration_s(check.get("StartInterval")) or 2)
                cid = info["Id"]
                if now >= due.get(cid, 0):
                    due[cid] = now + interval
                    try:
                        run(["podman", "healthcheck", "run", cid], timeout=duration_s(check.get("Timeout")) + 30)
                    except subprocess.TimeoutExpired:
                        print(f"health check of {info.get('Name')} hung", flush=True)
            due = {k: v for k, v in due.items() if k in {i["Id"] for i in infos}}
        time.sleep(1)

"""Measurement of a target while a load runs: CPU seconds and peak memory per component (its
container, from the engine's `stats`), the load generator's own CPU, points stored per run
(psql inside the postgres container) and latency percentiles."""

import math
import threading

from ctl import engine
from ctl import stackexec as sx
from ctl.settings import long_running_services


def own_cpu() -> float:
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
        self.containers, self.interval, self.stop = containers, interval, threading.Event()
        self.peak: dict = {}

    def run(self):
        while not self.stop.wait(self.interval):
            mem = {k: v[1] for k, v in container_stats(self.containers, cpu=False).items()}
            if sum(mem.values()) > sum(self.peak.values()):
                self.peak = mem


def stored_points(run_ids, db: str, tcp: dict = None) -> dict:
    """Points stored per run, counted by psql inside the postgres container (over TCP to TCP's
    server if given: stackexec.pg_argv)."""
    rows = sx.psql(
        "SELECT run_uuid, count(*) FROM metrics WHERE run_uuid = ANY(string_to_array(:'ids', ',')) GROUP BY run_uuid",
        db,
        {"ids": ",".join(run_ids)},
        tcp=tcp,
        timeout=300,
    )
    found = {rid: int(n) for rid, n in rows}
    return {rid: found.get(rid, 0) for rid in run_ids}


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)]


def stack_memory_mb(containers: dict = None) -> dict:
    return {k: round(v[1] / 2**20) for k, v in container_stats(containers or components(), cpu=False).items()}

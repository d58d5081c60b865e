"""Parse postgres/postgresql.conf (the one tuning source) into RDS parameter-group values."""

from __future__ import annotations

import re
from pathlib import Path

from infra import REPO_ROOT

POSTGRESQL_CONF = REPO_ROOT / "postgres" / "postgresql.conf"

# Keys we carry to RDS, and the unit RDS expects for each (None: passed through as is).
RDS_TUNING_UNITS: dict[str, str | None] = {
    "shared_buffers": "8kB",
    "effective_cache_size": "8kB",
    "wal_buffers": "8kB",
    "work_mem": "kB",
    "maintenance_work_mem": "kB",
    "max_wal_size": "MB",
    "min_wal_size": "MB",
    "checkpoint_completion_target": None,
    "max_connections": None,
    "password_encryption": None,
    "log_min_duration_statement": None,
}
# Settings that only make sense on a self-managed server; RDS owns them.
RDS_SKIPPED = {
    "listen_addresses",
    "port",
    "hba_file",
    "log_destination",
    "log_line_prefix",
    "log_connections",
    "data_directory",
    "unix_socket_directories",
}

# Parameters whose change needs a reboot on RDS ("pending-reboot"); the rest apply immediately.
STATIC_PARAMETERS = {"shared_buffers", "wal_buffers", "max_connections"}

# postgresql.conf is sized for a VM of this much memory (its header says so); the memory-dependent
# values below scale with the RDS instance class's memory instead.
CONF_SIZED_FOR_GIB = 2
MEMORY_SCALED = {"shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem"}
# Memory of the RDS instance classes we accept (GiB). Another class: add it here.
INSTANCE_CLASS_MEMORY_GIB = {
    **{
        f"db.{family}.{size}": gib
        for family in ("t3", "t4g")
        for size, gib in (("micro", 1), ("small", 2), ("medium", 4), ("large", 8), ("xlarge", 16), ("2xlarge", 32))
    },
    **{
        f"db.{family}.{size}": gib
        for family in ("m5", "m6g", "m6i", "m7g", "m7i")
        for size, gib in (("large", 8), ("xlarge", 16), ("2xlarge", 32), ("4xlarge", 64))
    },
    **{
        f"db.{family}.{size}": gib
        for family in ("r5", "r6g", "r6i", "r7g", "r7i")
        for size, gib in (("large", 16), ("xlarge", 32), ("2xlarge", 64), ("4xlarge", 128))
    },
}
# RDS's own default max_connections is DBInstanceClassMemory / 9531392 bytes: our ceiling.
RDS_BYTES_PER_CONNECTION = 9531392


def instance_memory_gib(instance_class: str) -> int:
    if instance_class not in INSTANCE_CLASS_MEMORY_GIB:
        raise ValueError(
            f"unknown RDS instance class {instance_class!r}: add its memory to "
            "INSTANCE_CLASS_MEMORY_GIB in infra/pgconf.py"
        )
    return INSTANCE_CLASS_MEMORY_GIB[instance_class]


def max_connections_ceiling(instance_class: str) -> int:
    """The most connections the class's memory supports (RDS's default formula)."""
    return instance_memory_gib(instance_class) * 1024**3 // RDS_BYTES_PER_CONNECTION


_UNIT_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
_LINE = re.compile(r"^\s*([A-Za-z_.]+)\s*=?\s*('(?:[^']|'')*'|[^\s#]+)")


def parse_postgresql_conf(text: str) -> dict[str, str]:
    """Return {key: raw value} for `key = value  # comment` lines (quotes stripped)."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"cannot parse postgresql.conf line: {line!r}")
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = value[1:-1].replace("''", "'")
        settings[key] = value
    return settings


def to_kb(value: str) -> int:
    """Convert a PostgreSQL memory size ('256MB', '2GB', '64kB') to kilobytes."""
    match = re.fullmatch(r"(\d+)\s*(kB|MB|GB|TB)?", value)
    if not match:
        raise ValueError(f"not a PostgreSQL memory size: {value!r}")
    return int(match.group(1)) * _UNIT_KB[match.group(2) or "kB"]


def convert(key: str, value: str) -> str:
    """Express a tuning value in the unit the RDS parameter expects."""
    unit = RDS_TUNING_UNITS[key]
    if unit == "8kB":
        return str(to_kb(value) // 8)
    if unit == "kB":
        return str(to_kb(value))
    if unit == "MB":
        return str(to_kb(value) // 1024)
    return value


def rds_settings(instance_class: str, min_connections: int = 0, conf_path: Path = POSTGRESQL_CONF) -> dict[str, str]:
    """postgresql.conf's values for an RDS instance class: memory-dependent values scaled to the
    class's memory; max_connections is the most the class supports. Every pending-reboot value
    (STATIC_PARAMETERS) thus depends on the class only: RDS applies those only at a reboot, which
    it never does for them by itself, while a class change reboots the instance and applies them.
    min_connections (what the clients need) must fit."""
    settings = parse_postgresql_conf(conf_path.read_text())
    unknown = set(settings) - set(RDS_TUNING_UNITS) - RDS_SKIPPED
    if unknown:
        # A new setting must be classified on purpose rather than silently dropped.
        raise ValueError(f"postgresql.conf keys not classified for RDS: {sorted(unknown)}")
    settings = {k: v for k, v in settings.items() if k in RDS_TUNING_UNITS}
    gib = instance_memory_gib(instance_class)
    for key in MEMORY_SCALED & set(settings):
        settings[key] = f"{to_kb(settings[key]) * gib // CONF_SIZED_FOR_GIB}kB"
    ceiling = max_connections_ceiling(instance_class)
    connections = max(int(settings["max_connections"]), min_connections)
    if connections > ceiling:
        raise ValueError(
            f"{connections} connections needed, but {instance_class} supports at most "
            f"{ceiling}: choose a larger dbInstanceClass or fewer ecsMaxTasks"
        )
    settings["max_connections"] = str(ceiling)
    return settings


def rds_parameters(
    instance_class: str, min_connections: int = 0, conf_path: Path = POSTGRESQL_CONF
) -> list[dict[str, str]]:
    """Parameter-group entries built from postgresql.conf for a class, plus rds.force_ssl=1."""
    params = [
        {
            "name": key,
            "value": convert(key, value),
            "apply_method": "pending-reboot" if key in STATIC_PARAMETERS else "immediate",
        }
        for key, value in rds_settings(instance_class, min_connections, conf_path).items()
    ]
    params.append({"name": "rds.force_ssl", "value": "1", "apply_method": "immediate"})
    return params

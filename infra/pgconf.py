"""Parse postgres/postgresql.conf (the one tuning source) into RDS parameter-group values."""
from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
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
RDS_SKIPPED = {"listen_addresses", "port", "hba_file", "log_destination", "log_line_prefix",
               "log_connections", "data_directory", "unix_socket_directories"}

# Parameters whose change needs a reboot on RDS ("pending-reboot"); the rest apply immediately.
STATIC_PARAMETERS = {"shared_buffers", "wal_buffers", "max_connections"}

_UNIT_KB = {"kB": 1, "MB": 1024, "GB": 1024 ** 2, "TB": 1024 ** 3}
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


def rds_parameters(conf_path: Path = POSTGRESQL_CONF) -> list[dict[str, str]]:
    """Parameter-group entries built from postgresql.conf, plus rds.force_ssl=1."""
    settings = parse_postgresql_conf(conf_path.read_text())
    unknown = set(settings) - set(RDS_TUNING_UNITS) - RDS_SKIPPED
    if unknown:
        # A new setting must be classified on purpose rather than silently dropped.
        raise ValueError(f"postgresql.conf keys not classified for RDS: {sorted(unknown)}")
    params = [
        {"name": key, "value": convert(key, value),
         "apply_method": "pending-reboot" if key in STATIC_PARAMETERS else "immediate"}
        for key, value in settings.items() if key in RDS_TUNING_UNITS
    ]
    params.append({"name": "rds.force_ssl", "value": "1", "apply_method": "immediate"})
    return params

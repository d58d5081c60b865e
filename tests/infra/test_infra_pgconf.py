"""RDS parameter group from postgres/postgresql.conf (pure parsing; no mocks involved)."""

import pytest

from infra.pgconf import (
    CONF_SIZED_FOR_GIB,
    MEMORY_SCALED,
    POSTGRESQL_CONF,
    RDS_SKIPPED,
    RDS_TUNING_UNITS,
    instance_memory_gib,
    max_connections_ceiling,
    parse_postgresql_conf,
    rds_parameters,
    to_kb,
)

CLASS = "db.t4g.small"  # 2 GiB: the size postgresql.conf is written for


def test_parser_handles_quotes_and_comments():
    text = "a = 1  # c\n# x = 2\n\nb = 'it''s'   # q\nc=256MB\n"
    assert parse_postgresql_conf(text) == {"a": "1", "b": "it's", "c": "256MB"}


def test_every_tuning_key_is_carried_with_rds_units():
    conf = parse_postgresql_conf(POSTGRESQL_CONF.read_text())
    params = {p["name"]: p["value"] for p in rds_parameters(CLASS)}
    assert instance_memory_gib(CLASS) == CONF_SIZED_FOR_GIB
    for key in RDS_TUNING_UNITS:
        assert key in conf, f"{key} missing from postgresql.conf"
    # Units computed from the parsed file, not copied by hand.
    for key in ("shared_buffers", "effective_cache_size", "wal_buffers"):
        assert int(params[key]) == to_kb(conf[key]) // 8  # 8 kB pages
    for key in ("work_mem", "maintenance_work_mem"):
        assert int(params[key]) == to_kb(conf[key])
    for key in ("max_wal_size", "min_wal_size"):
        assert int(params[key]) == to_kb(conf[key]) // 1024
    for key in ("password_encryption", "checkpoint_completion_target", "log_min_duration_statement"):
        assert params[key] == conf[key]
    assert int(params["max_connections"]) >= int(conf["max_connections"])  # the class's ceiling
    assert params["rds.force_ssl"] == "1"


def test_unit_conversion_examples():
    assert to_kb("256MB") // 8 == 32768
    assert to_kb("2GB") // 1024 == 2048
    assert to_kb("64kB") == 64 and to_kb("64") == 64


def test_self_managed_settings_are_skipped():
    names = {p["name"] for p in rds_parameters(CLASS)}
    assert not names & RDS_SKIPPED


def test_unclassified_key_is_an_error(tmp_path):
    conf = tmp_path / "postgresql.conf"
    conf.write_text("shared_buffers = 1GB\nsome_new_setting = on\n")
    try:
        rds_parameters(CLASS, conf_path=conf)
    except ValueError as exc:
        assert "some_new_setting" in str(exc)
    else:
        raise AssertionError("an unclassified key must not be dropped silently")


def test_memory_values_follow_the_instance_class():
    """A 4 GiB class gets twice the memory settings of the 2 GiB file; a 1 GiB class half."""

    def values(cls):
        return {p["name"]: int(p["value"]) for p in rds_parameters(cls) if p["name"] in MEMORY_SCALED}

    base, small, big = values(CLASS), values("db.t4g.micro"), values("db.t4g.medium")
    assert base and all(big[k] == 2 * base[k] and small[k] * 2 == base[k] for k in base)


def test_max_connections_is_what_the_class_supports_and_covers_the_clients():
    params = lambda cls, need: {p["name"]: p["value"] for p in rds_parameters(cls, need)}  # noqa: E731
    conf = int(parse_postgresql_conf(POSTGRESQL_CONF.read_text())["max_connections"])
    assert int(params(CLASS, 0)["max_connections"]) == max_connections_ceiling(CLASS) >= conf
    assert params("db.t4g.medium", 300)["max_connections"] == params("db.t4g.medium", 0)["max_connections"]
    with pytest.raises(ValueError, match="larger dbInstanceClass"):
        rds_parameters("db.t4g.micro", max_connections_ceiling("db.t4g.micro") + 1)


def test_unknown_instance_class_is_an_error():
    with pytest.raises(ValueError, match="INSTANCE_CLASS_MEMORY_GIB"):
        rds_parameters("db.x9.huge")

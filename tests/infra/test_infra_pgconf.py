"""RDS parameter group from postgres/postgresql.conf (pure parsing; no mocks involved)."""
from infra.pgconf import (POSTGRESQL_CONF, RDS_SKIPPED, RDS_TUNING_UNITS, parse_postgresql_conf,
                          rds_parameters, to_kb)


def test_parser_handles_quotes_and_comments():
    text = "a = 1  # c\n# x = 2\n\nb = 'it''s'   # q\nc=256MB\n"
    assert parse_postgresql_conf(text) == {"a": "1", "b": "it's", "c": "256MB"}


def test_every_tuning_key_is_carried_with_rds_units():
    conf = parse_postgresql_conf(POSTGRESQL_CONF.read_text())
    params = {p["name"]: p["value"] for p in rds_parameters()}
    for key in RDS_TUNING_UNITS:
        assert key in conf, f"{key} missing from postgresql.conf"
    # Units computed from the parsed file, not copied by hand.
    for key in ("shared_buffers", "effective_cache_size", "wal_buffers"):
        assert int(params[key]) == to_kb(conf[key]) // 8  # 8 kB pages
    for key in ("work_mem", "maintenance_work_mem"):
        assert int(params[key]) == to_kb(conf[key])
    for key in ("max_wal_size", "min_wal_size"):
        assert int(params[key]) == to_kb(conf[key]) // 1024
    for key in ("max_connections", "password_encryption", "checkpoint_completion_target",
                "log_min_duration_statement"):
        assert params[key] == conf[key]
    assert params["rds.force_ssl"] == "1"


def test_unit_conversion_examples():
    assert to_kb("256MB") // 8 == 32768
    assert to_kb("2GB") // 1024 == 2048
    assert to_kb("64kB") == 64 and to_kb("64") == 64


def test_self_managed_settings_are_skipped():
    names = {p["name"] for p in rds_parameters()}
    assert not names & RDS_SKIPPED


def test_unclassified_key_is_an_error(tmp_path):
    conf = tmp_path / "postgresql.conf"
    conf.write_text("shared_buffers = 1GB\nsome_new_setting = on\n")
    try:
        rds_parameters(conf)
    except ValueError as exc:
        assert "some_new_setting" in str(exc)
    else:
        raise AssertionError("an unclassified key must not be dropped silently")

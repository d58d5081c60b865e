"""Fails loudly when an MLflow upgrade changes what mlflow_bundle_store stands in for.

BundleSqlAlchemyStore re-implements MLflow's metric write path (log_batch, _log_metrics_once and
the latest-metric rules of _update_latest_metrics_if_necessary). If any of these methods or the
two tables change, the re-implementation may silently store something else. Then: read the new
MLflow code, port the change to scripts/store/mlflow_bundle_store/tracking.py, run
tests/store/test_differential.py, and only then update the pins below.
"""

import hashlib
import inspect

import mlflow
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

MLFLOW_VERSION = "3.17.2"
# sha256 (first 16 hex digits) of inspect.getsource(SqlAlchemyStore.<method>)
METHOD_SOURCE = {
    "log_batch": "5616623d30fd5426",
    "log_metric": "6879e33b0b4706d9",
    "_log_metrics": "0affe82445dca798",
    "_log_metrics_once": "f1c94a7256af5033",
    "_update_latest_metrics_if_necessary": "9a68eb580f007f5e",
    "sanitize_metric_value": "6552ab68700c2dcd",
}
COLUMNS = [
    ("key", "VARCHAR(250)"),
    ("value", "FLOAT"),
    ("timestamp", "BIGINT"),
    ("step", "BIGINT"),
    ("is_nan", "BOOLEAN"),
    ("run_uuid", "VARCHAR(32)"),
]


def test_mlflow_version_is_the_pinned_one():
    assert mlflow.__version__ == MLFLOW_VERSION, (
        f"MLflow {mlflow.__version__} != {MLFLOW_VERSION}: re-check mlflow_bundle_store against it"
    )


def test_replaced_methods_unchanged():
    changed = {
        name: digest
        for name, expected in METHOD_SOURCE.items()
        if (digest := hashlib.sha256(inspect.getsource(getattr(SqlAlchemyStore, name)).encode()).hexdigest()[:16])
        != expected
    }
    assert not changed, (
        f"MLflow changed SqlAlchemyStore methods that mlflow_bundle_store replaces: {changed}. "
        "Port the change, run the differential test, then update METHOD_SOURCE."
    )


def test_metric_tables_unchanged():
    for table, pk in [
        (SqlMetric.__table__, ["key", "timestamp", "step", "run_uuid", "value", "is_nan"]),
        (SqlLatestMetric.__table__, ["key", "run_uuid"]),
    ]:
        assert [(c.name, str(c.type)) for c in table.columns] == COLUMNS, table.name
        # The ON CONFLICT targets rely on exactly these primary keys.
        assert [c.name for c in table.primary_key] == pk, table.name

"""MLflow's SqlAlchemyStore with a set-based metric write path, for PostgreSQL only.

MLflow 3.17.2 writes a batch's latest_metrics one ORM row at a time: a 100-key log-batch costs 111
round trips on the tracking database (a pre-ping, BEGIN, the run SELECT, the INSERT, one UPDATE
per key, COMMIT; tests/store/test_statement_count.py). Here any log-metric or log-batch costs 3:
BEGIN, WRITE_METRICS (the run check, the points and the latest values in one statement) and
COMMIT. Everything else (params, tags, model metrics, reads) is MLflow's own code.
tests/store/test_differential.py proves the rows equal to the stock store's; test_pin.py fails
when an MLflow upgrade changes the methods this module stands in for.
"""

from types import SimpleNamespace

from mlflow.entities import LifecycleStage, Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST
from mlflow.store.db.db_types import POSTGRES
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_metric,
    _validate_param_keys_unique,
    _validate_run_id,
)
from sqlalchemy import text

from mlflow_bundle_store.pool import without_pre_ping


class BundleSqlAlchemyStore(SqlAlchemyStore):
    def __init__(self, db_uri, default_artifact_root, read_db_uri=None):
        super().__init__(db_uri, default_artifact_root, read_db_uri=read_db_uri)
        if self.db_type != POSTGRES:
            raise MlflowException.invalid_parameter_value(
                f"{type(self).__name__} needs PostgreSQL (INSERT ... ON CONFLICT), got {self.db_type}"
            )
        without_pre_ping(self.engine, self.read_engine)

    def log_batch(self, run_id, metrics, params, tags):
        if not metrics:
            return super().log_batch(run_id, metrics, params, tags)  # no metric: nothing replaced
        _validate_run_id(run_id)
        metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        # Same steps and order as MLflow, minus its outer session: that session held a pooled
        # connection idle while each step opened another, so requests in flight beyond the pool
        # deadlocked. Each step below checks the run itself (params first, else the metrics).
        try:
            self._log_params(run_id, params)
            self._log_metrics(run_id, metrics)
            if any(m.model_id is not None for m in metrics):
                with self.ManagedSessionMaker() as session:
                    experiment_id = self._get_run(session, run_id).experiment_id
                self._log_model_metrics(run_id, metrics, experiment_id=experiment_id)
            self._set_tags(run_id, tags)
        except MlflowException:
            raise
        except Exception as e:
            raise MlflowException(e, INTERNAL_ERROR) from e

    def _log_metrics_once(self, run_id, metrics: list[Metric]):
        rows = {}
        is_single_metric = len(metrics) == 1
        for idx, metric in enumerate(metrics):
            _validate_metric(
                metric.key,
                metric.value,
                metric.timestamp,
                metric.step,
                path="" if is_single_metric else f"metrics[{idx}]",
            )
            is_nan, value = self.sanitize_metric_value(metric.value)
            # metrics' primary key minus run_uuid; the first of equal points is kept, as MLflow's
            # IntegrityError recovery keeps it (NaN is stored as value 0 with is_nan true).
            rows.setdefault(
                (metric.key, metric.timestamp, metric.step, value, is_nan),
                {
                    "run_uuid": run_id,
                    "key": metric.key,
                    "value": value,
                    "timestamp": metric.timestamp,
                    "step": metric.step,
                    "is_nan": is_nan,
                },
            )
        latest = {}
        for row in rows.values():
            best = latest.get(row["key"])
            # MLflow's order on the stored (sanitized) values: strictly greater wins, so the
            # first of equal (step, timestamp, value) points stays.
            if best is None or _order(row) > _order(best):
                latest[row["key"]] = row

        # Sorted: concurrent batches take index and row locks in one order (no deadlock).
        points = [rows[k] for k in sorted(rows)]
        wins = [latest[k] for k in sorted(latest)]
        with self.ManagedSessionMaker(read_only=False) as session:
            stage = session.execute(
                WRITE_METRICS,
                {
                    "run_id": run_id,
                    "active": LifecycleStage.ACTIVE,
                    **{name: [r[column] for r in points] for name, column in _COLUMNS.items()},
                    **{f"latest_{name}": [r[column] for r in wins] for name, column in _COLUMNS.items()},
                },
            ).scalar()
            if stage is None:  # MLflow's _get_run: 404 RESOURCE_DOES_NOT_EXIST
                raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
            # A deleted run: nothing was written; MLflow's own 400 INVALID_PARAMETER_VALUE.
            self._check_run_is_active(SimpleNamespace(run_uuid=run_id, lifecycle_stage=stage))


_COLUMNS = {"keys": "key", "values": "value", "timestamps": "timestamp", "steps": "step", "is_nans": "is_nan"}
_UNNEST = (
    "unnest(CAST(:{p}keys AS text[]), CAST(:{p}values AS float8[]), CAST(:{p}timestamps AS bigint[]), "
    "CAST(:{p}steps AS bigint[]), CAST(:{p}is_nans AS boolean[])) WITH ORDINALITY"
)
# One fixed statement text whatever the number of points (arrays, not a VALUES list): SQLAlchemy's
# compiled cache holds it, so no request compiles SQL. It checks the run, inserts the points
# (a point already stored stays as it is, as in MLflow) and upserts the latest values in one
# round trip. A latest_metrics row is locked only when the new point wins against the value read
# (strictly greater (step, timestamp, value), MLflow's order): batches that change nothing on a
# shared run do not queue on its rows. The ON CONFLICT ... WHERE re-checks against a row that a
# concurrent request committed meanwhile. Writes happen only when the run is active; the
# statement returns its lifecycle_stage (NULL: no such run).
WRITE_METRICS = text(
    f"""
WITH run AS (SELECT lifecycle_stage FROM runs WHERE run_uuid = :run_id),
points AS (
    INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT p.key, p.value, p.timestamp, p.step, p.is_nan, :run_id
    FROM {_UNNEST.format(p="")} AS p(key, value, timestamp, step, is_nan, n)
    WHERE (SELECT lifecycle_stage FROM run) = :active
    ORDER BY p.n
    ON CONFLICT DO NOTHING
),
latest AS (
    INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
    SELECT l.key, l.value, l.timestamp, l.step, l.is_nan, :run_id
    FROM {_UNNEST.format(p="latest_")} AS l(key, value, timestamp, step, is_nan, n)
    LEFT JOIN latest_metrics AS cur ON cur.run_uuid = :run_id AND cur.key = l.key
    WHERE (SELECT lifecycle_stage FROM run) = :active
        AND (cur.key IS NULL OR (l.step, l.timestamp, l.value) > (cur.step, cur.timestamp, cur.value))
    ORDER BY l.n
    ON CONFLICT (key, run_uuid) DO UPDATE
    SET value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan
    WHERE (excluded.step, excluded.timestamp, excluded.value)
        > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)
)
SELECT (SELECT lifecycle_stage FROM run)
"""
)


def _order(row):
    return (row["step"], row["timestamp"], row["value"])

"""MLflow's SqlAlchemyStore with a set-based metric write path, for PostgreSQL only.

MLflow 3.17.2 writes a batch's latest_metrics one ORM row at a time: a 100-key log-batch costs
about 97 statements. Here a batch costs one statement: a multi-row INSERT into `metrics` (a
data-modifying CTE) and an `INSERT ... ON CONFLICT DO UPDATE ... WHERE` into `latest_metrics`,
in the same transaction as the run check. Everything else (params, tags, model metrics, reads) is MLflow's own code.
tests/store/test_differential.py proves the rows equal to the stock store's; test_pin.py fails
when an MLflow upgrade changes the methods this module stands in for.
"""

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.store.db.db_types import POSTGRES
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_metric,
    _validate_param_keys_unique,
    _validate_run_id,
)
from sqlalchemy import tuple_
from sqlalchemy.dialects.postgresql import insert


class BundleSqlAlchemyStore(SqlAlchemyStore):
    def __init__(self, db_uri, default_artifact_root, read_db_uri=None):
        super().__init__(db_uri, default_artifact_root, read_db_uri=read_db_uri)
        if self.db_type != POSTGRES:
            raise MlflowException.invalid_parameter_value(
                f"{type(self).__name__} needs PostgreSQL (INSERT ... ON CONFLICT), got {self.db_type}"
            )

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

        with self.ManagedSessionMaker(read_only=False) as session:
            run = self._get_run(run_uuid=run_id, session=session)
            self._check_run_is_active(run)
            if not rows:
                return  # as MLflow: an empty batch checks the run and writes nothing
            # One statement: the points, as a data-modifying CTE, then the latest values. Rows
            # sorted: concurrent batches take index and row locks in one order (no deadlock).
            points = (
                insert(SqlMetric.__table__)
                .values([rows[k] for k in sorted(rows)])
                .on_conflict_do_nothing()  # a point already stored stays as it is, as in MLflow
                .cte("new_points")
            )
            new = insert(SqlLatestMetric.__table__).values([latest[k] for k in sorted(latest)])
            old = SqlLatestMetric.__table__.c
            session.execute(
                new.on_conflict_do_update(
                    index_elements=[old.key, old.run_uuid],
                    set_={c: new.excluded[c] for c in ("value", "timestamp", "step", "is_nan")},
                    where=tuple_(new.excluded.step, new.excluded.timestamp, new.excluded.value)
                    > tuple_(old.step, old.timestamp, old.value),
                ).add_cte(points)
            )


def _order(row):
    return (row["step"], row["timestamp"], row["value"])

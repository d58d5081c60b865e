"""The same random workload through MLflow's SqlAlchemyStore and through BundleSqlAlchemyStore,
each on its own scratch PostgreSQL database: every row of metrics and latest_metrics (and of
params and tags) must be equal, and every call must fail or succeed alike."""

import math
import random
import tempfile

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mlflow_bundle_store.tracking import BundleSqlAlchemyStore

MAX_DOUBLE = 1.7976931348623157e308  # what MLflow stores for +inf (and -MAX_DOUBLE for -inf)
KEYS = [f"k{i:03d}" for i in range(150)]
RUNS = 3


def _value(rng: random.Random) -> float:
    choice = rng.randrange(12)
    return [
        float("nan"),  # a new NaN object: MLflow's in-batch dedup (Metric equality) misses it
        math.nan,  # one shared NaN object: MLflow's dedup catches it
        math.inf,
        -math.inf,
        MAX_DOUBLE,
        -MAX_DOUBLE,  # the same stored row as +/-inf, with is_nan false
        0.0,
        -0.0,  # equal for PostgreSQL and Python; NaN is stored as 0 too
        1.0,
        -3.0,
        rng.choice([0.5, 2.0, 1e-300]),
        rng.uniform(-10, 10),
    ][choice]


def _metric(rng: random.Random, keys: list[str], base_ts: int, history: list[Metric]) -> Metric:
    if history and rng.random() < 0.2:
        old = rng.choice(history)  # duplicate point, same object or an equal new one
        return old if rng.random() < 0.5 else Metric(old.key, old.value, old.timestamp, old.step)
    # Few steps and timestamps: equal steps, ties and out-of-order timestamps are common.
    m = Metric(rng.choice(keys), _value(rng), base_ts + rng.randrange(6), rng.randrange(4))
    history.append(m)
    return m


def _workload(seed: int) -> list[tuple]:
    rng = random.Random(seed)
    history: list[Metric] = []
    ops = []
    for i in range(40):
        run = rng.randrange(RUNS)
        keys = rng.sample(KEYS, rng.choice([1, 3, 20, 150]))
        base_ts = 1_700_000_000_000 + rng.randrange(-3, 4)  # later calls may log older points
        shape = rng.random()
        if shape < 0.25:
            ops.append(("log_metric", run, _metric(rng, keys, base_ts, history)))
        elif shape < 0.4:  # many keys, one step: the shape of a training loop's log_metrics
            step, ts = rng.randrange(4), base_ts + rng.randrange(6)
            ops.append(("log_batch", run, [Metric(k, _value(rng), ts, step) for k in rng.sample(KEYS, 100)], [], []))
        else:
            metrics = [_metric(rng, keys, base_ts, history) for _ in range(rng.randrange(1, 300))]
            params = [Param(f"p{rng.randrange(5)}", "v")] if rng.random() < 0.2 else []
            tags = [RunTag(f"t{rng.randrange(5)}", str(i))] if rng.random() < 0.2 else []
            ops.append(("log_batch", run, metrics, params, tags))
    ops.append(("log_batch", 1, [], [Param("p_only", "v")], [RunTag("t_only", "v")]))  # no metric
    ops.append(("log_batch", 1, [], [], []))
    # Error paths must fail alike: a changed param, a bad metric, a deleted run.
    ops.append(("log_batch", 0, [Metric("k000", 1.0, 1, 0)], [Param("p_fixed", "a")], []))
    ops.append(("log_batch", 0, [Metric("k001", 2.0, 1, 0)], [Param("p_fixed", "b")], []))
    ops.append(("log_batch", 0, [Metric("", 1.0, 1, 0)], [], []))
    ops.append(("delete_run", RUNS - 1))
    ops.append(("log_batch", RUNS - 1, [Metric("k002", 1.0, 1, 0)], [], []))
    ops.append(("log_metric", RUNS - 1, Metric("k002", 1.0, 1, 0)))
    return ops


def _apply(store, run_ids: list[str], op: tuple):
    try:
        if op[0] == "log_metric":
            store.log_metric(run_ids[op[1]], op[2])
        elif op[0] == "log_batch":
            store.log_batch(run_ids[op[1]], metrics=op[2], params=op[3], tags=op[4])
        else:
            store.delete_run(run_ids[op[1]])
    except MlflowException as e:
        return e.error_code
    return None


def _rows(store, run_ids: list[str], table: str) -> list[tuple]:
    index = {run_id: i for i, run_id in enumerate(run_ids)}
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT * FROM {table}")
        cols = list(result.keys())
        rows = [dict(zip(cols, r, strict=True)) for r in result]
    for r in rows:
        r["run_uuid"] = index[r["run_uuid"]]
        if isinstance(r.get("value"), float):
            r["value"] = repr(r["value"])  # tells -0.0 from 0.0
    return sorted(tuple(sorted(r.items())) for r in rows)


def _runs(store) -> list[str]:
    exp = store.create_experiment("differential")
    return [
        store.create_run(exp, user_id="u", start_time=0, tags=[], run_name=f"r{i}").info.run_id for i in range(RUNS)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_same_rows_as_mlflow(seed, scratch_db, mlflow_template):
    art = tempfile.mkdtemp(prefix="store-art-")
    with scratch_db(mlflow_template) as stock_uri, scratch_db(mlflow_template) as ours_uri:
        stock, ours = SqlAlchemyStore(stock_uri, art), BundleSqlAlchemyStore(ours_uri, art)
        stock_runs, our_runs = _runs(stock), _runs(ours)
        outcomes = []
        for n, op in enumerate(_workload(seed)):
            outcomes.append(_apply(stock, stock_runs, op))
            assert _apply(ours, our_runs, op) == outcomes[-1], f"op {n}: {op[:2]}"
        bad = "INVALID_PARAMETER_VALUE"
        assert outcomes[-6:] == [None, bad, bad, None, bad, bad]  # the error paths were taken
        for table in ("metrics", "latest_metrics", "params", "tags"):
            ours_rows, stock_rows = _rows(ours, our_runs, table), _rows(stock, stock_runs, table)
            assert ours_rows == stock_rows, table
        n_metrics = len(_rows(ours, our_runs, "metrics"))
        assert n_metrics > 1000, "the workload should exercise many points"

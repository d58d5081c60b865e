"""MetricBatcher sends one HTTP request per batch (counted at MLflow's HTTP layer) and loses nothing."""

import mlflow.utils.rest_utils as rest_utils

from client.batching import MetricBatcher


def test_one_request_per_batch_and_every_point_stored(mlflow_admin, unique, monkeypatch):
    calls = []
    real = rest_utils.http_request

    def counting(host_creds, endpoint, method, *args, **kwargs):
        calls.append(endpoint)
        return real(host_creds, endpoint, method, *args, **kwargs)

    run = mlflow_admin.create_run(mlflow_admin.create_experiment(f"batching/{unique}"))
    run_id = run.info.run_id
    monkeypatch.setattr(rest_utils, "http_request", counting)
    with MetricBatcher(mlflow_admin, run_id, max_batch=1000, flush_seconds=3600) as batcher:
        for step in range(250):  # 250 steps x 10 metrics = 2,500 points
            batcher.log({f"m{k}": step * 10 + k for k in range(10)}, step=step)
    monkeypatch.setattr(rest_utils, "http_request", real)

    assert [c for c in calls if c.endswith("/runs/log-batch")] == ["/api/2.0/mlflow/runs/log-batch"] * 3
    assert batcher.requests == 3 and batcher.buffer == []
    history = mlflow_admin.get_metric_history(run_id, "m7")
    assert sorted((m.step, m.value) for m in history) == [(s, s * 10 + 7) for s in range(250)]

"""Real metric batching for training code: many steps, one request per 1000 points.

`mlflow.log_metrics({...}, step=s)` is one HTTP request per step; `log_metric` one per point.
`MetricBatcher` buffers points across steps and sends them with `MlflowClient.log_batch`, at most
`max_batch` (MLflow's limit: 1000) per request, when the buffer is full, when `flush_seconds`
have passed since the oldest buffered point, and on `flush()`/exit. A failed request keeps its
points buffered (the next flush retries them) and raises, so nothing is dropped silently.

    with MetricBatcher(MlflowClient(), run.info.run_id) as batcher:
        for step in range(steps):
            batcher.log({"loss": loss, "acc": acc}, step=step)
"""

import time

from mlflow.entities import Metric

MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit


class MetricBatcher:
    def __init__(self, client, run_id: str, max_batch: int = MAX_METRICS_PER_REQUEST, flush_seconds: float = 10.0):
        if not 1 <= max_batch <= MAX_METRICS_PER_REQUEST:
            raise ValueError(f"max_batch must be 1..{MAX_METRICS_PER_REQUEST}")
        self.client, self.run_id, self.max_batch, self.flush_seconds = client, run_id, max_batch, flush_seconds
        self.buffer: list[Metric] = []
        self.oldest = None
        self.requests = 0

    def log(self, metrics: dict, step: int, timestamp_ms: int | None = None):
        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        self.buffer.extend(Metric(key, float(value), ts, step) for key, value in metrics.items())
        self.oldest = self.oldest or time.monotonic()
        while len(self.buffer) >= self.max_batch:
            self._send(self.max_batch)
        if self.buffer and time.monotonic() - self.oldest >= self.flush_seconds:
            self.flush()

    def flush(self):
        while self.buffer:
            self._send(self.max_batch)

    def _send(self, n: int):
        batch = self.buffer[:n]
        self.client.log_batch(self.run_id, metrics=batch)  # raises: the points stay buffered
        del self.buffer[: len(batch)]
        self.requests += 1
        self.oldest = time.monotonic() if self.buffer else None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.flush()

"""Client-side helpers for users of the tracking server (importable: `from client.batching import MetricBatcher`)."""

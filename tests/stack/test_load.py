"""A short load run (50 loggers, a few seconds) loses nothing and sees no error.

The long runs are a benchmark (`./mlflowctl benchmark`, README "Performance"), not tests.
"""
import os

import pytest

from scripts import load


@pytest.fixture
def own_environment():
    """The load tool sets the MLflow client's variables process-wide: put them back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("mode", ["per-metric", "batch"])
def test_50_loggers_no_errors_no_loss(stack, stack_env, mode, own_environment):
    target = load.stack_target(stack_env)
    report = load.run_load(target["uri"], loggers=50, duration=5, mode=mode, batch_size=100,
                           db_uri=target["db"], label="test")
    assert report["requests"] > 0
    assert report["errors"] == {}
    assert report["no_loss"]["ok"] and report["no_loss"]["stored"] == report["points_acked"] > 0

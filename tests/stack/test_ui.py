"""The MLflow web UI through Nginx in headless Chromium (Debian's), after basic auth.

Chromium is driven over the DevTools protocol: basic-auth credentials go in an Authorization
header (not in a URL or on a command line) and only our server's key is trusted (SPKI pin).
The screenshot is saved to test-artifacts/ui-experiments.png.
"""

import base64
import time

from tests.conftest import ROOT, poll
from tests.stack.browser import page_text

ARTIFACTS = ROOT / "test-artifacts"


def test_ui_for_a_reader_loads_without_403(mlflow_admin, stack, chromium, unique, monkeypatch):
    """A non-admin with READ on one experiment: its runs, a run's metric chart, its artifacts, its
    logged models (list and page) and its traces (list and one trace) load, and none of the page's
    API calls gets 403 (bundle-auth's checks, authz.py, must not break the UI)."""
    import os

    import mlflow
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=stack)
    user, password = f"ui-reader-{time.time_ns()}", os.urandom(12).hex()
    auth.create_user(user, password)
    try:
        exp = mlflow_admin.create_experiment(f"ui-read/{unique}")
        run = mlflow_admin.create_run(exp, run_name=f"run-{unique[:20]}").info.run_id
        for step in range(3):
            mlflow_admin.log_metric(run, "reader_loss", 1.0 / (step + 1), step=step)
        mlflow_admin.log_text(run, "hello", "reader-notes.txt")
        model = mlflow_admin.create_logged_model(exp, name=f"lm-{unique[:20]}")
        # The trace's experiment through the environment: set_experiment() is process-wide state.
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
        with mlflow.start_span(name=f"span-{unique[:20]}") as span:
            span.set_inputs({"question": f"q-{unique[:20]}"})
        mlflow.flush_trace_async_logging()
        auth.grant_user_permission(user, "experiment", exp, "READ")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        chromium.call("Network.enable")
        chromium.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        pages = [
            (f"#/experiments/{exp}/runs", f"run-{unique[:20]}"),
            (f"#/experiments/{exp}/runs/{run}/model-metrics", "reader_loss"),
            (f"#/experiments/{exp}/runs/{run}/artifacts", "reader-notes.txt"),
            (f"#/experiments/{exp}/models", f"lm-{unique[:20]}"),
            (f"#/experiments/{exp}/models/{model.model_id}", f"lm-{unique[:20]}"),
            (f"#/experiments/{exp}/traces", f"q-{unique[:20]}"),
            (f"#/experiments/{exp}/traces/{span.trace_id}", f"span-{unique[:20]}"),
        ]
        for fragment, text in pages:
            chromium.call("Page.navigate", url=f"{stack}/{fragment}")
            try:
                poll(f"{text!r} on {fragment}", lambda text=text: text in page_text(chromium), 90, every_s=0.25)
            except AssertionError as exc:
                failed = [(status, url) for status, url in chromium.responses if status >= 400]
                raise AssertionError(
                    f"{exc}; failed API calls: {failed}; page: {page_text(chromium)[:400]!r}"
                ) from None
        api = [(status, url) for status, url in chromium.responses if "/ajax-api/" in url or "/api/" in url]
        assert api, "no API call seen"
        bad = [(status, url) for status, url in api if status == 403 or status >= 500]
        assert not bad, bad
    finally:
        auth.delete_user(user)


def test_ui_shows_experiment_after_basic_auth(mlflow_admin, stack, admin_auth, chromium, unique):
    name = f"ui/{unique}"
    mlflow_admin.create_experiment(name)
    token = base64.b64encode(":".join(admin_auth).encode()).decode()
    chromium.call("Network.enable")
    chromium.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
    chromium.call("Page.navigate", url=f"{stack}/#/experiments")

    def page_text():
        return chromium.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")[
            "result"
        ].get("value", "")

    poll(f"experiment {name} on the experiments page", lambda: name in page_text(), 90, every_s=0.25)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = chromium.call("Page.captureScreenshot", format="png")
    (ARTIFACTS / "ui-experiments.png").write_bytes(base64.b64decode(shot["data"]))
    assert (ARTIFACTS / "ui-experiments.png").stat().st_size > 10_000

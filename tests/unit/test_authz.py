"""The request checks of mlflow_bundle_store/authz.py that need no auth store: names given twice,
non-JSON bodies, switched-off routes, and which experiment a raw store URI lies in."""

import base64
import json

import pytest
from flask import Flask

from mlflow_bundle_store import authz

AUTH = {"Authorization": "Basic " + base64.b64encode(b"b:pw").decode()}
app = Flask(__name__)
app.add_url_rule("/api/2.0/mlflow/logged-models/<model_id>", "lm", methods=["GET", "DELETE"])
app.add_url_rule("/api/2.0/mlflow/runs/log-batch", "lb", methods=["POST"])
app.add_url_rule("/api/2.0/mlflow/webhooks", "wh", methods=["GET"])
app.add_url_rule("/api/2.0/mlflow/upload-artifact", "ua", methods=["POST"])


def refused(path, method="GET", **kwargs):
    with app.test_request_context(path, method=method, headers=AUTH, **kwargs) as ctx:
        ctx.request.view_args = app.url_map.bind("x").match(ctx.request.path, method=method)[1]
        response = authz.refuse_switched_off() or authz.check()
        return None if response is None else (response.status_code, json.loads(response.get_data())["error_code"])


@pytest.mark.parametrize(
    "path,method,kwargs",
    [
        ("/api/2.0/mlflow/runs/log-batch", "POST", {"json": {"run_uuid": "b1", "runId": "a1"}}),
        ("/api/2.0/mlflow/runs/log-batch", "POST", {"json": {"run_id": "b1", "runUuid": "a1"}}),
        ("/api/2.0/mlflow/runs/log-batch", "POST", {"json": {"run_id": "b1"}, "query_string": {"run_id": "a1"}}),
        ("/api/2.0/mlflow/logged-models/m-a", "GET", {"query_string": {"model_id": "m-b"}}),
        ("/api/2.0/mlflow/logged-models/m-a", "DELETE", {"query_string": {"modelId": "m-b"}}),
    ],
)
def test_an_object_named_twice_is_refused(path, method, kwargs):
    assert refused(path, method, **kwargs) == (400, "INVALID_PARAMETER_VALUE")


def test_a_non_json_body_is_refused():
    kwargs = {"data": '{"model_id": "m-a"}', "content_type": "text/plain", "query_string": {"model_id": "m-b"}}
    assert refused("/api/2.0/mlflow/logged-models/m-b", "DELETE", **kwargs) == (400, "INVALID_PARAMETER_VALUE")


def test_artifact_bytes_are_not_json(monkeypatch):
    # Reaches the non-admin checks, which need the auth store: stop there.
    monkeypatch.setattr(authz, "_roles", lambda *a: authz._error(418, "REACHED", ""))
    import mlflow.server.auth as auth

    monkeypatch.setattr(auth, "store", type("S", (), {"get_user": lambda self, u: type("U", (), {"is_admin": 0})()})())
    kwargs = {"data": b"\x00bytes", "content_type": "application/octet-stream", "query_string": {"run_uuid": "r"}}
    assert refused("/api/2.0/mlflow/upload-artifact", "POST", **kwargs) == (418, "REACHED")


def test_switched_off_routes(monkeypatch):
    monkeypatch.delenv(authz.ENABLE_ENV, raising=False)
    assert refused("/api/2.0/mlflow/webhooks") == (404, "ENDPOINT_NOT_FOUND")
    assert authz.switched_off("/gateway-proxy") == "gateway" and authz.switched_off("/runs/get") is None
    monkeypatch.setenv(authz.ENABLE_ENV, "gateway, webhooks")
    assert authz.switched_off("/webhooks") is None and authz.switched_off("/jobs/1") == "jobs"


@pytest.mark.parametrize(
    "uri,experiment",
    [
        ("s3://bucket/7/abc/artifacts", "7"),
        ("s3://bucket//7/abc", "7"),
        ("s3://BUCKET/7/abc", "7"),  # S3 bucket names are lower case: the same bucket
        ("s3://bucket/7/../8/x", ""),
        ("s3://bucket/%2E%2E/8", ""),
        ("s3://bucket", ""),
        ("s3://bucket/models/x", ""),
        ("mlflow-artifacts:/7/abc", "7"),
        ("runs:/abc/model", None),
        ("s3://other/7/abc", None),
    ],
)
def test_experiment_of_raw_store_uri(monkeypatch, uri, experiment):
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://bucket")
    assert authz._experiment_of(uri) == experiment


def test_consistent_spellings_pass():
    body = {"run_id": "r1", "run_uuid": "r1", "params": [{"key": "k", "value": "v"}]}
    # Same value twice is what MLflow's own client sends; the auth store is not reached for a
    # request whose checks all pass before it, so stop at the listing/location step.
    with app.test_request_context("/api/2.0/mlflow/runs/log-batch", method="POST", json=body, headers=AUTH):
        assert authz._body() == body


@pytest.mark.parametrize(
    "text,values", [('["r1", "r2"]', ["r1", "r2"]), ("r1", ["r1"]), ("[r1", ["[r1"]), ("[1", ["[1"])]
)
def test_id_lists_as_written_and_any_other_text(text, values):
    assert authz._listed(text) == values


@pytest.mark.parametrize(
    "path,status,body,expected",
    [
        ("/api/2.0/mlflow/experiments/get", 403, {"message": "Permission denied"}, ("PERMISSION_DENIED", 403)),
        ("/ajax-api/2.0/mlflow/runs/get", 401, {"message": "Authentication required"}, ("UNAUTHENTICATED", 401)),
        ("/api/2.0/mlflow/runs/get", 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"}, None),
        ("/oidc/ui/auth", 403, {"message": "Permission denied"}, None),
        ("/api/2.0/mlflow/runs/get", 200, {"message": "fine"}, None),
    ],
)
def test_plugin_refusals_get_mlflow_error_codes(path, status, body, expected):
    """bundle-oidc: the plugin's {"message": ...} refusals on the API get MLflow's error_code (the
    mlflow client reads a 403 without one as INTERNAL_ERROR); anything else is left as it is."""
    from flask import jsonify

    from mlflow_bundle_store import app as bundle_app

    with app.test_request_context(path):
        response = jsonify(body)
        response.status_code = status
        out = bundle_app._mlflow_error_form(response)
        got = json.loads(out.get_data())
    if expected is None:
        assert got == body
    else:
        assert (got["error_code"], out.status_code) == expected and got["message"] == body["message"]


@pytest.mark.parametrize(
    "path,group",
    [
        ("/ajax-api/3.0/jobs/search", "jobs"),  # MLflow's FastAPI routers, served in oidc mode
        ("/gateway/mlflow/v1/chat/completions", "gateway"),
        ("/ajax-api/3.0/mlflow/assistant/message", "assistant"),
        ("/api/2.0/mlflow/webhooks", "webhooks"),
        ("/v1/traces", None),
        ("/api/2.0/mlflow/permissions/gateways/endpoints", None),  # the plugin's own permission routes
        ("/api/2.0/mlflow/runs/get", None),
    ],
)
def test_switched_off_groups_are_refused_before_the_asgi_app(monkeypatch, path, group):
    import asyncio

    monkeypatch.delenv(authz.ENABLE_ENV, raising=False)
    reached, sent = [], []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    asyncio.run(authz.switched_off_asgi(inner)({"type": "http", "path": path}, None, send))
    if group is None:
        assert reached == [path] and not sent
    else:
        assert not reached and sent[0]["status"] == 404
        assert json.loads(sent[1]["body"]) == {
            "error_code": "ENDPOINT_NOT_FOUND",
            "message": f"Switched off here (enable with {authz.ENABLE_ENV}={group})",
        }
    monkeypatch.setenv(authz.ENABLE_ENV, "jobs,gateway,assistant,webhooks")
    reached.clear()
    asyncio.run(authz.switched_off_asgi(inner)({"type": "http", "path": path}, None, send))
    assert reached == [path]

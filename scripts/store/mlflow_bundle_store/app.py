"""`bundle-auth` app (`mlflow server --app-name bundle-auth`): MLflow's basic-auth app whose REST
API answers every error in MLflow's JSON form ({"error_code": ..., "message": ...}).

MLflow 3.17.2 answers some malformed bodies with Flask's HTML 500 page: a JSON list, a string or
`{not json` on runs/log-batch raise TypeError/AttributeError in the auth validators or handlers.
Here a body that is not a JSON object gets 400 INVALID_PARAMETER_VALUE before anything reads
it, and any other unhandled exception on an API path becomes a JSON 500 (503 when the database
is unreachable, so clients retry). UI paths keep Flask's HTML.

It also counts requests by endpoint (the Flask URL rule, so the label set stays bounded), method
and status in `mlflow_bundle_http_requests_total`: MLflow's own request metrics are labelled by
MLflow version only (`group_by=mlflow_version` in mlflow/server/prometheus_exporter.py). Under
`--expose-prometheus` the workers write it to the multiprocess directory like MLflow's metrics,
so one scrape of /metrics sums every worker.
"""

import json
import re

import sqlalchemy.exc
from flask import Flask, Response, request
from mlflow.exceptions import HTTP_STATUS_TO_ERROR_CODE, MlflowException
from prometheus_client import Counter
from werkzeug.exceptions import HTTPException, InternalServerError

from mlflow_bundle_store import auth_cache, authz

API_PATH = re.compile(r"^(?:/[^/]+)*/(?:ajax-)?api/")  # with or without --static-prefix
# Endpoints whose body is a JSON request message (not artifact bytes, not OTLP protobuf).
JSON_BODY_PATH = re.compile(r"^(?:/[^/]+)*/(?:ajax-)?api/\d+\.\d+/mlflow/(?!upload-artifact)")
# Errors of a database that is down or restarting: retryable, unlike a bug.
DB_UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)
REQUESTS = Counter(
    "mlflow_bundle_http_requests",
    "HTTP requests by endpoint (Flask URL rule), method and status",
    ["endpoint", "method", "status"],
)


def create_app(app: Flask | None = None):
    from mlflow.server import app as mlflow_app
    from mlflow.server import auth

    app = app or mlflow_app
    install_json_errors(app)
    app.after_request(_count_request)
    app = auth.create_app(app)
    auth_cache.install(auth, app)
    # The auth engines keep MLflow's pre-ping: with the cache they are checked out only on a cache
    # miss or a write, and a write there follows one the handler already committed on the tracking
    # DB (create_experiment, then the creator's permission): a dead connection at that point
    # answered 500 after the experiment existed, and the client's retry got RESOURCE_ALREADY_EXISTS.
    authz.install(app)  # after the auth app's before_request: see authz.py
    # MLflow's basic-auth denies non-admins every route it has no rule for (fail-closed), /metrics
    # included: the monitoring profile's scraper would need an admin. /metrics holds aggregate
    # counts and latencies (endpoint labels are URL rules, never names or ids), so any signed-in
    # user may read it, and the scraper's user has no other permission.
    auth.BEFORE_REQUEST_VALIDATORS[("/metrics", "GET")] = auth._allow_authenticated
    return app


def create_oidc_app():
    """`--app-name bundle-oidc` (AUTH_MODE=oidc): the mlflow-oidc-auth plugin's FastAPI app, which
    mounts MLflow's Flask app, with the same JSON errors, request counter and team-isolation checks
    (authz.py) on that Flask app.
    ASGI: gunicorn serves it with uvicorn's worker class (docker/entrypoint.sh)."""
    from mlflow.server import app as mlflow_app

    install_json_errors(mlflow_app)
    mlflow_app.after_request(_count_request)
    mlflow_app.after_request(_mlflow_error_form)
    # Importing the module builds the app (its module-level `app = create_app()`), which adds the
    # plugin's before_request on the Flask app: after _reject_malformed_json, which goes first.
    from mlflow_oidc_auth.app import app

    authz.install(mlflow_app, oidc=True)  # after the plugin's before_request: see authz.py
    return authz.switched_off_asgi(app)


def _mlflow_error_form(response: Response) -> Response:
    """The plugin answers its refusals {"message": ...} with no error_code: on the API, MLflow's
    form instead, so clients see the status's code (the mlflow client reads a 403 without one as
    INTERNAL_ERROR, HTTP 500)."""
    if response.status_code < 400 or not API_PATH.match(request.path) or not response.is_json:
        return response
    body = response.get_json(silent=True)
    if not isinstance(body, dict) or "error_code" in body or "message" not in body:
        return response
    code = HTTP_STATUS_TO_ERROR_CODE.get(response.status_code, "INTERNAL_ERROR")
    response.set_data(json.dumps({"error_code": code, "message": body["message"]}))
    return response


def install_json_errors(app: Flask) -> None:
    # First in line: the auth app's before_request parses the body too, and crashes on a list.
    app.before_request_funcs.setdefault(None, []).insert(0, _reject_malformed_json)
    app.register_error_handler(Exception, _json_error)


def _count_request(response: Response) -> Response:
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
    return response


def _error(status: int, error_code: str, message: str) -> Response:
    body = json.dumps({"error_code": error_code, "message": message})
    return Response(body, status=status, mimetype="application/json")


def _reject_malformed_json():
    if request.method not in ("POST", "PUT", "PATCH", "DELETE") or not JSON_BODY_PATH.match(request.path):
        return None
    if request.mimetype != "application/json":
        return None  # MLflow answers a wrong Content-Type with its own JSON 400
    # Cached by Flask: MLflow's handler reuses this parse.
    body = request.get_json(force=True, silent=True)
    if body is None and not request.get_data(cache=True).strip():
        return None  # no body: MLflow reads it as {}
    if isinstance(body, str):  # old clients double-encode the JSON object; MLflow decodes twice
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    if not isinstance(body, dict):
        return _error(400, "INVALID_PARAMETER_VALUE", "Malformed request body: expected a JSON object")
    return None


def _json_error(e: Exception):
    if not API_PATH.match(request.path):
        if isinstance(e, HTTPException):
            return e
        _log(e)
        return InternalServerError(original_exception=e)
    if isinstance(e, MlflowException):  # MLflow's handlers catch their own; an after_request may not
        return Response(e.serialize_as_json(), status=e.get_http_status_code(), mimetype="application/json")
    if isinstance(e, HTTPException):
        code = e.code or 500
        error_code = HTTP_STATUS_TO_ERROR_CODE.get(code, "BAD_REQUEST" if code < 500 else "INTERNAL_ERROR")
        return _error(code, error_code, e.description or e.name)
    _log(e)
    if isinstance(e, DB_UNAVAILABLE):
        return _error(503, "TEMPORARILY_UNAVAILABLE", "The database is unavailable; retry later")
    return _error(500, "INTERNAL_ERROR", "Internal server error; see the server log")


def _log(e: Exception) -> None:
    # A handled exception is not logged by Flask: log it as Flask would have.
    from flask import current_app

    current_app.logger.error("Exception on %s [%s]", request.path, request.method, exc_info=e)

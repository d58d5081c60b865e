"""Team isolation at the edge of `bundle-auth` (issue 22): the permission check sees exactly the ids
the handler will use. Runs after MLflow's basic-auth `before_request` (so the caller is authenticated
and MLflow's own validators have passed) and before the handler.

MLflow 3.17.2's validators read `run_id`/`run_uuid`, path and query parameters from the raw request
(`_get_request_param` in mlflow/server/auth/__init__.py: a DELETE without a JSON content type reads
the query), while the handlers parse the body into the endpoint's protobuf message
(`_get_request_message` in mlflow/server/handlers.py), where `runId` is a spelling of `run_id` and
path parameters win. A request that names one object twice can be checked on one and act on the
other. Here:

- a request naming one field twice with different values (two spellings such as `run_uuid` and
  `runId`, `request_id` and `trace_id`, or the path, the query and the body disagreeing) gets 400;
- a body that is not JSON on a JSON endpoint gets 400 (the handler would parse it anyway);
- a raw store URI (`s3://BUCKET/<experiment>/...`, `mlflow-artifacts:/<experiment>/...`) given as an
  experiment's `artifact_location` or a model version's `source` must lie in an experiment the
  caller may edit (MLflow refuses only `runs:/`, `models:/` and `mlflow-artifacts:` sources);
- a trace created with the id of an existing trace in another experiment gets 400;
- role and permission listings show a non-admin only their own;
- for a non-admin, a request naming by id a run, experiment, logged model or trace that does not
  exist gets the answer it gets for another team's: MLflow's 403 "Permission denied" (most of
  MLflow's validators answer 403 for both; some look the object up first and answer 404 for a free
  id, which tells which ids exist). Names (experiments by name, registered models, prompts) keep
  MLflow's answers: they are one namespace for every team, which creating an object with a taken
  name reveals anyway, and `mlflow.set_experiment` needs the 404 of a free name;
- route groups the bundle does not use are switched off (404) unless named in
  MLFLOW_BUNDLE_ENABLE_ROUTES (comma-separated group names, see OPTIONAL_ROUTES).

The same checks run in AUTH_MODE=oidc (`bundle-oidc`, install(app, oidc=True)), after the
mlflow-oidc-auth plugin's before_request: the caller, their admin flag and their experiment
permissions then come from the plugin (the identity its ASGI middleware put in the WSGI environ,
and its permission resolver). The role routes exist in basic mode only.
"""

import json
import os
import posixpath
import re
import urllib.parse

from flask import Response, request
from mlflow.exceptions import MlflowException

API = re.compile(r"^(?:/[^/]+)*?/(?:ajax-)?api/\d+\.\d+/?mlflow(?P<rest>/.*)$")
# The UI's artifact download, outside the API prefix: it names a run by id too.
GET_ARTIFACT = re.compile(r"^(?:/[^/]+)*?/get-artifact$")
# Group -> routes (after the /api/X.Y/mlflow prefix). Off unless MLFLOW_BUNDLE_ENABLE_ROUTES names it.
OPTIONAL_ROUTES = {
    "webhooks": re.compile(r"^/webhooks\b"),
    "gateway": re.compile(r"^/gateway(\b|-proxy)"),
    "jobs": re.compile(r"^/jobs/|^/prompt-optimization/"),
    "invoke": re.compile(r"^/(scorer/invoke|genai/evaluate/invoke|issues/invoke)$"),
    "demo": re.compile(r"^/demo/"),
    "workspaces": re.compile(r"^/workspaces\b"),
    "assistant": re.compile(r"^/assistant/"),
    "mcp": re.compile(r"^/mcp\b"),
}
ENABLE_ENV = "MLFLOW_BUNDLE_ENABLE_ROUTES"
# Spellings that the handlers' protobuf parsing (or MLflow's fallbacks) reads as one field.
SYNONYMS = {"run_uuid": "run_id", "request_id": "trace_id"}
JSON_METHODS = ("POST", "PUT", "PATCH", "DELETE")
BINARY_BODY = {"/upload-artifact"}  # the file's bytes; its ids are in the query
# Fields naming objects by id (one, or a list) whose experiment decides who may read them.
ID_KEYS = {
    "run_id": "run_id", "run_ids": "run_id", "trace_id": "trace_id", "trace_ids": "trace_id",
    "model_id": "model_id", "experiment_id": "experiment_id", "experiment_ids": "experiment_id",
}  # fmt: skip
# Listings of roles and permissions: a non-admin may see their own only.
SELF_ONLY = {"/users/roles/list", "/users/permissions/list"}
OWN_ROLE = {"/roles/get", "/roles/permissions/list"}
ADMIN_ONLY = {"/roles/list", "/roles/users/list"}


_oidc = False  # set by install: where the caller and their permissions come from


def install(app, oidc: bool = False) -> None:
    """Called once, after the auth app (MLflow's basic-auth, or the OIDC plugin's) has registered
    its before_request."""
    global _oidc
    _oidc = oidc
    # Switched-off routes are refused before anything else: MLflow's validators for them may look
    # the caller's ids up and answer for them.
    app.before_request_funcs.setdefault(None, []).insert(0, refuse_switched_off)
    app.before_request(check)
    app.after_request(hide_existence)


def refuse_switched_off():
    match = API.match(request.path)
    group = match and switched_off(match.group("rest"))
    if group:
        return _error(404, "ENDPOINT_NOT_FOUND", f"Switched off here (enable with {ENABLE_ENV}={group})")
    return None


def _error(status: int, code: str, message: str) -> Response:
    return Response(json.dumps({"error_code": code, "message": message}), status=status, mimetype="application/json")


def _bad(message: str) -> Response:
    return _error(400, "INVALID_PARAMETER_VALUE", message)


def _caller() -> str | None:
    """The signed-in caller's name; None when there is none (the auth app's hook answered)."""
    if _oidc:
        from mlflow_oidc_auth.bridge import get_fastapi_username

        try:
            return get_fastapi_username()
        except Exception:
            return None
    return request.authorization.username if request.authorization else None


def _is_admin(username: str) -> bool:
    if _oidc:
        from mlflow_oidc_auth.bridge import get_fastapi_admin_status

        return get_fastapi_admin_status()
    from mlflow.server import auth

    return auth.store.get_user(username).is_admin


def _permission(experiment_id: str, username: str):
    """USERNAME's permission on the experiment (can_read, can_update...)."""
    if _oidc:
        from mlflow_oidc_auth.utils.permissions import effective_experiment_permission

        return effective_experiment_permission(experiment_id, username).permission
    from mlflow.server import auth

    return auth._get_experiment_permission(experiment_id, username)


def _forbidden() -> Response:
    if _oidc:  # the plugin's own refusal (app._mlflow_error_form adds MLflow's error_code on the API)
        return Response(json.dumps({"message": "Permission denied"}), status=403, mimetype="application/json")
    from mlflow.server import auth

    return auth.make_forbidden_response()


def _canonical(key: str) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()
    return SYNONYMS.get(snake, snake)


def _norm(value) -> str:
    if isinstance(value, list):
        return json.dumps([str(v) for v in value])
    return str(value)


def _body() -> dict:
    body = request.get_json(force=True, silent=True) if request.get_data(cache=True).strip() else None
    if isinstance(body, str):  # double-encoded by old clients; MLflow decodes twice
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    return body if isinstance(body, dict) else {}


# Any path, with the API prefix of the Flask routes or of MLflow's FastAPI routers
# (/ajax-api/3.0/jobs, /gateway, /ajax-api/3.0/mlflow/assistant) or none.
ANY_PREFIX = re.compile(r"^(?:/(?:ajax-)?api/\d+\.\d+(?:/mlflow)?)?(?P<rest>/.*)$")


def switched_off_asgi(app):
    """APP (ASGI) with the OPTIONAL_ROUTES groups refused as refuse_switched_off does. For oidc
    mode: the plugin's FastAPI app serves MLflow's FastAPI routers (jobs, gateway, assistant)
    itself, before any Flask hook, where gunicorn's WSGI workers in basic mode serve none."""

    async def asgi(scope, receive, send):
        match = ANY_PREFIX.match(scope.get("path", "")) if scope["type"] == "http" else None
        group = match and switched_off(match.group("rest"))
        if not group:
            return await app(scope, receive, send)
        body = _error(404, "ENDPOINT_NOT_FOUND", f"Switched off here (enable with {ENABLE_ENV}={group})").get_data()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return asgi


def switched_off(rest: str) -> str | None:
    """The OPTIONAL_ROUTES group REST (the path after /api/X.Y/mlflow) is in, unless enabled."""
    enabled = {g.strip() for g in os.environ.get(ENABLE_ENV, "").split(",") if g.strip()}
    return next((g for g, pattern in OPTIONAL_ROUTES.items() if pattern.search(rest) and g not in enabled), None)


def check():
    match = API.match(request.path)
    username = _caller() if match else None
    if username is None:
        return None
    rest = match.group("rest")
    has_body = request.method in JSON_METHODS and bool(request.get_data(cache=True).strip())
    if has_body and request.mimetype != "application/json" and rest not in BINARY_BODY:
        return _bad("Request body must be JSON (Content-Type: application/json)")
    body = _body() if has_body else {}
    seen = _named(body)
    twice = sorted(k for k, values in seen.items() if len(values) > 1)
    if twice:
        return _bad(f"Request names {', '.join(twice)} more than once with different values")
    if _is_admin(username):
        return None
    return (None if _oidc else _roles(rest, username)) or _locations(rest, body, username)


def _named(body: dict) -> dict[str, set]:
    """Canonical field name -> the values the path, the query and BODY give it."""
    seen: dict[str, set] = {}
    sources = [request.view_args or {}, {k: v if len(v) > 1 else v[0] for k, v in request.args.lists()}, body]
    for source in sources:
        for key, value in source.items():
            if isinstance(value, (str, int, float, list)):
                seen.setdefault(_canonical(key), set()).add(_norm(value))
    return seen


def hide_existence(response):
    """After the handler: for a non-admin, a 404 RESOURCE_DOES_NOT_EXIST on a request naming by id an
    object they may not read (a free id included) becomes the 403 another team's object gets."""
    match = API.match(request.path) or GET_ARTIFACT.match(request.path)
    username = _caller() if match and response.status_code == 404 else None
    if username is None:
        return response
    if (response.get_json(silent=True) or {}).get("error_code") != "RESOURCE_DOES_NOT_EXIST":
        return response
    is_json = request.mimetype == "application/json" and request.method in JSON_METHODS
    ids = [
        (ID_KEYS[key], value)
        for key, values in _named(_body() if is_json else {}).items()
        if key in ID_KEYS
        for text in values
        for value in _listed(text)
    ]
    if not ids:
        return response
    try:
        if _is_admin(username):
            return response
    except MlflowException:
        return response
    if all(_readable(key, str(value), username) for key, value in ids):
        return response  # the caller's own object lacks something: MLflow's 404 stands
    return _forbidden()


def _listed(text: str) -> list:
    """The values of one field as _norm wrote them: a JSON list, or one value (any text)."""
    try:
        values = json.loads(text) if text.startswith("[") else [text]
    except ValueError:
        return [text]
    return values if isinstance(values, list) else [text]


def _readable(key: str, value: str, username: str) -> bool:
    """Whether USERNAME may read the experiment the object KEY=VALUE lies in (False: no such object)."""
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
    from mlflow.server.handlers import _get_tracking_store

    store = _get_tracking_store()
    experiment_of = {
        "experiment_id": lambda: value,
        "run_id": lambda: store.get_run(value).info.experiment_id,
        "trace_id": lambda: store.get_trace_info(value).experiment_id,
        "model_id": lambda: store.get_logged_model(value).experiment_id,
    }
    try:
        return _permission(str(experiment_of[key]()), username).can_read
    except MlflowException as exc:
        return exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
    except Exception:
        return True  # any other failure: MLflow's answer stays as it is


def _roles(rest: str, username: str):
    from mlflow.server import auth

    if rest in ADMIN_ONLY:
        return _forbidden()
    if rest in SELF_ONLY and request.args.get("username", username) != username:
        return _forbidden()
    if rest in OWN_ROLE:
        own = {str(r.id) for r in auth.store.list_user_roles(auth.store.get_user(username).id)}
        if request.args.get("role_id") not in own:
            return _forbidden()
    return None


def _locations(rest: str, body: dict, username: str):
    uris = []
    if rest == "/experiments/create":
        uris.append(body.get("artifact_location") or body.get("artifactLocation"))
    elif rest == "/model-versions/create":
        uris.append(body.get("source"))
    elif rest == "/traces" and request.method == "POST":
        info = (body.get("trace") or {}).get("trace_info") or (body.get("trace") or {}).get("traceInfo") or {}
        refused = _trace_id_reuse(info)
        if refused:
            return refused
        uris.append((info.get("tags") or {}).get("mlflow.artifactLocation"))
    for uri in filter(None, uris):
        experiment_id = _experiment_of(str(uri))
        if experiment_id == "" or (experiment_id and not _permission(experiment_id, username).can_update):
            return _bad("Storage location lies in the artifact store of an experiment you may not edit")
    return None


def _roots() -> list[tuple[str, str, str]]:
    """(scheme, netloc, path) of the server's artifact roots: the proxied destination and the default root."""
    from mlflow.server.constants import ARTIFACT_ROOT_ENV_VAR, ARTIFACTS_DESTINATION_ENV_VAR

    # `mlflow server` hands --artifacts-destination and --default-artifact-root to its workers in these.
    roots = [os.environ.get(v) for v in (ARTIFACTS_DESTINATION_ENV_VAR, ARTIFACT_ROOT_ENV_VAR)]
    roots.append(os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"))  # the bundle's compose variable
    roots.append("mlflow-artifacts:/")
    out = []
    for root in filter(None, roots):
        p = urllib.parse.urlparse(root)
        out.append((p.scheme, p.netloc, posixpath.normpath("/" + p.path).rstrip("/")))
    return out


def _experiment_of(uri: str) -> str | None:
    """The experiment id whose artifacts URI lies in (None: outside every root; "": the root itself or
    a path that cannot be resolved safely)."""
    p = urllib.parse.urlparse(uri)
    if p.scheme in ("runs", "models"):
        return None  # resolved by MLflow through the run or model, which its validators check
    path = urllib.parse.unquote(p.path)
    for scheme, netloc, root in _roots():
        if p.scheme.lower() != scheme.lower() or (p.netloc or "").lower() != netloc.lower():
            continue
        if ".." in path.split("/"):
            return ""
        norm = posixpath.normpath("/" + path)
        if norm != root and not norm.startswith(root + "/"):
            continue
        first = norm[len(root) :].strip("/").split("/")[0]
        return first if first.isdigit() else ""
    return None


def _trace_id_reuse(info: dict):
    trace_id = info.get("trace_id") or info.get("traceId")
    if not trace_id:
        return None
    from mlflow.server.handlers import _get_tracking_store

    try:
        existing = _get_tracking_store().get_trace_info(trace_id)
    except MlflowException:
        return None  # no such trace: a new one
    location = info.get("trace_location") or info.get("traceLocation") or {}
    wanted = (location.get("mlflow_experiment") or location.get("mlflowExperiment") or {}).get("experiment_id")
    if existing.experiment_id != str(wanted or ""):
        return _bad("A trace with this id already exists")
    return None

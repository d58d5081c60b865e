"""Route-matrix authorization test (issue 22): team B, with no permission on anything of team A's,
calls every route the installed MLflow serves, through Nginx, with the confusions MLflow's basic-auth
validators fall for. Nothing of A's may change and no answer to B may carry A's data.

Routes come from the image itself: the Flask `url_map` of the app `--app-name bundle-auth` builds
(MLflow's REST API plus the auth app's user/role routes) and the FastAPI routers of
`mlflow.server.fastapi_app` (OTLP, jobs, gateway, assistant: served only under uvicorn, which the
bundle does not use; they are listed so a later switch of serving mode is noticed). Every route needs
a verdict in VERDICTS: a route MLflow adds without one fails `test_every_route_has_a_verdict`.

Confusions per route (B's requests, A's ids; `*` = each field family at once):
- direct: A's ids in the query (GET) or JSON body;
- alias: one spelling of a field carries B's id, another A's (`run_uuid`/`runId`, `run_id`/`runUuid`,
  `experiment_id`/`experimentId`, `trace_id`/`request_id`, `model_id`/`modelId`...);
- path: path parameters name A's object, query and body name B's; and the reverse;
- ctype: query names B's objects, a `text/plain` body names A's;
- location and id reuse, on the routes that take them: a model-version `source` and an experiment
  `artifact_location` that are raw store URIs inside A's run, a trace created with A's trace id.

Every value A owns contains SECRET, a token B never sends: a response to B that contains it is a
leak. A's state (via the admin) and every user's admin flag are compared before and after; B's
writes carry `written-by-B`.

Every test runs in both auth modes (the `mode` fixture). In AUTH_MODE=oidc (the `sso` profile's real
provider) A is the seeded user alice, B is bob, the admin is carol, each with a bearer token from
the provider's login form. The routes are then those of `--app-name bundle-oidc`: MLflow's Flask
routes, plus the FastAPI routes the plugin serves (its permission, user and UI routes, and MLflow's
OTLP, jobs, gateway and assistant routers), which are probed with A's ids in their path parameters;
the jobs, gateway and assistant groups must be switched off there too.
"""

import concurrent.futures
import json
import os
import re
import time
import uuid

import pytest
import requests

from ctl import engine, stackexec
from tests.stack import oidc_login

# Runs inside the mlflow container (compose exec): the routes of the app the server runs.
ENUMERATE = """
import json, logging
logging.disable(logging.WARNING)
from mlflow_bundle_store.app import create_app
app = create_app()
routes = {(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
from mlflow.server import fastapi_app as fa
for name in dir(fa):
    router = getattr(fa, name)
    if name.endswith("_router") and hasattr(router, "routes"):
        routes |= {("fastapi:" + r.path, m) for r in router.routes for m in (getattr(r, "methods", None) or ())}
print(json.dumps(sorted(routes)))
"""
# The same in AUTH_MODE=oidc: MLflow's Flask routes and every route of the plugin's FastAPI app.
ENUMERATE_OIDC = """
import json, logging
logging.disable(logging.WARNING)
from mlflow.server import app as flask_app
from mlflow_bundle_store.app import create_oidc_app
create_oidc_app()  # the served app: the plugin's, behind the switched-off route groups
from mlflow_oidc_auth.app import app
routes = {(r.rule, m) for r in flask_app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
def served(routes):  # FastAPI 0.165 keeps an included router whole: its routes with their prefix
    for r in routes:
        if hasattr(r, "effective_route_contexts"):
            yield from ((c.path, c.methods) for c in r.effective_route_contexts())
        elif getattr(r, "methods", None):
            yield r.path, r.methods
routes |= {("fastapi:" + path, m) for path, methods in served(app.routes) for m in methods - {"HEAD", "OPTIONS"}}
print(json.dumps(sorted(routes)))
"""
TOKEN_TTL_S = 3600  # the matrix outlasts the provider's default 300 s tokens

# Normalised route (API prefix and version removed, ajax-api folded into api) -> verdict:
#   probe  - B must get nothing of A's whatever the confusion (the matrix runs on it);
#   off    - switched off in the bundle (mlflow_bundle_store/authz.py): B gets 403/404, no body of A's;
#   public - no object of anyone's (health, static files, UI shell).
# The FastAPI routes (prefix `fastapi:`) are not served by gunicorn; their verdict says what the
# bundle does once they are.
_PUBLIC = "/ GET, /health GET, /version GET, /server-info GET, /static-files/<path:path> GET, /build/<path:filename> GET, /signup GET, /ui-telemetry GET, /ui-telemetry POST, /metrics GET"  # noqa: E501
_OFF_PREFIXES = ("/webhooks", "/gateway", "/jobs", "/prompt-optimization", "/demo/", "/workspaces", "/scorer/invoke",
                 "/genai/evaluate/invoke", "/issues/invoke", "/assistant", "/mcp")  # fmt: skip
VERSION_PREFIX = re.compile(r"^/(?:ajax-)?api/\d\.\d(?:/mlflow)?(?=/|-)")


def normalise(rule: str, method: str) -> str:
    if rule.startswith("fastapi:"):
        return f"fastapi:{VERSION_PREFIX.sub('', rule[8:])} {method}"
    return f"{VERSION_PREFIX.sub('', rule)} {method}"


def verdict(route: str, oidc: bool = False) -> str | None:
    """In oidc mode the FastAPI routes are served (uvicorn) and authorized by the plugin: probed,
    but for the switched-off groups."""
    path = route.split(" ")[0].removeprefix("fastapi:")
    if route.removeprefix("fastapi:") in _PUBLIC.split(", "):
        return "public"
    if path.startswith(_OFF_PREFIXES):
        return "off"
    if route.startswith("fastapi:"):
        return "probe" if oidc else "off"
    return "probe" if route in KNOWN else None


# Every probed route of MLflow 3.17.2, explicitly: a new one must be looked at (and added here).
KNOWN = set(
    """-artifacts/artifacts GET|-artifacts/artifacts/<path:artifact_path> DELETE|-artifacts/artifacts/<path:artifact_path> GET
-artifacts/artifacts/<path:artifact_path> PUT|-artifacts/mpu/abort/<path:artifact_path> POST
-artifacts/mpu/complete/<path:artifact_path> POST|-artifacts/mpu/create/<path:artifact_path> POST
-artifacts/presigned/<path:artifact_path> GET|/experiments/search-datasets POST|/artifacts/list GET
/artifacts/presigned-download-url POST|/artifacts/presigned-upload-url POST|/datasets/<dataset_id> DELETE
/datasets/<dataset_id> GET|/datasets/<dataset_id>/add-experiments POST|/datasets/<dataset_id>/experiment-ids GET
/datasets/<dataset_id>/records DELETE|/datasets/<dataset_id>/records GET|/datasets/<dataset_id>/records POST
/datasets/<dataset_id>/remove-experiments POST|/datasets/<dataset_id>/tags PATCH|/datasets/<dataset_id>/tags/<key> DELETE
/datasets/create POST|/datasets/search GET|/datasets/search POST|/experiments/create POST|/experiments/delete POST
/experiments/delete-experiment-tag POST|/experiments/get GET|/experiments/get-by-name GET|/experiments/restore POST
/experiments/search GET|/experiments/search POST|/experiments/set-experiment-tag POST|/experiments/update POST
/get-artifact GET|/get-online-trace-details GET|/get-trace-artifact GET|/issues POST|/issues/<issue_id> GET
/issues/<issue_id> PATCH|/issues/search POST|/label-schemas/create POST|/label-schemas/delete DELETE
/label-schemas/get GET|/label-schemas/get-by-name GET|/label-schemas/list GET|/label-schemas/update PATCH
/logged-models POST|/logged-models/<model_id> DELETE|/logged-models/<model_id> GET|/logged-models/<model_id> PATCH
/logged-models/<model_id>/artifacts/directories GET|/logged-models/<model_id>/artifacts/files GET
/logged-models/<model_id>/params POST|/logged-models/<model_id>/tags PATCH|/logged-models/<model_id>/tags/<tag_key> DELETE
/logged-models/search POST|/metrics/get-history GET|/metrics/get-history-bulk GET|/metrics/get-history-bulk-interval GET
/model-versions/create POST|/model-versions/delete DELETE|/model-versions/delete-tag DELETE|/model-versions/get GET
/model-versions/get-artifact GET|/model-versions/get-download-uri GET|/model-versions/search GET
/model-versions/set-tag POST|/model-versions/transition-stage POST|/model-versions/update PATCH
/registered-models/alias DELETE|/registered-models/alias GET|/registered-models/alias POST
/registered-models/create POST|/registered-models/delete DELETE|/registered-models/delete-tag DELETE
/registered-models/get GET|/registered-models/get-latest-versions GET|/registered-models/get-latest-versions POST
/registered-models/rename POST|/registered-models/search GET|/registered-models/set-tag POST
/registered-models/update PATCH|/roles/assign POST|/roles/create POST|/roles/delete DELETE|/roles/get GET
/roles/list GET|/roles/permissions/add POST|/roles/permissions/list GET|/roles/permissions/remove DELETE
/roles/permissions/update PATCH|/roles/unassign DELETE|/roles/update PATCH|/roles/users/list GET|/runs/create POST
/runs/create-promptlab-run POST|/runs/delete POST|/runs/delete-tag POST|/runs/get GET|/runs/log-batch POST
/runs/log-inputs POST|/runs/log-metric POST|/runs/log-model POST|/runs/log-parameter POST|/runs/outputs POST
/runs/restore POST|/runs/search POST|/runs/set-tag POST|/runs/update POST|/scorers/delete DELETE|/scorers/get GET
/scorers/list GET|/scorers/online-config PUT|/scorers/online-configs GET|/scorers/register POST|/scorers/versions GET
/traces GET|/traces POST|/traces/<request_id> PATCH|/traces/<request_id>/info GET|/traces/<request_id>/tags DELETE
/traces/<request_id>/tags PATCH|/traces/<trace_id> GET|/traces/<trace_id>/assessments POST
/traces/<trace_id>/assessments/<assessment_id> DELETE|/traces/<trace_id>/assessments/<assessment_id> GET
/traces/<trace_id>/assessments/<assessment_id> PATCH|/traces/<trace_id>/tags DELETE|/traces/<trace_id>/tags PATCH
/traces/batchGet GET|/traces/batchGetInfos POST|/traces/calculate-filter-correlation POST|/traces/delete-traces POST
/traces/get GET|/traces/link-prompts POST|/traces/link-to-run POST|/traces/metrics POST|/traces/search POST
/unified-traces GET|/upload-artifact POST|/users/create POST|/users/create-ui POST|/users/current GET
/users/current/permissions GET|/users/delete DELETE|/users/get GET|/users/list GET|/users/permissions/get GET
/users/permissions/grant POST|/users/permissions/list GET|/users/permissions/revoke POST|/users/roles/list GET
/users/update-admin PATCH|/users/update-password PATCH|/graphql GET|/graphql POST
/api/2.0mlflow/experiments/search-datasets POST|/ajax-api/2.0mlflow/experiments/search-datasets POST
/review-queues/create POST|/review-queues/delete POST|/review-queues/get GET|/review-queues/get-by-name GET
/review-queues/get-or-create-user POST|/review-queues/items/add POST|/review-queues/items/list GET
/review-queues/items/remove POST|/review-queues/items/set-status POST|/review-queues/list GET|/review-queues/update POST""".replace(
        "\n", "|"
    ).split("|")
)
# Added by MLflow 3.18.0 (probed there, 0 writes and 0 leaks, in an image of ours with 3.18.0 in it).
KNOWN |= {"/issues/schedule/state POST"}

# Field families: spellings the handlers' protobuf parsing accepts for one object, and which of A's
# and B's objects (the fixture's keys) they name.
FAMILIES = {
    "experiment_id": ["experiment_id", "experimentId"],
    "run_id": ["run_id", "runId", "run_uuid", "runUuid"],
    "model_id": ["model_id", "modelId"],
    "trace_id": ["trace_id", "traceId", "request_id", "requestId"],
    "dataset_id": ["dataset_id", "datasetId"],
    "name": ["name"],
}
# (B's spelling, A's spelling) per family for each alias variant.
ALIAS_VARIANTS = [
    {
        "run_id": ("run_uuid", "runId"),
        "trace_id": ("request_id", "traceId"),
        "experiment_id": ("experiment_id", "experimentId"),
        "model_id": ("model_id", "modelId"),
        "dataset_id": ("dataset_id", "datasetId"),
    },  # noqa: E501
    {
        "run_id": ("run_id", "run_uuid"),
        "trace_id": ("trace_id", "request_id"),
        "experiment_id": ("experimentId", "experiment_id"),
        "model_id": ("modelId", "model_id"),
        "dataset_id": ("datasetId", "dataset_id"),
    },  # noqa: E501
    {"run_id": ("run_uuid", "run_id"), "trace_id": ("request_id", "trace_id")},
    {"run_id": ("runId", "runUuid"), "trace_id": ("traceId", "requestId")},
]
PATH_PARAM = {"model_id": "model_id", "trace_id": "trace_id", "request_id": "trace_id", "dataset_id": "dataset_id"}
WRITTEN = "written-by-B"
DEADLINE_S = 900  # the whole matrix, on a loaded 2-core machine


def _values(team: dict, route: str) -> dict:
    """Every field of the families plus the common ones, naming TEAM's objects (snake_case)."""
    tag = f"{WRITTEN}:{route}"
    return {
        "experiment_id": team["experiment_id"], "experiment_ids": [team["experiment_id"]],
        "run_id": team["run_id"], "model_id": team["model_id"], "trace_id": team["trace_id"],
        "trace_ids": [team["trace_id"]], "request_id": team["trace_id"], "dataset_id": team["dataset_id"],
        "name": team["name"], "version": "1", "alias": "champion", "key": "k", "value": tag,
        "metric_key": "m", "new_name": f"{team['name']}-{WRITTEN}", "description": tag, "path": "",
        "params": [{"key": "intruder", "value": tag}], "tags": [{"key": "intruder", "value": tag}],
        "metrics": [{"key": "intruder", "value": 1, "timestamp": 1, "step": 0}], "source": f"runs:/{team['run_id']}/m",
        "filter": "", "filter_string": "", "max_results": 5, "experiment_name": team["experiment_name"],
        "stage": "Archived", "run_name": tag, "status": "KILLED",
    }  # fmt: skip


def _alias_body(a: dict, b: dict, variant: dict, route: str) -> dict:
    body = _values(b, route)
    for family, spellings in FAMILIES.items():
        for s in spellings:
            body.pop(s, None)
        if family in variant:
            b_name, a_name = variant[family]
            body[b_name], body[a_name] = b[family], a[family]
        else:
            body[spellings[0]] = b[family]
    return body


def _path(rule: str, team: dict) -> str:
    """RULE (Flask's <param> or FastAPI's {param}) with TEAM's objects in its path parameters."""

    def sub(m):
        name = m.group(1).split(":")[-1] if m.group(1) else m.group(2).split(":")[0]  # <conv:name>, {name:conv}
        if name in PATH_PARAM:
            return team[PATH_PARAM[name]]
        if name in ("artifact_path", "path"):
            return f"{team['experiment_id']}/{team['run_id']}/artifacts/secret.txt"
        named = {"assessment_id": team["assessment_id"], "tag_key": "k", "key": "k", "username": team["username"],
                 "experiment_id": team["experiment_id"], "run_id": team["run_id"], "group_name": team["group"],
                 "name": team["name"], "model_name": team["name"], "prompt_name": team["name"]}  # fmt: skip
        return str(named.get(name, "x"))

    return re.sub(r"<([^>]+)>|\{([^}]+)\}", sub, rule)


def _requests(rule: str, method: str, a: dict, b: dict):
    """(label, method, path, kwargs) for each confusion on one route."""
    route = normalise(rule, method)

    def send(label, team_path, values, ctype_body=None, query=None):
        kwargs = {}
        if method == "GET":
            kwargs["params"] = {k: v for k, v in values.items() if not isinstance(v, list) or v}
        elif ctype_body is not None:
            kwargs["params"], kwargs["data"] = query, json.dumps(ctype_body)
            kwargs["headers"] = {"Content-Type": "text/plain"}
        else:
            kwargs["params"], kwargs["json"] = query, values
        return (label, method, _path(rule, team_path), kwargs)

    yield send("direct", a, _values(a, route))
    for i, variant in enumerate(ALIAS_VARIANTS):
        yield send(f"alias{i}", b, _alias_body(a, b, variant, route))
    if "<" in rule:
        b_query = {k: v for k, v in _values(b, route).items() if isinstance(v, str)}
        yield send("path-A", a, _values(b, route), query=b_query if method != "GET" else None)
        yield send("path-B", b, _values(a, route))
    if method != "GET":
        b_query = {k: v for k, v in _values(b, route).items() if isinstance(v, str)}
        yield send("ctype", b, {}, ctype_body=_values(a, route), query=b_query)
    for extra in SPECIAL.get(route, lambda a, b: [])(a, b):
        yield ("special",) + (method, _path(rule, b)) + (extra,)


def _raw_uri(team: dict) -> str:
    return f"s3://{team['bucket']}/{team['experiment_id']}/{team['run_id']}/artifacts"


SPECIAL = {
    "/model-versions/create POST": lambda a, b: [{"json": {"name": b["name"], "source": _raw_uri(a)}}],
    "/experiments/create POST": lambda a, b: [
        {"json": {"name": f"{b['name']}-{uuid.uuid4().hex[:6]}", "artifact_location": _raw_uri(a)}}
    ],
    "/traces POST": lambda a, b: [
        {
            "json": {
                "trace": {
                    "trace_info": {
                        "trace_id": a["trace_id"],
                        "trace_location": {
                            "type": "MLFLOW_EXPERIMENT",
                            "mlflow_experiment": {"experiment_id": b["experiment_id"]},
                        },
                        "request_time": "2026-01-01T00:00:00Z",
                        "state": "OK",
                        "tags": {"intruder": WRITTEN},
                    }
                }
            }
        }
    ],  # fmt: skip
}


@pytest.fixture(scope="module", params=["basic", "oidc"])
def mode(request, stack, eng, settings, tmp_path_factory):
    """The auth mode the module's tests run in: the stack as it is, or switched to oidc (and back)."""
    if request.param == "basic":
        yield None
        return
    with oidc_login.oidc_mode(eng, settings, tmp_path_factory.mktemp("authz-sso"), TOKEN_TTL_S) as sso:
        yield sso


@pytest.fixture(scope="module")
def routes(mode, eng) -> list:
    script = ENUMERATE_OIDC if mode else ENUMERATE
    proc = engine.compose(eng, "exec", "-T", "mlflow", "python", "-c", script, capture=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("["), proc.stderr[-2000:]
    return [tuple(r) for r in json.loads(lines[-1])]


@pytest.fixture(scope="module")
def admin(mode, admin_auth):
    """The admin's requests auth: basic-auth's admin, or carol (of the admin group) with a token."""
    return oidc_login.Bearer(oidc_login.user_token(mode, "carol")) if mode else admin_auth


def test_every_route_has_a_verdict(mode, routes):
    assert ("fastapi:/v1/traces", "POST") in routes, "FastAPI routers not enumerated"
    missing = sorted({normalise(r, m) for r, m in routes if verdict(normalise(r, m), bool(mode)) is None})
    assert not missing, f"routes with no verdict in {__name__}.KNOWN: {missing}"


# oidc mode: the seeded users (docker/standins/oidc/seed.example.json) of each team, and their group.
OIDC_USERS = {"a": ("alice", "team-a"), "b": ("bob", "team-b")}
CLIENT_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(scope="module")
def teams(mode, stack, settings, http):
    """Two users; each owns (MANAGE) an experiment with a run (params, metrics, tags, an artifact), a
    registered model with a version, an alias and a tag, a logged model and a trace with an assessment.
    Basic mode: new users, granted MANAGE by the admin, who creates the objects. Oidc mode: alice and
    bob create their own (the plugin grants a creator MANAGE)."""
    import mlflow
    from mlflow.server import get_app_client

    saved = {k: os.environ.get(k) for k in {*settings.client_env(base={}), *CLIENT_ENV}}
    auth = None if mode else get_app_client("basic-auth", tracking_uri=stack)
    bucket = settings.env["MLFLOW_ARTIFACT_BUCKET"]
    out = {}
    try:
        for team in ("a", "b"):
            for key in CLIENT_ENV:
                os.environ.pop(key, None)
            secret = f"SECRET-{uuid.uuid4().hex}" if team == "a" else f"b-{uuid.uuid4().hex[:8]}"
            if mode:
                user, group = OIDC_USERS[team]
                token = oidc_login.user_token(mode, user)
                os.environ.update(settings.client_env(base={"MLFLOW_TRACKING_TOKEN": token}))
                caller = oidc_login.Bearer(token)
            else:
                os.environ.update(settings.client_env(base={}))
                user, password, group = f"authz-{team}-{time.time_ns()}", os.urandom(12).hex(), ""
                auth.create_user(user, password)
                caller = (user, password)
            client = mlflow.MlflowClient(tracking_uri=stack, registry_uri=stack)
            label = f"authz-{team}-{uuid.uuid4().hex[:12]}"  # names are ids B sends: they carry no secret
            exp = client.create_experiment(label, tags={"t": secret})
            run = client.create_run(exp, run_name=secret, tags={"t": secret}).info.run_id
            client.log_param(run, "p", secret)
            client.log_metric(run, f"m-{secret}", 1.0)
            client.log_metric(run, "m", 2.0)
            client.log_text(run, secret, "secret.txt")
            name = label
            client.create_registered_model(name, tags={"t": secret}, description=secret)
            client.create_model_version(name, f"runs:/{run}/m", run_id=run, description=secret, tags={"t": secret})
            client.set_registered_model_alias(name, "champion", "1")
            lm = client.create_logged_model(exp, name=f"lm-{secret}", tags={"t": secret}, params={"p": secret})
            # The trace's experiment through the environment, not set_experiment(): that is process-wide
            # state a later test's start_run(run_id=...) refuses to contradict.
            with pytest.MonkeyPatch.context() as env:
                env.setenv("MLFLOW_EXPERIMENT_ID", exp)
                with mlflow.start_span(name=f"span-{secret}") as span:
                    span.set_inputs({"q": secret})
            trace_id = span.trace_id
            mlflow.flush_trace_async_logging()
            client.set_trace_tag(trace_id, "t", secret)
            assessment = mlflow.log_feedback(trace_id=trace_id, name="quality", value=secret).assessment_id
            if not mode:
                auth.grant_user_permission(user, "experiment", exp, "MANAGE")
                auth.grant_user_permission(user, "registered_model", name, "MANAGE")
            out[team] = {"user": caller, "username": user, "group": group, "secret": secret,
                         "experiment_id": exp, "run_id": run,
                         "name": name, "model_id": lm.model_id, "trace_id": trace_id, "assessment_id": assessment,
                         "dataset_id": f"d-{uuid.uuid4().hex}", "experiment_name": label,
                         "bucket": bucket}  # fmt: skip
        yield out
    finally:
        for team in out.values() if auth else ():
            auth.delete_user(team["username"])
        mlflow.set_tracking_uri(None)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# Every user's admin flag (and, in oidc mode, whether they are active and how many access tokens
# they hold, B's own tokens aside: B may make those), read in the auth database itself.
USERS = {
    "mlflow_auth": "SELECT username, is_admin FROM users ORDER BY username",
    "mlflow_oidc": "SELECT username, is_admin, active, (SELECT count(*) FROM user_tokens t WHERE t.user_id = u.id"
    " AND u.username <> :'b') FROM users u ORDER BY username",
}


def snapshot(http, stack, admin_auth, a, oidc: bool = False, b: dict = None) -> dict:
    """A's objects, who may use them, and every user's rights, as the admin sees them."""
    api, api3 = f"{stack}/api/2.0/mlflow", f"{stack}/api/3.0/mlflow"
    calls = {
        "experiment": f"{api}/experiments/get?experiment_id={a['experiment_id']}",
        "run": f"{api}/runs/get?run_id={a['run_id']}",
        "artifacts": f"{api}/artifacts/list?run_id={a['run_id']}",
        "model": f"{api}/registered-models/get?name={a['name']}",
        "version": f"{api}/model-versions/get?name={a['name']}&version=1",
        "logged_model": f"{api}/logged-models/{a['model_id']}",
        "trace": f"{api3}/traces/{a['trace_id']}",
        "runs": f"{api}/runs/search",
        "experiment_perms": f"{api}/users/permissions/list?username={a['username']}",
    }
    if oidc:  # the plugin's permission routes instead of basic-auth's
        perms = f"{api}/permissions"
        calls["experiment_perms"] = f"{perms}/experiments/{a['experiment_id']}/users"
        calls["experiment_groups"] = f"{perms}/experiments/{a['experiment_id']}/groups"
        calls["model_perms"] = f"{perms}/registered-models/{a['name']}/users"
        calls["user_perms"] = f"{perms}/users/{a['username']}/experiments"
    state = {}
    for key, url in calls.items():
        if key == "runs":
            r = http.post(url, json={"experiment_ids": [a["experiment_id"]]}, auth=admin_auth, timeout=60)
        else:
            r = http.get(url, auth=admin_auth, timeout=60)
        state[key] = (r.status_code, r.text)
    db = "mlflow_oidc" if oidc else "mlflow_auth"
    state["users"] = (db, str(stackexec.psql(USERS[db], db, {"b": b["username"] if b else ""})))
    return state


def test_team_b_cannot_touch_team_a(mode, routes, teams, http, stack, admin):
    a, b = teams["a"], teams["b"]
    probes = []
    for rule, method in routes:
        route = normalise(rule, method)
        if verdict(route, bool(mode)) == "public":
            continue
        if rule.startswith("fastapi:"):  # basic mode: not served under gunicorn, Flask must answer 404
            path = _path(rule[8:], a)
            if path.startswith("/") and not path.startswith("/api/2.0/mlflow-artifacts"):
                probes.append((route, "direct", method, path, {"json": _values(a, route)} if method != "GET" else {}))
            continue
        probes += [(route, *p) for p in _requests(rule, method, a, b)]
    before = snapshot(http, stack, admin, a, bool(mode), b)
    deadline = time.monotonic() + DEADLINE_S
    leaks, served, errors = [], [], []

    def call(probe):
        route, label, method, path, kwargs = probe
        if time.monotonic() > deadline:
            return probe, None
        for _ in range(2):  # once more after a dropped keep-alive connection
            try:
                return probe, http.request(
                    method, stack + path, auth=b["user"], timeout=30, allow_redirects=False, **kwargs
                )
            except requests.ConnectionError as exc:
                error = exc
            except requests.RequestException as exc:
                return probe, exc
        return probe, error

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for probe, r in pool.map(call, probes):
            assert r is not None, f"matrix deadline of {DEADLINE_S}s passed at {probe[:2]}"
            route, label = probe[:2]
            if isinstance(r, Exception):
                errors.append(f"{route} [{label}] {type(r).__name__}")
                continue
            if a["secret"] in r.text:
                leaks.append(f"{route} [{label}] {r.status_code}: {r.text[:160]}")
            if verdict(route, bool(mode)) == "off" and r.status_code not in (403, 404):
                served.append(f"{route} [{label}] {r.status_code}")
    after = snapshot(http, stack, admin, a, bool(mode), b)
    changed = {k: (before[k][1][:300], after[k][1][:300]) for k in before if before[k] != after[k]}
    print(f"{len(probes)} probes over {len({p[0] for p in probes})} routes")
    assert not leaks and not changed and not served and not errors, (
        f"{len(leaks)} leaks: {leaks[:40]}\nchanged: {json.dumps(changed, indent=1)[:6000]}\noff but served: {served}\nno answer: {errors}"
    )


# Creating an object with a name another team holds answers "already exists": names are one
# namespace for every team (docs/security.md, "Limits"), so these routes are outside the check.
NAMESPACE = {"/experiments/create POST", "/registered-models/create POST"}
# Minimal requests naming one object by id, as clients send them (the matrix sends every field).
BY_ID = [
    ("GET", "/api/2.0/mlflow/runs/get", lambda t: {"params": {"run_id": t["run_id"]}}),
    ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk", lambda t: {"params": {"run_ids": t["run_id"], "metric_key": "m"}}),
    ("GET", "/api/2.0/mlflow/artifacts/list", lambda t: {"params": {"run_id": t["run_id"]}}),
    ("POST", "/api/2.0/mlflow/runs/log-batch", lambda t: {"json": {"run_id": t["run_id"], "params": [{"key": "x", "value": WRITTEN}]}}),
    ("GET", "/api/2.0/mlflow/experiments/get", lambda t: {"params": {"experiment_id": t["experiment_id"]}}),
    ("POST", "/api/2.0/mlflow/runs/create", lambda t: {"json": {"experiment_id": t["experiment_id"]}}),
    ("GET", "/api/2.0/mlflow/logged-models/{model_id}", lambda t: {}),
    ("GET", "/api/3.0/mlflow/traces/{trace_id}", lambda t: {}),
]  # fmt: skip


def _error_code(r) -> str:
    try:
        return (r.json() or {}).get("error_code", "")
    except ValueError:
        return r.text[:40]


def _ghost(a: dict) -> dict:
    """A team whose ids and names nobody holds."""
    return {
        **a,
        "experiment_id": str(10**12 + uuid.uuid4().int % 10**6),
        "run_id": uuid.uuid4().hex,
        "model_id": f"m-{uuid.uuid4().hex}",
        "trace_id": f"tr-{uuid.uuid4().hex}",
        "assessment_id": f"a-{uuid.uuid4().hex}",
        "name": f"authz-ghost-{uuid.uuid4().hex[:12]}",
        "experiment_name": f"authz-ghost-{uuid.uuid4().hex[:12]}",
    }


def test_existence_of_team_a_objects_is_not_revealed(mode, routes, teams, http, stack):
    """B's request naming A's objects gets the same status and error code as the same request
    naming objects nobody holds: on every route (the matrix's direct request) and for the minimal
    by-id requests clients send. MLflow alone answers 404 for a free run id and 403 for A's on
    `metrics/get-history-bulk`, whose validator looks the runs up first."""
    a, b = teams["a"], teams["b"]
    ghost = _ghost(a)
    requests_ = [
        (normalise(rule, method), method, *next(_requests(rule, method, team, b))[2:])
        for rule, method in routes
        if verdict(normalise(rule, method), bool(mode)) == "probe" and not rule.startswith("fastapi:")
        and normalise(rule, method) not in NAMESPACE
        for team in (a, ghost)
    ] + [
        (f"{path} {method} (minimal)", method, path.format(**team), kwargs(team))
        for method, path, kwargs in BY_ID
        for team in (a, ghost)
    ]  # fmt: skip
    differ = []
    for (route, method, path, kwargs), (_, _, ghost_path, ghost_kwargs) in zip(
        requests_[::2], requests_[1::2], strict=True
    ):
        answers = [
            http.request(method, stack + p, auth=b["user"], timeout=30, allow_redirects=False, **kw)
            for p, kw in ((path, kwargs), (ghost_path, ghost_kwargs))
        ]
        seen = [(r.status_code, _error_code(r)) for r in answers]
        if seen[0] != seen[1]:
            differ.append(f"{route}: A's {seen[0]} {answers[0].text[:80]!r}, free {seen[1]} {answers[1].text[:80]!r}")
    assert not differ, "\n".join(differ)
    own = http.get(f"{stack}/api/2.0/mlflow/runs/get", params={"run_id": b["run_id"]}, auth=b["user"], timeout=30)
    assert own.status_code == 200, own.text

"""AUTH_MODE=oidc against a real OpenID provider, the `sso` profile's (docker/standins/oidc:
oidc-provider, OpenID Certified, on Debian's Node.js), with headless Chromium, the mlflow client
and raw HTTP as callers, through Nginx. The module switches the running stack to oidc
(AUTH_MODE=oidc in Compose's environment, over .env) with the profile, and back to basic after.

The issuer is http://idp.localhost:9000: Chromium resolves *.localhost to loopback and the mlflow
container reaches the provider by a network alias. This host's resolver does not know the name,
so the browserless flows here send their requests to http://127.0.0.1:9000 (oidc_login's base_url).
"""

import base64
import html
import json
import re
import secrets
import time
import urllib.parse
from types import SimpleNamespace

import pytest
import requests
import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.conftest import poll
from tests.stack import oidc_login
from tests.stack.browser import page_text
from tests.stack.lifecycle_fixtures import client_env, environment, run_cli

IDP = oidc_login.IDP
TTL = 30  # lifetime of the mlflow-cli client's access tokens here, seconds: short, so expiry is seen
SEARCH = "/api/2.0/mlflow/experiments/search"


@pytest.fixture(scope="module")
def basic_user(stack, settings, admin_auth):
    """A basic-auth user with READ on an experiment, made before the switch to oidc:
    docs/authentication.md ("Switching modes") says both work again after the switch back."""
    from ctl.lifecycle.common import auth_client, client

    user, password = f"sso-basic-{time.time_ns()}", secrets.token_urlsafe(16)
    with environment(client_env(settings, *admin_auth)):
        auth_client().create_user(user, password)
        experiment_id = client().create_experiment(f"sso-basic/{user}")
        auth_client().grant_user_permission(user, "experiment", experiment_id, "READ")
    return SimpleNamespace(auth=(user, password), experiment_id=experiment_id)


@pytest.fixture(scope="module")
def sso(stack, eng, settings, tmp_path_factory, basic_user):
    with oidc_login.oidc_mode(eng, settings, tmp_path_factory.mktemp("sso"), TTL) as sso:
        sso.stack = stack
        yield sso
    # Back in basic mode: the basic-auth user and their grant work as before the switch.
    get = f"{stack}/api/2.0/mlflow/experiments/get"
    r = sso.http.get(get, params={"experiment_id": basic_user.experiment_id}, auth=basic_user.auth, timeout=30)
    assert r.status_code == 200, r.text


def test_basic_auth_credentials_open_nothing_in_oidc_mode(sso, stack, basic_user, admin_auth):
    for auth in (basic_user.auth, admin_auth):
        r = sso.http.get(f"{stack}{SEARCH}", params={"max_results": 1}, auth=auth, timeout=30)
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED", r.text


def service_token(sso) -> str:
    """The `ci-team-a` service account's token (client credentials), as a CI job gets it."""
    return oidc_login.client_credentials(sso.issuer, "ci-team-a", sso.env["OIDC_CI_CLIENT_SECRET"], base_url=IDP)[
        "access_token"
    ]


def api(sso, stack, token: str, path: str = SEARCH, method: str = "GET", **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if path == SEARCH and method == "GET":
        kwargs.setdefault("params", {"max_results": 1})
    return sso.http.request(method, f"{stack}{path}", headers=headers, timeout=30, **kwargs)


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture
def client_as(stack, settings, monkeypatch):
    """The real mlflow client with a bearer token (MLFLOW_TRACKING_TOKEN), trusting our CA."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(settings.ca_path))

    def make(token: str):
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        mlflow.set_tracking_uri(stack)
        return mlflow.MlflowClient(tracking_uri=stack)

    yield make
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def teams(sso, settings, tmp_path_factory):
    """Teams A and B applied by `./mlflowctl teams` in oidc mode, as an admin (carol, of the admin
    group) with her token: each team's provider group gets EDIT on the team's experiment."""
    suffix = time.time_ns() % 10**9
    spec = {
        "experiment_types": ["training"],
        "teams": [{"name": t, "project_prefixes": [f"sso{t[-1]}{suffix}"]} for t in ("team-a", "team-b")],
    }
    teams_file = tmp_path_factory.mktemp("sso-teams") / "teams.yaml"
    teams_file.write_text(yaml.safe_dump(spec))
    env = {
        **client_env(settings, "", ""),
        "AUTH_MODE": "oidc",
        "MLFLOW_TRACKING_TOKEN": oidc_login.user_token(sso, "carol"),
    }
    env = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    out = run_cli(env, "teams", "--file", str(teams_file), in_process=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "grant group team-a EDIT on experiment" in out.stdout, out.stdout
    again = run_cli(env, "teams", "--file", str(teams_file), in_process=False)
    assert again.returncode == 0 and "teams: no changes" in again.stdout, again.stdout + again.stderr
    names = {t: f"{t}/sso{t[-1]}{suffix}/training" for t in ("team-a", "team-b")}
    ids = {t: api(sso, sso.stack, env["MLFLOW_TRACKING_TOKEN"], "/api/2.0/mlflow/experiments/get-by-name",
                  params={"experiment_name": n}).json()["experiment"]["experiment_id"] for t, n in names.items()}  # fmt: skip
    return SimpleNamespace(ids=ids, names=names)


def sign_in(chromium, stack: str, username: str, password: str):
    """In the browser: open the UI, follow it to the provider's login form, sign in, land back."""
    chromium.call("Page.navigate", url=f"{stack}/")
    href = "location.href"
    poll("the provider's login form", lambda: evaluate(chromium, "!!document.querySelector('[name=password]')"), 60)
    assert evaluate(chromium, href).startswith("http://idp.localhost:9000/"), evaluate(chromium, href)
    evaluate(
        chromium,
        f"document.querySelector('[name=username]').value = {json.dumps(username)};"
        f"document.querySelector('[name=password]').value = {json.dumps(password)};"
        "document.querySelector('[name=password]').form.submit(); true",
    )
    poll("back in the MLflow UI", lambda: evaluate(chromium, href).startswith(stack), 60)


def evaluate(chromium, expression: str):
    return chromium.call("Runtime.evaluate", expression=expression)["result"].get("value")


def test_browser_signs_in_through_the_provider(sso, stack, chromium):
    sign_in(chromium, stack, "alice", sso.env["OIDC_USER_PASSWORD"])
    poll("the experiments page", lambda: "Experiments" in page_text(chromium), 90, every_s=0.25)
    assert "Alice" in page_text(chromium)


def test_browser_logout_asks_for_the_password_again(sso, stack, chromium):
    """In Chromium: /logout, the provider's sign-out form (submitted by its page's script), back at
    the plugin's page; the next visit to the UI shows the provider's login form, not the UI."""
    sign_in(chromium, stack, "bob", sso.env["OIDC_USER_PASSWORD"])
    poll("the experiments page", lambda: "Experiments" in page_text(chromium), 90, every_s=0.25)
    on_form = "location.host === 'idp.localhost:9000' && !!document.querySelector('[name=password]')"
    evaluate(chromium, "window.signedIn = true")  # the signed-in page's mark: a later page has none
    chromium.call("Page.navigate", url=f"{stack}/logout")
    # The provider redirects to the plugin's page only after its confirm POST ended its session
    # (which may send the browser on to the login form). The plugin's own pages (/oidc/ui/user
    # shows "Experiments" too) may be where sign-in landed: hence the mark.
    back = f"!window.signedIn && (location.href.startsWith({json.dumps(stack + '/oidc/ui')}) || ({on_form}))"
    poll("back at the plugin's page", lambda: evaluate(chromium, back), 60, every_s=0.25)
    chromium.call("Page.navigate", url=f"{stack}/")
    poll("the provider's login form again", lambda: evaluate(chromium, on_form), 60, every_s=0.25)


def browse(sso, http, url: str, method: str = "GET", data: dict = None):
    """A browser's requests without the browser: redirects followed by hand (the provider's URLs
    sent to 127.0.0.1:9000), HTML asked for. Returns (final URL, response)."""
    for _ in range(15):
        r = http.request(
            method, url.replace(sso.issuer, IDP), data=data, headers={"Accept": "text/html"}, allow_redirects=False
        )
        if not r.is_redirect:
            return url, r
        url, method, data = urllib.parse.urljoin(url, r.headers["Location"]), "GET", None
    raise AssertionError(f"more than 15 redirects, last {url}")


def form(r) -> tuple[str, dict]:
    """The action and hidden fields of the page's first form."""
    action = html.unescape(re.search(r'action="([^"]*)"', r.text).group(1))
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', r.text))
    return action, fields


def test_logout_ends_the_plugins_session_and_the_providers(sso, stack, settings):
    """Browserless, so every step is seen: sign in, /logout, the provider's sign-out form (a
    browser submits it by script), back at the plugin's page; then the API refuses the old
    session and the UI asks the provider's login form again (no silent sign-in)."""
    http = settings.http()  # cookies of its own
    url, r = browse(sso, http, f"{stack}/")
    assert url.startswith(sso.issuer) and 'name="password"' in r.text, url
    action, _ = form(r)
    creds = {"username": "alice", "password": sso.env["OIDC_USER_PASSWORD"]}
    url, r = browse(sso, http, urllib.parse.urljoin(url, action), "POST", creds)
    assert url == f"{stack}/" and r.status_code == 200, url
    me = f"{stack}/ajax-api/2.0/mlflow/users/current"
    assert http.get(me, timeout=30).status_code == 200
    url, r = browse(sso, http, f"{stack}/logout")
    assert url.startswith(f"{sso.issuer}/session/end"), url
    action, fields = form(r)
    url, r = browse(sso, http, urllib.parse.urljoin(url, action), "POST", fields)
    assert url.startswith(f"{stack}/oidc/ui"), url
    assert http.get(me, timeout=30).status_code == 401
    url, r = browse(sso, http, f"{stack}/")
    assert url.startswith(sso.issuer) and 'name="password"' in r.text, (url, r.text[:300])


def test_team_a_sees_team_a_not_team_b_in_the_ui(sso, stack, teams, chromium):
    chromium.call("Network.enable")
    sign_in(chromium, stack, "alice", sso.env["OIDC_USER_PASSWORD"])
    chromium.call("Page.navigate", url=f"{stack}/#/experiments")
    poll("team A's experiment listed", lambda: teams.names["team-a"] in page_text(chromium), 90, every_s=0.25)
    assert teams.names["team-b"] not in page_text(chromium)
    searches = [url for status, url in chromium.responses if "experiments/search" in url and status == 200]
    assert searches, chromium.responses


def test_team_a_member_with_a_token_reads_team_a_not_team_b(sso, teams, client_as):
    from mlflow.exceptions import MlflowException

    client = client_as(oidc_login.user_token(sso, "alice"))
    assert client.get_experiment(teams.ids["team-a"]).name == teams.names["team-a"]
    with pytest.raises(MlflowException) as denied:
        client.get_experiment(teams.ids["team-b"])
    assert denied.value.get_http_status_code() == 403
    names = {e.name for e in client.search_experiments(max_results=1000)}
    assert teams.names["team-a"] in names and teams.names["team-b"] not in names


def test_service_account_token_logs_with_the_mlflow_client(sso, teams, client_as):
    from mlflow.exceptions import MlflowException

    token = service_token(sso)
    assert claims(token)["aud"] == sso.env["OIDC_AUDIENCE"] and claims(token)["groups"] == ["team-a"]
    client = client_as(token)
    run = client.create_run(teams.ids["team-a"])
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    client.log_param(run.info.run_id, "lr", "0.1")
    client.set_terminated(run.info.run_id)
    got = client.get_run(run.info.run_id)
    assert got.data.metrics == {"loss": 0.5} and got.data.params == {"lr": "0.1"}
    with pytest.raises(MlflowException) as denied:
        client.create_run(teams.ids["team-b"])
    assert denied.value.get_http_status_code() == 403


def forged(payload: dict, kid: str = None) -> str:
    key = RSAKey.generate_key(2048)
    return jwt.encode({"alg": "RS256", "typ": "at+jwt", **({"kid": kid} if kid else {})}, payload, key)


def test_bad_tokens_get_401_json(sso, stack):
    good = service_token(sso)
    assert api(sso, stack, good).status_code == 200
    header, payload, signature = good.split(".")
    body = {**claims(good), "groups": ["mlflow-admins"]}
    raised = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid")
    bad = {
        "forged (another key, same kid)": forged(claims(good), kid),
        "tampered payload": f"{header}.{raised}.{signature}",
        "alg none": f"{none_header}.{payload}.",
        "garbage": "not-a-token",
        "wrong audience": forged({**claims(good), "aud": "another-api"}, kid),
    }
    wrong_aud = oidc_login.client_credentials(
        sso.issuer, "ci-team-a", sso.env["OIDC_CI_CLIENT_SECRET"], resource="urn:another-api", base_url=IDP
    )["access_token"]
    assert claims(wrong_aud)["aud"] != sso.env["OIDC_AUDIENCE"]
    bad["wrong audience, signed by the provider"] = wrong_aud
    for name, token in bad.items():
        r = api(sso, stack, token)
        assert r.status_code == 401, (name, r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("application/json"), name
        assert r.json()["error_code"] == "UNAUTHENTICATED", (name, r.text)
    assert api(sso, stack, good).status_code == 200  # the server is still up and still serves


def test_expired_token_gets_401_and_a_removed_user_loses_access(sso, stack):
    token = oidc_login.user_token(sso, "alice")
    assert api(sso, stack, token).status_code == 200
    seed = json.loads(sso.seed.read_text())
    seed["users"] = [u for u in seed["users"] if u["username"] != "alice"]
    sso.seed.write_text(json.dumps(seed))  # in place: the bind mount sees the same file
    with pytest.raises(oidc_login.OIDCError):
        oidc_login.user_token(sso, "alice")  # the provider no longer knows her: no new token
    assert api(sso, stack, token).status_code == 200  # her token lives until it expires
    exp = claims(token)["exp"]
    error = poll(
        "401 once alice's token expired",
        lambda: (r := api(sso, stack, token)).status_code == 401 and r.json(),
        TTL + 30,
        every_s=2,
    )
    assert time.time() >= exp - 1 and error["error_code"] == "UNAUTHENTICATED"

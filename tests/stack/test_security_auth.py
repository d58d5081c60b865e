"""Authentication and authorisation against the running stack, through Nginx over HTTPS.

Already in test_e2e.py (not repeated here): 401 for no credentials / wrong password / unknown user
with one identical body; a non-admin cannot read a private experiment, create users or grant
itself a permission. Here: the failed-login rate limit in Nginx, the upstream default password,
and the rest of what a non-admin must not do.

Nginx keys its failed-login budget on the client address. Every client on this machine reaches a
port published on 127.0.0.1 through the engine's port forwarding, which (with podman) shows Nginx
one address, the network gateway's. So the rate-limit test runs its client in a throwaway
container on the stack's `frontend` network: an address of its own, talking to `nginx:443`
directly, as a client on another machine would.
"""

import os
import re
import time

import pytest

from ctl import engine

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
BURST = 20  # nginx/mlflow.conf.template: limit_req zone=auth_failures burst=20 (then 10 a minute)
UPSTREAM_DEFAULT_PASSWORD = "password1234"  # MLflow's shipped admin password (CVE-2026-2635)

# Runs in our image (requests is there). Credentials come on stdin, never on a command line.
LIMIT_PROBE = """
import json, os, socket, sys, time
import requests
from requests.adapters import HTTPAdapter
user, password, host, burst = sys.stdin.read().split("\\n")[:4]
class Verified(HTTPAdapter):  # connect to nginx:443, verify the certificate for the public host name
    def init_poolmanager(self, *a, **kw):
        kw["server_hostname"] = host
        super().init_poolmanager(*a, **kw)
s = requests.Session(); s.trust_env = False; s.verify = "/tmp/ca.crt"; s.mount("https://", Verified())
url, headers = "https://nginx" + SEARCH, {"Host": host}
failed, valid, deadline = [], [], time.monotonic() + 120
while len(failed) < 3 * int(burst) and time.monotonic() < deadline:
    failed.append(s.get(url, headers=headers, auth=(user, "wrong-" + os.urandom(4).hex()), timeout=60).status_code)
    valid.append(s.get(url, headers=headers, auth=(user, password), timeout=60).status_code)
    if failed[-1] == 429:
        break
after = s.get(url, headers=headers, auth=("no-such-user", "x"), timeout=10)
probe = socket.create_connection(("nginx", 443), timeout=10)  # the source address Nginx sees
print(json.dumps({"address": probe.getsockname()[0], "failed": failed, "valid": valid,
                  "after": after.status_code, "after_hsts": after.headers.get("Strict-Transport-Security", ""),
                  "valid_after": s.get(url, headers=headers, auth=(user, password), timeout=10).status_code}))
""".replace("SEARCH", repr(SEARCH))


def test_failed_logins_rate_limited_valid_user_unaffected(stack, admin_auth, stack_env, compose, run_in_image):
    """A burst of wrong passwords from one address ends in 429; the admin's requests from the same
    address, interleaved in the same window, all succeed. Bounded: 3 x BURST attempts, 120 s."""
    secrets = "\n".join([*admin_auth, stack_env["MLFLOW_PUBLIC_HOST"], str(BURST)]) + "\n"
    out = run_in_image(LIMIT_PROBE, "-v", f"{engine.ROOT / 'certs' / 'ca.crt'}:/tmp/ca.crt:ro", input=secrets)
    failed, valid = out["failed"], out["valid"]
    assert failed[-1] == 429, f"no 429 after {len(failed)} failed logins: {failed}"
    # The whole burst is answered 401 first: one bad password is never a lock-out.
    assert failed[: BURST + 1] == [401] * (BURST + 1)
    assert set(valid) == {200}, f"valid requests were limited: {valid}"
    # 429 still carries HSTS, the next failure is refused too (the budget refills slowly), the admin is not.
    assert out["after"] == 429 and "max-age=" in out["after_hsts"]
    assert out["valid_after"] == 200
    # The error-log line a fail2ban filter bans on (docs/security.md): Nginx logs to stderr, i.e. the
    # container's log, which the engine keeps (`compose logs nginx`).
    log = compose("logs", "--no-color", "--since", "10m", "nginx", timeout=60).stdout
    assert re.search(
        r'limiting requests, excess: [\d.]+ by zone "auth_failures".*, client: ' + re.escape(out["address"]) + ",", log
    )


def test_admin_password_is_not_upstream_default(stack, http, admin_auth, stack_env):
    assert stack_env["MLFLOW_ADMIN_PASSWORD"] != UPSTREAM_DEFAULT_PASSWORD
    assert len(stack_env["MLFLOW_ADMIN_PASSWORD"]) >= 16
    r = http.get(stack + SEARCH, auth=(admin_auth[0], UPSTREAM_DEFAULT_PASSWORD), timeout=10)
    assert r.status_code == 401


@pytest.fixture
def two_teams(mlflow_admin, stack, unique):
    """Team A's user owns an experiment with a run; team B's user has no grant on it."""
    from mlflow.server import get_app_client

    auth_client = get_app_client("basic-auth", tracking_uri=stack)
    users = {}
    for team in ("a", "b"):
        name, password = f"sec-{team}-{time.time_ns()}", os.urandom(12).hex()
        auth_client.create_user(name, password)
        users[team] = (name, password)
    exp_name = f"sec/team-a/{unique}"
    exp_id = mlflow_admin.create_experiment(exp_name)
    run_id = mlflow_admin.create_run(exp_id).info.run_id
    auth_client.grant_user_permission(users["a"][0], "experiment", exp_id, "MANAGE")
    yield {"users": users, "exp_id": exp_id, "exp_name": exp_name, "run_id": run_id}
    for name, _ in users.values():
        auth_client.delete_user(name)


def test_other_team_cannot_read_experiment(stack, http, two_teams):
    t = two_teams
    api = f"{stack}/api/2.0/mlflow"
    reads = [
        ("GET", "experiments/get-by-name", {"params": {"experiment_name": t["exp_name"]}}),
        ("GET", "runs/get", {"params": {"run_id": t["run_id"]}}),
        ("GET", "artifacts/list", {"params": {"run_id": t["run_id"]}}),
        ("GET", "metrics/get-history", {"params": {"run_id": t["run_id"], "metric_key": "loss"}}),
    ]
    for method, path, kwargs in reads:
        as_a = http.request(method, f"{api}/{path}", auth=t["users"]["a"], timeout=10, **kwargs)
        as_b = http.request(method, f"{api}/{path}", auth=t["users"]["b"], timeout=10, **kwargs)
        assert as_a.status_code == 200, (path, as_a.text[:200])
        assert as_b.status_code == 403, (path, as_b.status_code, as_b.text[:200])
    # Searches are filtered rather than refused: team B sees neither the experiment nor its run.
    for path, body, key in (
        ("experiments/search", {"filter": f"name = '{t['exp_name']}'", "max_results": 10}, "experiments"),
        ("runs/search", {"experiment_ids": [t["exp_id"]]}, "runs"),
    ):
        as_a = http.post(f"{api}/{path}", json=body, auth=t["users"]["a"], timeout=10)
        as_b = http.post(f"{api}/{path}", json=body, auth=t["users"]["b"], timeout=10)
        assert as_a.status_code == 200 and len(as_a.json().get(key, [])) == 1, (path, as_a.text[:200])
        assert as_b.status_code == 200 and as_b.json().get(key, []) == [], (path, as_b.text[:200])


def test_non_admin_cannot_administer_users_or_permissions(stack, http, two_teams, admin_auth):
    t = two_teams
    b, a = t["users"]["b"], t["users"]["a"]
    api2, api3 = f"{stack}/api/2.0/mlflow", f"{stack}/api/3.0/mlflow"
    attempts = [
        ("PATCH", f"{api2}/users/update-admin", {"username": b[0], "is_admin": True}),
        ("PATCH", f"{api2}/users/update-password", {"username": admin_auth[0], "password": "taken-over-123"}),
        ("PATCH", f"{api2}/users/update-password", {"username": a[0], "password": "taken-over-123"}),
        ("DELETE", f"{api2}/users/delete", {"username": a[0]}),
        (
            "POST",
            f"{api3}/users/permissions/revoke",
            {"username": a[0], "resource_type": "experiment", "resource_id": t["exp_id"]},
        ),
        ("POST", f"{api3}/roles/create", {"name": f"r{time.time_ns()}", "workspace": "default"}),
    ]
    for method, url, body in attempts:
        r = http.request(method, url, json=body, auth=b, timeout=10)
        assert r.status_code == 403, (method, url, r.status_code, r.text[:200])
    # Nothing changed: the admin and team A still log in, and team A still reads its experiment.
    assert http.get(stack + SEARCH, auth=admin_auth, timeout=10).status_code == 200
    r = http.get(f"{api2}/experiments/get", params={"experiment_id": t["exp_id"]}, auth=a, timeout=10)
    assert r.status_code == 200
    r = http.get(f"{api2}/users/get", params={"username": b[0]}, auth=admin_auth, timeout=10)
    assert r.status_code == 200 and r.json()["user"]["is_admin"] is False

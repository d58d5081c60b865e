"""Browserless OpenID Connect helpers for the test OIDC provider (docker/standins/oidc), and
`oidc_mode`, which switches the running stack to AUTH_MODE=oidc with the `sso` profile.

``base_url`` (e.g. ``http://127.0.0.1:19000``) replaces the issuer's scheme://host:port in
every URL requested, for when the issuer host name does not resolve on the test host.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import requests

from ctl import engine
from tests.conftest import ROOT

PROFILES = engine.default_profiles() + ("sso",)
SEED = ROOT / "docker" / "standins" / "oidc" / "seed.example.json"
IDP = "http://127.0.0.1:9000"  # the provider, from this host (the issuer's name does not resolve here)
CLI_CLIENT, CLI_REDIRECT = "mlflow-cli", "http://127.0.0.1:8765/callback"  # a public client (PKCE)

TIMEOUT = 15
MAX_HOPS = 12


class OIDCError(Exception):
    """A step of the flow failed; ``status`` and ``body`` hold the last HTTP response."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(f"{message} (HTTP {status}): {body[:300]}")
        self.status = status
        self.body = body


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _rebase(url: str, issuer: str, base_url: str | None) -> str:
    """Point ``url`` at ``base_url`` when it is on the issuer's origin."""
    if base_url and _origin(url) == _origin(issuer):
        return base_url.rstrip("/") + url[len(_origin(issuer)) :]
    return url


def discover(issuer: str, base_url: str | None = None, session: requests.Session | None = None) -> dict:
    """Return the provider's discovery document."""
    http = session or requests.Session()
    url = _rebase(issuer.rstrip("/") + "/.well-known/openid-configuration", issuer, base_url)
    resp = http.get(url, timeout=TIMEOUT)
    if resp.status_code != 200:
        raise OIDCError("discovery failed", resp.status_code, resp.text)
    return resp.json()


def _client_auth(data: dict, client_id: str, client_secret: str | None):
    """client_secret_basic for confidential clients, client_id in the body for public ones."""
    if client_secret is None:
        data["client_id"] = client_id
        return None
    return (quote(client_id, safe=""), quote(client_secret, safe=""))


def _token_request(http, conf, issuer, base_url, data, client_id, client_secret) -> dict:
    auth = _client_auth(data, client_id, client_secret)
    resp = http.post(
        _rebase(conf["token_endpoint"], issuer, base_url), data=data, auth=auth, timeout=TIMEOUT, allow_redirects=False
    )
    if resp.status_code != 200:
        raise OIDCError("token request failed", resp.status_code, resp.text)
    return resp.json()


def _login_form_action(html: str) -> str | None:
    """The action of the page's form that has a password field, if any."""
    for form in re.findall(r"<form\b[^>]*>.*?</form>", html, flags=re.S | re.I):
        if re.search(r'name="password"', form):
            action = re.search(r'action="([^"]*)"', form)
            return unescape(action.group(1)) if action else ""
    return None


def login_code_flow(
    issuer: str,
    client_id: str,
    redirect_uri: str,
    username: str,
    password: str,
    client_secret: str | None = None,
    scope: str = "openid email profile groups",
    resource: str | None = None,
    session: requests.Session | None = None,
    base_url: str | None = None,
    prompt: str | None = None,
) -> dict:
    """Authorization code flow with PKCE S256 and the HTML login form; returns the token response.

    A refresh token needs ``offline_access`` in scope and ``prompt="consent"`` (OIDC rule).
    Stops at the redirect to ``redirect_uri`` (never requests it). Raises OIDCError on failure
    (a rejected login raises with ``status`` 401).
    """
    http = session or requests.Session()
    conf = discover(issuer, base_url, http)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if resource:
        params["resource"] = resource
    if prompt:
        params["prompt"] = prompt

    resp = http.get(
        _rebase(conf["authorization_endpoint"], issuer, base_url), params=params, timeout=TIMEOUT, allow_redirects=False
    )
    code = None
    for _ in range(MAX_HOPS):
        if resp.is_redirect:
            location = urljoin(resp.url, resp.headers["Location"])
            if location.startswith(redirect_uri):
                query = parse_qs(urlsplit(location).query)
                if "error" in query:
                    raise OIDCError(
                        f"authorization error {query['error'][0]}: {query.get('error_description', [''])[0]}",
                        resp.status_code,
                        location,
                    )
                if query.get("state", [None])[0] != state:
                    raise OIDCError("state mismatch in authorization response", resp.status_code, location)
                code = query["code"][0]
                break
            resp = http.get(_rebase(location, issuer, base_url), timeout=TIMEOUT, allow_redirects=False)
            continue
        action = _login_form_action(resp.text) if resp.status_code == 200 else None
        if action is None:
            raise OIDCError("unexpected response during login", resp.status_code, resp.text)
        resp = http.post(
            urljoin(resp.url, action),
            data={"username": username, "password": password},
            timeout=TIMEOUT,
            allow_redirects=False,
        )
        if resp.status_code == 401 or (resp.status_code == 200 and _login_form_action(resp.text) is not None):
            raise OIDCError(f"login rejected for {username}", resp.status_code, resp.text)
    if code is None:
        raise OIDCError("too many redirects during login", resp.status_code, resp.text)

    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier}
    if resource:
        data["resource"] = resource
    return _token_request(http, conf, issuer, base_url, data, client_id, client_secret)


def client_credentials(
    issuer: str,
    client_id: str,
    client_secret: str,
    resource: str | None = None,
    scope: str | None = None,
    base_url: str | None = None,
) -> dict:
    """client_credentials grant; returns the token response (raises OIDCError on failure)."""
    http = requests.Session()
    conf = discover(issuer, base_url, http)
    data = {"grant_type": "client_credentials"}
    if resource:
        data["resource"] = resource
    if scope:
        data["scope"] = scope
    return _token_request(http, conf, issuer, base_url, data, client_id, client_secret)


class Bearer(requests.auth.AuthBase):
    """requests' auth= for an access token."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


@contextlib.contextmanager
def oidc_mode(eng, settings, workdir: Path, cli_token_ttl: int):
    """The running stack in AUTH_MODE=oidc (Compose's environment, over .env) with the `sso`
    profile, its seed the example's with the mlflow-cli client's tokens living CLI_TOKEN_TTL
    seconds; back in basic mode after. Yields what user_token needs."""
    seed = workdir / "seed.json"
    spec = json.loads(SEED.read_text())
    for client in spec["clients"]:
        if client["client_id"] == CLI_CLIENT:
            client["access_token_ttl"] = cli_token_ttl
    seed.write_text(json.dumps(spec))
    seed.chmod(0o644)  # read by the provider's uid in the container
    env = {**eng.env, "AUTH_MODE": "oidc", "OIDC_SEED_FILE": str(seed)}
    oidc_eng = dataclasses.replace(eng, env=env)
    engine.ensure_images(oidc_eng, settings.env, PROFILES)
    proc = engine.up(oidc_eng, timeout_s=300, capture=True, profiles=PROFILES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        yield SimpleNamespace(seed=seed, issuer=settings.env["OIDC_ISSUER"], env=settings.env, http=settings.http())
    finally:
        engine.compose(eng, "rm", "--stop", "--force", "oidc", capture=True, profiles=PROFILES)
        proc = engine.up(eng, timeout_s=300, capture=True)
        assert proc.returncode == 0, proc.stderr[-3000:]


def user_token(sso, username: str) -> str:
    """An access token of USERNAME (a seeded user) from the provider's login form (code flow, PKCE)."""
    tokens = login_code_flow(
        sso.issuer, CLI_CLIENT, CLI_REDIRECT, username, sso.env["OIDC_USER_PASSWORD"], base_url=IDP
    )
    return tokens["access_token"]

"""The stack's settings, read once from `.env` (written by `./mlflowctl bootstrap`) and the compose
model. Every tool and test reaches the stack through this object, and hands what a client or
child process needs to it explicitly (client_env()): no module writes os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ctl.errors import CommandError
from jobs.render import public_url

ROOT = Path(__file__).resolve().parents[2]  # scripts/ctl/settings.py
# requests lets these override the `verify=` a client passes (psf/requests#3829), so a client told
# to trust only our CA must not inherit them.
CA_OVERRIDES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def parse_env(text: str) -> dict:
    """KEY=VALUE lines of a .env file; comments and blank lines skipped."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def setting(name: str, default: str = "", root: Path = ROOT) -> str:
    """A variable as Compose reads it: the environment, then .env (read afresh: bootstrap may have
    just written it), then DEFAULT. For what is needed before, or without, a bootstrapped .env."""
    path = root / ".env"
    return os.environ.get(name) or (parse_env(path.read_text()).get(name) if path.exists() else None) or default


def without_ca_overrides(env) -> dict:
    return {k: v for k, v in env.items() if k not in CA_OVERRIDES}


@dataclass(frozen=True)
class Settings:
    env: dict  # the values of .env
    root: Path = ROOT

    @classmethod
    def load(cls, root: Path = ROOT) -> Settings:
        path = root / ".env"
        if not path.exists():
            raise CommandError(f"no {path}: run `./mlflowctl up` (or `./mlflowctl bootstrap`) first")
        values = parse_env(path.read_text())
        # As for Compose: a variable set in the environment overrides the same one in .env.
        return cls({**values, **{k: v for k, v in os.environ.items() if k in values}}, root)

    @property
    def https_port(self) -> str:
        return self.env.get("HTTPS_PORT", "443")

    def url(self, host: str = "") -> str:
        """https://HOST[:PORT], HOST defaulting to MLFLOW_PUBLIC_HOST. The server certificate
        also covers localhost, so url("localhost") works before DNS does."""
        return public_url(self.env, host)

    @property
    def public_url(self) -> str:
        return self.url()

    @property
    def ca_path(self) -> Path:
        """The private CA that signed the server certificate: the only one our clients trust."""
        return self.root / "certs" / "ca.crt"

    @property
    def admin_auth(self) -> tuple[str, str]:
        return self.env["MLFLOW_ADMIN_USERNAME"], self.env["MLFLOW_ADMIN_PASSWORD"]

    def db_uri(self, db: str = "mlflow", pgbouncer: bool = True) -> str:
        """SQLAlchemy URI of a database as the `mlflow` role sees it on the engine's network;
        the password is PGPASSWORD's (the mlflow service has it), never part of the URI."""
        host, port = ("pgbouncer", 6432) if pgbouncer else ("postgres", 5432)
        return f"postgresql+psycopg2://mlflow@{host}:{port}/{db}"

    def client_env(self, base: dict = None, auth: tuple = None, url: str = None) -> dict:
        """Environment for an MLflow client or child process: BASE (default: this process's
        environment) with the tracking URI, basic-auth credentials (default: the admin's; none when
        BASE holds a bearer token, MLFLOW_TRACKING_TOKEN, and no AUTH is given: AUTH_MODE=oidc), our
        CA, and downloads through the server's artifact proxy (presigned URLs would name the S3
        store's internal address)."""
        base = without_ca_overrides(os.environ if base is None else base)
        user, password = auth or self.admin_auth
        credentials = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
        if auth is None and base.get("MLFLOW_TRACKING_TOKEN"):
            credentials = {}
        return {
            **base,
            "MLFLOW_TRACKING_URI": url or self.public_url,
            **credentials,
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(self.ca_path),
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        }

    def http(self, auth: tuple = None):
        """A requests session trusting only our CA, without retries, optionally authenticated."""
        import requests

        session = requests.Session()
        session.trust_env = False  # the CA overrides above, and proxies, come from the environment
        session.verify = str(self.ca_path)
        session.auth = auth
        return session


def one_shot_services(model: dict) -> set:
    """Services another service waits on to complete (render-config, migrate, create-bucket)."""
    return {
        dep
        for svc in model["services"].values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }


def long_running_services(model: dict) -> list:
    """The stack's servers in the compose model (every service that is not a one-shot job)."""
    return sorted(set(model["services"]) - one_shot_services(model))

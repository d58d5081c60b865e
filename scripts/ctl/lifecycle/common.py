"""Shared by the lifecycle commands: errors, the MLflow clients from the standard env vars, names.

mlflow is imported inside functions: `mlflowctl up/status` load this module too and should not pay
for importing mlflow (~2 s).
"""

import datetime
import os
import re

from ctl.errors import CommandError

# Experiments are TEAM/PROJECT/TYPE, registered models PROJECT-ALGORITHM (docs/lifecycle.md).
TEAM_RE = re.compile(r"^[a-z][a-z0-9-]*$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MODEL_NAME_RE = re.compile(r"^(?P<project>[a-z][a-z0-9_]*)-(?P<algorithm>[a-z0-9][a-z0-9_-]*)$")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise CommandError("MLFLOW_TRACKING_URI is not set (e.g. https://localhost; see docs/lifecycle.md)")
    return uri


def client():
    import mlflow

    uri = tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def auth_client():
    import warnings

    with warnings.catch_warnings():  # mlflow.server's import warns about starlette internals: not ours to fix
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client
    return get_app_client("basic-auth", tracking_uri=tracking_uri())


def current_user() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME", "")


def error_code(exc) -> str:
    return getattr(exc, "error_code", "")

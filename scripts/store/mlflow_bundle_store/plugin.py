"""Entry points named in pyproject.toml. MLflow loads them while `mlflow.tracking` is still
importing, so the store module is imported only when a store is built."""

import os
import urllib.parse

from mlflow.exceptions import MlflowException

SCHEME = "bundle-postgresql"
# The one driver: psycopg 3 (SQLAlchemy 2.1's default for postgresql://) prepares statements,
# which PgBouncer in transaction mode breaks.
DRIVER_SCHEME = "postgresql+psycopg2"


def sqlalchemy_uri(store_uri: str) -> str:
    """bundle-postgresql://user@host:port/db?opts -> postgresql+psycopg2://user@host:port/db?opts"""
    parsed = urllib.parse.urlparse(store_uri)
    if parsed.scheme == DRIVER_SCHEME:  # e.g. a read replica given in SQLAlchemy's own form
        return store_uri
    if parsed.scheme != SCHEME:
        raise MlflowException.invalid_parameter_value(f"Expected a {SCHEME}:// URI, got scheme '{parsed.scheme}'")
    return urllib.parse.urlunparse(parsed._replace(scheme=DRIVER_SCHEME))


def tracking_store(store_uri, artifact_uri=None):
    """`mlflow.tracking_store` entry point for bundle-postgresql:// URIs."""
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.tracking._tracking_service.utils import _SERVER_ARTIFACT_ROOT_ENV_VAR

    from mlflow_bundle_store.tracking import BundleSqlAlchemyStore

    if MLFLOW_ENABLE_WORKSPACES.get():
        raise MlflowException.invalid_parameter_value(f"{SCHEME}:// does not support workspaces")
    if artifact_uri is None:  # as MLflow's own builder: inside the server, the server's root
        artifact_uri = os.environ.get(_SERVER_ARTIFACT_ROOT_ENV_VAR, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    read_uri = os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR)
    return BundleSqlAlchemyStore(
        sqlalchemy_uri(store_uri), artifact_uri, read_db_uri=read_uri and sqlalchemy_uri(read_uri)
    )


def registry_store(store_uri, **_):
    """`mlflow.model_registry_store` entry point: MLflow's own registry store, same database."""
    from mlflow.server.handlers import ModelRegistryStoreRegistryWrapper

    return ModelRegistryStoreRegistryWrapper._get_sqlalchemy_store(sqlalchemy_uri(store_uri))

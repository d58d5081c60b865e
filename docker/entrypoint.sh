#!/bin/sh
# Entrypoint of the MLflow image.
set -eu
# MLflow 3.17 passes an EMPTY endpoint to boto3 ("ValueError: Invalid endpoint:" on every artifact
# call while /health stays green). Compose cannot omit a variable, so an empty one means AWS S3.
if [ -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]; then
    unset MLFLOW_S3_ENDPOINT_URL
fi
# Prometheus multiprocess files from a previous run would be added into this run's metrics.
if [ -n "${MLFLOW_EXPOSE_PROMETHEUS:-}" ]; then
    rm -rf "${MLFLOW_EXPOSE_PROMETHEUS:?}"
    mkdir -p "$MLFLOW_EXPOSE_PROMETHEUS"
fi
# Artifact spool (TMPDIR, a disk volume): when the server starts, drop what a killed worker left
# half-written. Only then: any other command in this image (`compose run mlflow ...`) mounts the
# same volume while the live server spools uploads in it.
if [ "${1:-}" = mlflow ] && [ "${2:-}" = server ] && [ -d "${TMPDIR:-}" ] && [ -w "$TMPDIR" ]; then
    find "$TMPDIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
exec "$@"

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
# Artifact spool (TMPDIR, a disk volume): drop what a killed worker left half-written.
if [ -d "${TMPDIR:-}" ] && [ -w "$TMPDIR" ]; then
    find "$TMPDIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
exec "$@"

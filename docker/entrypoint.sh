#!/bin/sh
# Entrypoint of the MLflow image (the native runner runs it too).
set -eu
# Prometheus multiprocess files from a previous run would be added into this run's metrics.
if [ -n "${MLFLOW_EXPOSE_PROMETHEUS:-}" ]; then
    rm -rf "${MLFLOW_EXPOSE_PROMETHEUS:?}"
    mkdir -p "$MLFLOW_EXPOSE_PROMETHEUS"
fi
exec "$@"

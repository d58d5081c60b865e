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
# AUTH_MODE (.env): basic, MLflow's basic-auth (`--app-name bundle-auth`), or oidc, the
# mlflow-oidc-auth plugin (`bundle-oidc`). The plugin's app is ASGI (FastAPI), which gunicorn's
# gthread worker cannot serve: gunicorn runs uvicorn's worker instead, and MLflow's Flask app runs
# on that worker's thread pool, so --threads does not apply. Every other gunicorn option stays.
if [ "${1:-}" = mlflow ] && [ "${2:-}" = server ]; then
    case "${AUTH_MODE:-basic}" in
        basic) ;;
        oidc)
            for name in OIDC_ISSUER OIDC_CLIENT_ID OIDC_CLIENT_SECRET; do
                eval "value=\${$name:-}"
                [ -n "$value" ] || { echo "AUTH_MODE=oidc needs $name (.env)" >&2; exit 2; }
            done
            for arg; do
                shift
                [ "$arg" = bundle-auth ] && arg=bundle-oidc
                set -- "$@" "$arg"
            done
            MLFLOW_GUNICORN_OPTS=$(printf '%s\n' "${MLFLOW_GUNICORN_OPTS:-}" | sed -E 's/--(worker-class|threads) [^ ]+//g')
            export MLFLOW_GUNICORN_OPTS="--worker-class uvicorn.workers.UvicornWorker $MLFLOW_GUNICORN_OPTS"
            ;;
        *) echo "AUTH_MODE must be basic or oidc, not '${AUTH_MODE}'" >&2; exit 2 ;;
    esac
fi
# Artifact spool (TMPDIR, a disk volume): when the server starts, drop what a killed worker left
# half-written. Only then: any other command in this image (`compose run mlflow ...`) mounts the
# same volume while the live server spools uploads in it.
if [ "${1:-}" = mlflow ] && [ "${2:-}" = server ] && [ -d "${TMPDIR:-}" ] && [ -w "$TMPDIR" ]; then
    find "$TMPDIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
exec "$@"

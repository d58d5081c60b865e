"""One-shot: purge soft-deleted runs and logged models for good, with their artifacts (the last
step of `./mlflowctl cleanup --execute`). Runs in the `mlflow` container, the only place that
reaches the tracking database: MLFLOW_BACKEND_STORE_URI and PGPASSWORD are the server's own.
MLFLOW_TRACKING_URI/USERNAME/PASSWORD name the server and a user allowed to delete the artifacts.

    python -m jobs.purge --run-ids ID,ID --logged-model-ids ID,ID

This is `mlflow gc`'s own core, scoped to these runs and logged models. The `mlflow gc` CLI also
hard-deletes EVERY soft-deleted experiment on the server when --experiment-ids is not given
(mlflow/cli/__init__.py, 3.17.2), even with --run-ids: on a shared server that destroys other
teams' restorable experiments, so the core is called with skip_experiments=True. Artifacts go
through get_artifact_repository(run.info.artifact_uri), i.e. through the server's artifact proxy
for mlflow-artifacts:/ URIs (MLFLOW_TRACKING_URI must be set, mlflow/mlflow#7558). Runs without
artifacts no longer hang (mlflow/mlflow#15461, checked on 3.17.2); logged models are purged
explicitly because a run's model artifacts live under models/ in MLflow 3 (mlflow/mlflow#17240).
"""

import argparse
import os


def ids(text: str) -> list:
    return [x for x in text.split(",") if x]


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m jobs.purge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run-ids", type=ids, default=[])
    p.add_argument("--logged-model-ids", type=ids, default=[])
    args = p.parse_args(argv)
    from mlflow.cli import _gc_tracking_resources
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(os.environ["MLFLOW_BACKEND_STORE_URI"], "mlflow-artifacts:/")  # no local ./mlruns default
    _gc_tracking_resources(
        store,
        run_ids=args.run_ids,
        experiment_ids=None,
        logged_model_ids=args.logged_model_ids,
        older_than=None,
        time_delta=0,
        skip_experiments=True,
        skip_logged_models=False,
    )
    print(f"purged {len(args.run_ids)} run(s) and {len(args.logged_model_ids)} logged model(s)")


if __name__ == "__main__":
    main()

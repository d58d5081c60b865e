"""Example training job: a small scikit-learn classifier, tracked the way docs/lifecycle.md asks.

  MLFLOW_TRACKING_URI=https://localhost MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... \
  MLFLOW_TRACKING_SERVER_CERT_PATH=certs/ca.crt \
  .venv/bin/python examples/train.py --experiment recsys/reco/training --register-as reco-sgd

Practices: tags for team/project/git commit/data version; params; per-step metrics sent with
`client.batching.MetricBatcher` (log_batch, up to 1000 metrics per request across steps:
`log_metrics` would be one request per step); the training data as a dataset input; a signature and input example; the
model registered through `mlflowctl register`'s prefix check. Prints one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def make_data(seed: int, rows: int = 600):
    """Synthetic click data: 8 features, a binary label."""
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=8, n_informative=5, random_state=seed)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    df["label"] = y
    return df


def train(args) -> dict:
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import accuracy_score, log_loss, ndcg_score
    from sklearn.model_selection import train_test_split

    client = mlflow.MlflowClient()
    # Experiments come from `mlflowctl teams`: creating them here races when many jobs start (#1811).
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"train: experiment {args.experiment!r} does not exist: create it with `./mlflowctl teams`")
    team, project = (args.experiment.split("/") + ["", ""])[:2]
    df = make_data(args.seed)
    features = df.drop(columns="label")
    X_train, X_val, y_train, y_val = train_test_split(features, df["label"], test_size=0.25, random_state=args.seed)
    dataset = mlflow.data.from_pandas(df, name="synthetic-clicks", targets="label")
    params = {"alpha": args.alpha, "epochs": args.epochs, "seed": args.seed, "model": "SGDClassifier(log_loss)"}
    tags = {
        "team": team,
        "project": project,
        "git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
        "data_version": args.data_version or dataset.digest,
    }

    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=args.run_name, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_input(dataset, context="training")
        model = SGDClassifier(loss="log_loss", alpha=args.alpha, random_state=args.seed)
        sys.path.insert(0, str(ROOT))
        from client.batching import MetricBatcher

        with MetricBatcher(client, run.info.run_id) as batcher:  # one request per 1000 points, across steps
            for step in range(args.epochs):
                model.partial_fit(X_train, y_train, classes=np.array([0, 1]))
                p_val = model.predict_proba(X_val)[:, 1]
                val_ndcg = float(ndcg_score([y_val.to_numpy()], [p_val]))
                batcher.log(
                    {
                        "train_loss": float(log_loss(y_train, model.predict_proba(X_train))),
                        "val_accuracy": float(accuracy_score(y_val, p_val > 0.5)),
                        "val_ndcg": val_ndcg,
                    },
                    step=step,
                )
        signature = infer_signature(X_val, model.predict(X_val))
        info = mlflow.sklearn.log_model(model, name="model", signature=signature, input_example=X_val.head(3))
    result = {
        "run_id": run.info.run_id,
        "model_uri": f"runs:/{run.info.run_id}/model",
        "model_id": info.model_id,
        "val_ndcg": val_ndcg,
        "metric_batch_requests": batcher.requests,
    }
    if args.register_as:
        from ctl.lifecycle.registration import register_model_safe
        from ctl.lifecycle.teams import load_teams

        version = register_model_safe(result["model_uri"], args.register_as, load_teams(args.teams_file), args.team)
        result.update(registered_model=args.register_as, version=version.version)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="TEAM/PROJECT/TYPE, created by `mlflowctl teams`")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-version", help="tag data_version (default: the dataset digest)")
    parser.add_argument("--run-name")
    parser.add_argument("--register-as", metavar="NAME", help="register as PROJECT-ALGORITHM (team prefix checked)")
    parser.add_argument("--team", help="team to register for (admin users)")
    parser.add_argument("--teams-file", default=str(ROOT / "examples" / "teams.yaml"))
    print(json.dumps(train(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

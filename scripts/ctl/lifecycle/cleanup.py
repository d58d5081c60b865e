"""Cleanup of old runs: keep the best N and anything registered, purge the rest with their artifacts."""

import os
import time

from ctl.errors import CommandError
from ctl.lifecycle.common import client, current_user, error_code

DAY_MS = 86_400_000
MAX_PAGES = 10_000  # bounds every pagination loop


def _pages(fetch):
    token = None
    for _ in range(MAX_PAGES):
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return
    raise CommandError("pagination did not finish")


def _experiment(mlf, ref: str):
    exp = mlf.get_experiment_by_name(ref)
    if exp is None and ref.isdigit():
        try:
            exp = mlf.get_experiment(ref)
        except Exception as exc:
            if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
    if exp is None:
        raise CommandError(f"experiment {ref!r} not found (or not visible to user {current_user()!r})")
    return exp


def artifact_bytes(uri: str) -> int:
    """Total size under an artifact URI (run or logged model), listed through the same repository gc uses."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo, total = get_artifact_repository(uri), 0
    todo: list[str | None] = [None]  # None: the root
    for _ in range(100_000):
        if not todo:
            return total
        for info in repo.list_artifacts(todo.pop()):
            if info.is_dir:
                todo.append(info.path)
            else:
                total += info.file_size or 0
    raise CommandError(f"too many artifact folders under {uri}")


def registered_run_ids(mlf, run_ids) -> set:
    """Runs that back a registered model version: deleting them would break models:/ URIs."""
    out, run_ids = set(), list(run_ids)
    for i in range(0, len(run_ids), 100):
        quoted = ", ".join(f"'{r}'" for r in run_ids[i : i + 100])
        out |= {
            mv.run_id
            for mv in _pages(lambda token, q=quoted: mlf.search_model_versions(f"run_id IN ({q})", page_token=token))
        }
    return out


def plan(mlf, exp, max_age_days: float, keep_top_n: int, metric: str, lower_is_better: bool, now_ms=None) -> dict:
    """Which runs go: started before the cutoff, not in the top N by METRIC, not registered."""
    from mlflow.entities import ViewType

    cutoff = (now_ms or int(time.time() * 1000)) - int(max_age_days * DAY_MS)

    def fetch(view):
        return lambda token: mlf.search_runs(
            [exp.experiment_id], run_view_type=view, max_results=1000, page_token=token
        )

    active = list(_pages(fetch(ViewType.ACTIVE_ONLY)))
    ranked = sorted(
        (r for r in active if metric in r.data.metrics),
        key=lambda r: r.data.metrics[metric],
        reverse=not lower_is_better,
    )
    top = {r.info.run_id for r in ranked[:keep_top_n]}
    old = [r for r in active if r.info.start_time < cutoff and r.info.run_id not in top]
    # Runs already soft-deleted (by a user or an interrupted cleanup) past the cutoff are purged too.
    trashed = [r for r in _pages(fetch(ViewType.DELETED_ONLY)) if r.info.start_time < cutoff]
    registered = registered_run_ids(mlf, [r.info.run_id for r in old + trashed])
    doomed = [r for r in old if r.info.run_id not in registered]
    trashed = [r for r in trashed if r.info.run_id not in registered]
    doomed_ids = {r.info.run_id for r in doomed + trashed}
    models = [
        m
        for m in _pages(lambda token: mlf.search_logged_models([exp.experiment_id], page_token=token))
        if m.source_run_id in doomed_ids
    ]
    return {
        "cutoff": cutoff,
        "active": active,
        "top": top,
        "registered": registered,
        "runs": doomed,
        "trashed": trashed,
        "logged_models": models,
    }


# The tracking password goes in on stdin, never on a command line (the host's or the container's).
_PASSWORD_FROM_STDIN = 'IFS= read -r MLFLOW_TRACKING_PASSWORD && export MLFLOW_TRACKING_PASSWORD && exec "$@"'


def purge(run_ids: list, logged_model_ids: list):
    """scripts/jobs/purge.py in the running `mlflow` container, as the user running this command, against
    the server itself (http://mlflow:5000, in its allowed-hosts list)."""
    from ctl import stackexec as sx

    user, password = current_user(), os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    sx.run(
        "exec",
        "-T",
        "-e",
        "MLFLOW_TRACKING_URI=http://mlflow:5000",
        "-e",
        f"MLFLOW_TRACKING_USERNAME={user}",
        "mlflow",
        "sh",
        "-c",
        _PASSWORD_FROM_STDIN,
        "sh",
        "python",
        "-m",
        "jobs.purge",
        "--run-ids",
        ",".join(run_ids),
        "--logged-model-ids",
        ",".join(logged_model_ids),
        input=password + "\n",
        timeout=3600,
    )


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_cleanup(args):
    """Delete runs older than --max-age-days, except the top N by --metric, and purge them.

    Dry run by default: prints the plan and changes nothing. With --execute: soft-deletes the
    runs and the logged models they produced, then purges them permanently with MLflow's gc
    (rows from the backend store, objects from the artifact store) and reports the bytes freed.
    Never deleted: the best --keep-top-n runs by --metric (runs without it rank last), runs that
    back a registered model version, runs newer than the cutoff. Runs of this experiment already
    soft-deleted before the cutoff are purged too (a re-run finishes an interrupted cleanup).
    Needs: an admin (or MANAGE on the experiment) in MLFLOW_TRACKING_USERNAME/PASSWORD. The purge
    writes to the tracking database directly, as `mlflow gc` does, so --execute runs it where the
    database is reachable: in this stack's `mlflow` container (scripts/jobs/purge.py).
    """
    if args.keep_top_n < 0 or args.max_age_days < 0:
        raise CommandError("--keep-top-n and --max-age-days must be >= 0")
    mlf = client()
    exp = _experiment(mlf, args.experiment)
    p = plan(mlf, exp, args.max_age_days, args.keep_top_n, args.metric, args.lower_is_better)
    cutoff = time.strftime("%Y-%m-%d %H:%M", time.gmtime(p["cutoff"] / 1000))
    print(
        f"experiment {exp.name} ({exp.experiment_id}): {len(p['active'])} active runs; cutoff {cutoff} UTC; "
        f"protected: top {len(p['top'])} by {args.metric}, {len(p['registered'])} old registered"
    )
    sizes = {}
    for r in p["runs"] + p["trashed"]:
        sizes[r.info.run_id] = artifact_bytes(r.info.artifact_uri)
        started = time.strftime("%Y-%m-%d", time.gmtime(r.info.start_time / 1000))
        value = r.data.metrics.get(args.metric)
        state = " (already deleted)" if r in p["trashed"] else ""
        print(
            f"  run {r.info.run_id} {r.info.run_name or '-'} started {started} {args.metric}="
            f"{'-' if value is None else f'{value:.4g}'} {_fmt_bytes(sizes[r.info.run_id])}{state}"
        )
    for m in p["logged_models"]:
        sizes[m.model_id] = artifact_bytes(m.artifact_location)
        print(f"  logged model {m.model_id} of run {m.source_run_id} {_fmt_bytes(sizes[m.model_id])}")
    total = sum(sizes.values())
    run_ids = [r.info.run_id for r in p["runs"] + p["trashed"]]
    model_ids = [m.model_id for m in p["logged_models"]]
    if not args.execute:
        print(
            f"dry run: would delete {len(run_ids)} run(s), {len(model_ids)} logged model(s), {_fmt_bytes(total)}; "
            f"pass --execute to do it"
        )
        return 0
    if not run_ids:
        print("nothing to delete")
        return 0
    for m in p["logged_models"]:
        mlf.delete_logged_model(m.model_id)
    for r in p["runs"]:
        mlf.delete_run(r.info.run_id)
    print(
        f"soft-deleted {len(p['runs'])} run(s) and {len(model_ids)} logged model(s); purging with mlflow gc", flush=True
    )
    try:
        purge(run_ids, model_ids)
    except Exception as exc:
        raise CommandError(
            f"purge failed ({str(exc).splitlines()[0] if str(exc) else exc!r}); runs stay soft-deleted: "
            f"re-run this command with --execute to finish (logged models: {','.join(model_ids) or '-'})"
        ) from exc
    left = sum(artifact_bytes(r.info.artifact_uri) for r in p["runs"] + p["trashed"])
    left += sum(artifact_bytes(m.artifact_location) for m in p["logged_models"])
    print(
        f"purged {len(run_ids)} run(s) and {len(model_ids)} logged model(s): freed {_fmt_bytes(total - left)} "
        f"({total - left} bytes)"
    )
    if left:
        raise CommandError(f"{left} bytes of artifacts remain after gc: check the artifact store credentials")
    return 0

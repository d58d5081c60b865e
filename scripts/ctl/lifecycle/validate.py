"""Validation gates: a model version's metrics against thresholds and its signature; the result is
tagged on the version (`validation_status`), which `promote` checks before it moves an alias."""

from ctl.errors import CommandError
from ctl.lifecycle.common import client, now_iso


def parse_thresholds(items) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise CommandError(f"threshold {item!r} is not NAME=NUMBER")
    return out


def resolve_model_uri(mlf, uri: str):
    """models:/NAME/VERSION or models:/NAME@ALIAS -> ModelVersion."""
    if not uri.startswith("models:/"):
        raise CommandError(f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    ref = uri[len("models:/") :]
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        return mlf.get_model_version_by_alias(name, alias)
    name, _, version = ref.rpartition("/")
    if not name or not version.isdigit():
        raise CommandError(f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    return mlf.get_model_version(name, version)


def validation_failures(mlf, mv, minimums: dict, maximums: dict) -> list:
    import mlflow.pyfunc

    failures = []
    try:
        model = mlflow.pyfunc.load_model(f"models:/{mv.name}/{mv.version}")
    except Exception as exc:
        return [f"model does not load: {str(exc).splitlines()[0] if str(exc) else repr(exc)}"]
    if model.metadata.signature is None:
        failures.append("model has no signature (log it with signature=infer_signature(...))")
    metrics = dict(mlf.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    if getattr(mv, "model_id", None):  # MLflow 3: metrics may live on the logged model too
        metrics.update({m.key: m.value for m in mlf.get_logged_model(mv.model_id).metrics or []})
    for key, bound in minimums.items():
        if key not in metrics:
            failures.append(f"metric {key} not logged")
        elif metrics[key] < bound:
            failures.append(f"{key}={metrics[key]:.6g} < {bound:g}")
    for key, bound in maximums.items():
        if key not in metrics:
            failures.append(f"metric {key} not logged")
        elif metrics[key] > bound:
            failures.append(f"{key}={metrics[key]:.6g} > {bound:g}")
    return failures


def cmd_validate(args):
    """Load a model version, check its signature and logged metrics, and tag the result.

    Sets the version tags validation_status (passed|failed), validation_reason and validated_at;
    `promote --to challenger` requires validation_status=passed. Metrics are the source run's
    (and, in MLflow 3, the logged model's). Exits 1 with the reason when a check fails.
    """
    minimums, maximums = parse_thresholds(args.min_metric), parse_thresholds(args.max_metric)
    mlf = client()
    mv = resolve_model_uri(mlf, args.model_uri)
    failures = validation_failures(mlf, mv, minimums, maximums)
    status = "failed" if failures else "passed"
    reason = "; ".join(failures) or "all checks passed: " + (
        ", ".join([f"{k}>={v:g}" for k, v in minimums.items()] + [f"{k}<={v:g}" for k, v in maximums.items()])
        or "loads, signature"
    )
    for key, value in (
        ("validation_status", status),
        ("validation_reason", reason[:5000]),
        ("validated_at", now_iso()),
    ):
        mlf.set_model_version_tag(mv.name, mv.version, key, value)
    if failures:
        raise CommandError(f"{mv.name} v{mv.version} failed validation: {reason}")
    print(f"{mv.name} v{mv.version} passed validation ({reason})")
    return 0

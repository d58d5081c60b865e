"""Promotion with registry aliases (candidate -> challenger -> champion) and validation gates.

MLflow has no transaction over several alias moves, so a promotion is a fixed sequence of
idempotent steps, with its intent recorded first in a registered-model tag. Each alias move is
one atomic update on the server, and the new alias is set before anything else is removed or
archived, so `models:/NAME@champion` resolves at every moment. A run that stops half way leaves
the intent tag: the next `promote` refuses and `promote NAME --repair` finishes the steps.
"""

import json

from ctl.errors import CommandError
from ctl.lifecycle.common import client, error_code, now_iso

ALIASES = ("candidate", "challenger", "champion")
BELOW = {"challenger": "candidate", "champion": "challenger"}  # alias a promotion takes the version from
INTENT_TAG = "lifecycle.promotion_in_progress"


def repair_command(name: str) -> str:
    return f"./mlflowctl promote {name} --repair"


def _alias_version(mlf, name, alias):
    try:
        return mlf.get_model_version_by_alias(name, alias).version
    except Exception as exc:
        if error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def check_gates(mlf, name: str, version: str, alias: str):
    """Refuse (changing nothing) a promotion that skips a gate. Returns the alias' current holder."""
    model = mlf.get_registered_model(name)
    if INTENT_TAG in model.tags:
        intent = json.loads(model.tags[INTENT_TAG])
        raise CommandError(
            f"{name} has a half-done promotion (v{intent['version']} to @{intent['alias']}, "
            f"started {intent['started_at']}): run `{repair_command(name)}` first"
        )
    mv = mlf.get_model_version(name, version)
    if mv.status != "READY":
        raise CommandError(f"{name} v{version} is {mv.status}, not READY")
    if alias == "champion":
        challenger = _alias_version(mlf, name, "challenger")
        if challenger != str(version):
            raise CommandError(
                f"refused: {name} v{version} is not the current challenger "
                f"(@challenger is {'v' + challenger if challenger else 'unset'}); "
                f"promote it with --to challenger first"
            )
    if alias in ("challenger", "champion") and mv.tags.get("validation_status") != "passed":
        raise CommandError(
            f"refused: {name} v{version} has validation_status={mv.tags.get('validation_status', 'unset')}; "
            f"run `./mlflowctl validate models:/{name}/{version} --min-metric ...` first"
        )
    return _alias_version(mlf, name, alias)


def _steps(mlf, intent):
    """The promotion, as (description, idempotent action) pairs, new alias first."""
    name, version, alias, below = intent["model"], intent["version"], intent["alias"], BELOW.get(intent["alias"])
    previous, at = intent.get("previous"), intent["started_at"]

    def drop_below():
        if below and _alias_version(mlf, name, below) == version:
            mlf.delete_registered_model_alias(name, below)

    steps = [(f"set @{alias} -> v{version}", lambda: mlf.set_registered_model_alias(name, alias, version))]
    if below:
        steps.append((f"remove @{below} from v{version}", drop_below))
    steps.append(
        (
            f"tag v{version} promoted_to_{alias}_at",
            lambda: mlf.set_model_version_tag(name, version, f"promoted_to_{alias}_at", at),
        )
    )
    if alias == "champion" and previous and previous != version:

        def archive():
            mlf.set_model_version_tag(name, previous, "archived_at", at)
            mlf.set_model_version_tag(name, previous, "archived_by_version", version)

        steps.append((f"archive previous champion v{previous}", archive))
    steps.append(("clear the intent tag", lambda: mlf.delete_registered_model_tag(name, INTENT_TAG)))
    return steps


def _run_steps(mlf, intent):
    done = "record intent"
    for what, action in _steps(mlf, intent):
        try:
            action()
        except Exception as exc:
            holder = _alias_version(mlf, intent["model"], intent["alias"])
            raise CommandError(
                f"promotion of {intent['model']} v{intent['version']} to @{intent['alias']} stopped after "
                f"'{done}' at '{what}': {str(exc).splitlines()[0] if str(exc) else repr(exc)}; "
                f"@{intent['alias']} resolves to {'v' + holder if holder else 'nothing'}; "
                f"finish it with: {repair_command(intent['model'])}"
            ) from exc
        done = what
        print(f"  {what}", flush=True)


def promote(mlf, name: str, version: str, alias: str) -> dict:
    version = str(version)
    previous = check_gates(mlf, name, version, alias)
    if previous == version:
        print(f"{name} v{version} is already @{alias}: nothing to do")
        return {}
    intent = {"model": name, "version": version, "alias": alias, "previous": previous, "started_at": now_iso()}
    mlf.set_registered_model_tag(name, INTENT_TAG, json.dumps(intent))
    _run_steps(mlf, intent)
    print(f"promoted {name} v{version} to @{alias}" + (f" (was v{previous})" if previous else ""))
    return intent


def repair(mlf, name: str) -> dict:
    model = mlf.get_registered_model(name)
    if INTENT_TAG not in model.tags:
        print(f"{name}: no promotion in progress, nothing to repair")
        return {}
    intent = json.loads(model.tags[INTENT_TAG])
    print(
        f"{name}: finishing the promotion of v{intent['version']} to @{intent['alias']} (started {intent['started_at']})"
    )
    _run_steps(mlf, intent)
    print(f"repaired: {name} v{intent['version']} is @{intent['alias']}")
    return intent


def cmd_promote(args):
    """Move an alias to a model version, through the gates, or finish a half-done promotion.

    Gates: --to candidate takes any READY version; --to challenger needs the version tag
    validation_status=passed (set by `validate`); --to champion needs the version to be the
    current @challenger. A refused promotion changes nothing.
    Steps: record intent (model tag lifecycle.promotion_in_progress) -> set the new alias ->
    remove the lower alias from the version -> tag promoted_to_ALIAS_at -> tag the previous
    champion archived_at -> clear the intent. If a step fails, the command says which, where
    @ALIAS points, and prints the repair command; `promote MODEL --repair` re-runs the steps.
    """
    mlf = client()
    if args.repair:
        if args.version or args.to:
            raise CommandError("--repair takes only MODEL")
        repair(mlf, args.name)
        return 0
    if not args.version or not args.to:
        raise CommandError("give MODEL VERSION --to candidate|challenger|champion (or MODEL --repair)")
    promote(mlf, args.name, args.version, args.to)
    return 0

"""Day-2 operations: team namespaces, safe registration, alias promotion, validation, cleanup.

Connection: the standard MLflow variables, as every MLflow client reads them:
  MLFLOW_TRACKING_URI                     e.g. https://mlflow.example.com
  MLFLOW_TRACKING_USERNAME / _PASSWORD    basic-auth user (admin for `teams` and `cleanup`)
  MLFLOW_TRACKING_TOKEN                   AUTH_MODE=oidc: the provider's access token instead
  MLFLOW_TRACKING_SERVER_CERT_PATH        CA bundle of the server (certs/ca.crt)
See docs/lifecycle.md for the naming convention, the promotion state machine and cleanup.
"""

import os


def _command(sub, name, func, help_):
    p = sub.add_parser(name, help=help_, description=func.__doc__)
    p.set_defaults(func=func)
    return p


def register(sub):
    """Register this module's subcommands on mlflowctl's subparsers."""
    from ctl.lifecycle import cleanup, promote, registration, teams, validate

    default_teams = os.environ.get("MLFLOW_TEAMS_FILE", "examples/teams.yaml")

    p = _command(sub, "teams", teams.cmd_teams, "create team users, experiments and permissions from a YAML file")
    p.add_argument("--file", default=default_teams, help="teams YAML (default: $MLFLOW_TEAMS_FILE or %(default)s)")
    p.add_argument(
        "--credentials-out",
        metavar="PATH",
        help="write the random passwords of NEW users here (JSON, mode 0600); required when users are missing",
    )
    p.add_argument("--dry-run", action="store_true", help="print the changes without making them")

    p = _command(sub, "register", registration.cmd_register, "register a logged model under a team's project prefix")
    p.add_argument("model_uri", metavar="MODEL_URI", help="runs:/RUN_ID/model or models:/m-... (the logged model)")
    p.add_argument("name", metavar="NAME", help="registered model name: PROJECT-ALGORITHM, e.g. reco-als")
    p.add_argument("--team", help="team to register for (needed when the user is admin or in several teams)")
    p.add_argument("--file", default=default_teams, help="teams YAML (default: $MLFLOW_TEAMS_FILE or %(default)s)")

    p = _command(
        sub, "promote", promote.cmd_promote, "move an alias (candidate, challenger, champion) through its gates"
    )
    p.add_argument("name", metavar="MODEL", help="registered model name")
    p.add_argument("version", metavar="VERSION", nargs="?", help="model version to promote (not with --repair)")
    p.add_argument("--to", choices=promote.ALIASES, help="target alias")
    p.add_argument("--repair", action="store_true", help="finish a promotion that stopped half way")

    p = _command(
        sub, "validate", validate.cmd_validate, "check a model version's metrics and signature; tag validation_status"
    )
    p.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument(
        "--min-metric", action="append", default=[], metavar="NAME=VALUE", help="metric must be >= VALUE (repeatable)"
    )
    p.add_argument(
        "--max-metric", action="append", default=[], metavar="NAME=VALUE", help="metric must be <= VALUE (repeatable)"
    )

    p = _command(
        sub, "cleanup", cleanup.cmd_cleanup, "delete old runs except the best N, then purge them and their artifacts"
    )
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment name (team/project/type) or id")
    p.add_argument(
        "--max-age-days", type=float, default=90, help="runs started before now - this are old (default %(default)s)"
    )
    p.add_argument(
        "--keep-top-n", type=int, default=10, help="never delete the best N runs by --metric (default %(default)s)"
    )
    p.add_argument("--metric", default="val_ndcg", help="metric that ranks runs (default %(default)s)")
    p.add_argument("--lower-is-better", action="store_true", help="rank ascending (losses)")
    p.add_argument("--execute", action="store_true", help="really delete (default: dry run, changes nothing)")

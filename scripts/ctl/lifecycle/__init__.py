"""Day-2 operations: team namespaces, safe registration, alias promotion, validation, cleanup.

Connection: the standard MLflow variables, as every MLflow client reads them:
  MLFLOW_TRACKING_URI                     e.g. https://mlflow.example.com
  MLFLOW_TRACKING_USERNAME / _PASSWORD    basic-auth user (admin for `teams` and `cleanup`)
  MLFLOW_TRACKING_SERVER_CERT_PATH        CA bundle of the server (certs/ca.crt)
See docs/lifecycle.md for the naming convention, the promotion state machine and cleanup.
"""

import os


def register(sub):
    """Register this module's subcommands on mlflowctl's subparsers."""
    from ctl.lifecycle import cleanup, promote, registration, teams, validate

    default_teams = os.environ.get("MLFLOW_TEAMS_FILE", "examples/teams.yaml")

    p = sub.add_parser(
        "teams",
        help="create team users, experiments and permissions from a YAML file",
        description=teams.cmd_teams.__doc__,
    )
    p.add_argument("--file", default=default_teams, help="teams YAML (default: $MLFLOW_TEAMS_FILE or %(default)s)")
    p.add_argument(
        "--credentials-out",
        metavar="PATH",
        help="write the random passwords of NEW users here (JSON, mode 0600); required when users are missing",
    )
    p.add_argument("--dry-run", action="store_true", help="print the changes without making them")
    p.set_defaults(func=teams.cmd_teams)

    p = sub.add_parser(
        "register",
        help="register a logged model under a team's project prefix",
        description=registration.cmd_register.__doc__,
    )
    p.add_argument("model_uri", metavar="MODEL_URI", help="runs:/RUN_ID/model or models:/m-... (the logged model)")
    p.add_argument("name", metavar="NAME", help="registered model name: PROJECT-ALGORITHM, e.g. reco-als")
    p.add_argument("--team", help="team to register for (needed when the user is admin or in several teams)")
    p.add_argument("--file", default=default_teams, help="teams YAML (default: $MLFLOW_TEAMS_FILE or %(default)s)")
    p.set_defaults(func=registration.cmd_register)

    p = sub.add_parser(
        "promote",
        help="move an alias (candidate, challenger, champion) through its gates",
        description=promote.cmd_promote.__doc__,
    )
    p.add_argument("name", metavar="MODEL", help="registered model name")
    p.add_argument("version", metavar="VERSION", nargs="?", help="model version to promote (not with --repair)")
    p.add_argument("--to", choices=promote.ALIASES, help="target alias")
    p.add_argument("--repair", action="store_true", help="finish a promotion that stopped half way")
    p.set_defaults(func=promote.cmd_promote)

    p = sub.add_parser(
        "validate",
        help="check a model version's metrics and signature; tag validation_status",
        description=validate.cmd_validate.__doc__,
    )
    p.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument(
        "--min-metric", action="append", default=[], metavar="NAME=VALUE", help="metric must be >= VALUE (repeatable)"
    )
    p.add_argument(
        "--max-metric", action="append", default=[], metavar="NAME=VALUE", help="metric must be <= VALUE (repeatable)"
    )
    p.set_defaults(func=validate.cmd_validate)

    p = sub.add_parser(
        "cleanup",
        help="delete old runs except the best N, then purge them and their artifacts",
        description=cleanup.cmd_cleanup.__doc__,
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
    p.set_defaults(func=cleanup.cmd_cleanup)

"""mlflowctl: operate the MLflow deployment bundle.

The commands are listed below from their own help (each group's `register()`); `./mlflowctl
install runtime|tools|test` is the shell script's own (scripts/ctl/install.sh). `bootstrap`, `up`,
`down` and `restart` can be re-run safely. Run `./mlflowctl COMMAND --help`.
"""

import argparse
import inspect
import sys
import traceback
from pathlib import Path

from ctl import backup, drill, image, lifecycle, stack, upgrade
from ctl.errors import CommandError
from ctl.perf import faults, load

# Where an unexpected error's traceback goes: the operator sees one line naming this file.
ERROR_LOG = Path(__file__).resolve().parents[2] / "var" / "log" / "mlflowctl-errors.log"

# Each group adds its subcommands (`register(subparsers)`); a new group is one more entry here.
GROUPS = (stack, backup, drill, upgrade, image, lifecycle, load, faults)


class Parser(argparse.ArgumentParser):
    """Every command's `--help` shows its description (a module's or function's docstring) as
    written, dedented."""

    def __init__(self, *args, description=None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, description=description and inspect.cleandoc(description), **kwargs)


def main(argv=None) -> int:
    parser = Parser(prog="mlflowctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.func(args) or 0
    except CommandError as exc:
        message = str(exc)
    except Exception as exc:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # imported only by commands that use MLflow
        if mlflow_errors and isinstance(exc, mlflow_errors.MlflowException):
            message = exc.message or repr(exc)
        else:
            message = f"unexpected error (traceback in {log_traceback(args.command)}): {type(exc).__name__}: {exc}"
    print(f"mlflowctl {args.command}: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return 1


def log_traceback(command: str) -> Path:
    ERROR_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(ERROR_LOG, "a") as fh:
        fh.write(f"\n### mlflowctl {command}\n{traceback.format_exc()}")
    return ERROR_LOG


if __name__ == "__main__":
    sys.exit(main())

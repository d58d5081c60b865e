"""Day-2 operations (teams, register, promote, validate, cleanup). Filled in by issue 6."""


def add_commands(sub):
    """Register this module's subcommands on mlflowctl's subparsers."""

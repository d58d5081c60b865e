"""The one error type of mlflowctl's commands."""


class CommandError(Exception):
    """A failure or refusal the operator can act on: `main()` prints it as one line
    (`mlflowctl COMMAND: message`) and exits 1."""

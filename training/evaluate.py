"""Placeholder: being written."""


def eval_command() -> None:
    """Not implemented yet."""
    raise SystemExit("not implemented yet")

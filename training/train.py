"""Placeholder: being written."""


def train_command() -> None:
    """Not implemented yet."""
    raise SystemExit("not implemented yet")

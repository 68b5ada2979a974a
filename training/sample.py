"""Placeholder: being written."""


def sample_command() -> None:
    """Not implemented yet."""
    raise SystemExit("not implemented yet")

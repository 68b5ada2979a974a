"""Placeholder: being written."""


def build_bank_command() -> None:
    """Not implemented yet."""
    raise SystemExit("not implemented yet")

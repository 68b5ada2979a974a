"""Placeholder: being written."""


def import_bank_command() -> None:
    """Not implemented yet."""
    raise SystemExit("not implemented yet")

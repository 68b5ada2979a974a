"""Placeholder: being written."""


def import_official_command() -> None:
    """Not implemented yet."""
    raise SystemExit("not implemented yet")

"""The bank's routes by resource: ``ops`` (health, readiness, metrics), ``bank`` (reads), ``edits``."""

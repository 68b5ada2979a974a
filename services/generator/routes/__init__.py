"""The generator's routes by resource: ``ops`` (health, readiness, metrics), ``model``, ``generate``."""

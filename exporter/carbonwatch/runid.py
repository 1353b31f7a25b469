"""The run-id rule lives in carbonwatch.labels (with the label rule); these names stay importable from here."""

from carbonwatch.labels import RUN_ID_RE, validate_run_id

__all__ = ["RUN_ID_RE", "validate_run_id"]

"""The run client's label checks: the one rule of carbonwatch.labels, shared with the exporter."""

from carbonwatch.labels import (
    MAX_LABEL_LENGTH,
    MAX_RUN_ID_LENGTH,
    METRIC_NAME_RE,
    RUN_ID_RE,
    shown,
    validate_label,
    validate_metric_name,
    validate_run_id,
)

__all__ = ["MAX_LABEL_LENGTH", "MAX_RUN_ID_LENGTH", "METRIC_NAME_RE", "RUN_ID_RE", "shown", "validate_label",
           "validate_metric_name", "validate_run_id"]

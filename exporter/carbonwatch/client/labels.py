"""Validation of the label values and names the run client sends.

A bad value is refused with a ConfigError naming the label, so nothing the user passes can break the
exposition format or the Pushgateway URL, or smuggle in another series.
"""

from __future__ import annotations

import re

from carbonwatch.errors import ConfigError
from carbonwatch.registration import RUN_ID_RE, validate_run_id  # one rule for run ids everywhere

__all__ = ["RUN_ID_RE", "validate_label", "validate_metric_name", "validate_run_id"]

MAX_LABEL_LENGTH = 128
# Names of user training metrics (the `name` label of carbonwatch_run_metric) and phases.
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")


def validate_label(label: str, value: object, allow_empty: bool = True) -> str:
    """`value` as a safe Prometheus label value, else ConfigError naming `label`."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string label value, got {type(value).__name__} {value!r}")
    if not value and not allow_empty:
        raise ConfigError(f"{label}: must not be empty")
    if len(value) > MAX_LABEL_LENGTH:
        raise ConfigError(f"{label}: {len(value)} characters is too long (at most {MAX_LABEL_LENGTH})")
    for ch in value:
        if not ch.isprintable():
            raise ConfigError(f"{label}: {value!r} holds a non-printable character {ch!r} (no newlines or controls)")
    if value != value.strip():
        raise ConfigError(f"{label}: {value!r} has leading or trailing white space")
    return value


def validate_metric_name(value: object, what: str = "metric name") -> str:
    if not isinstance(value, str) or not METRIC_NAME_RE.match(value):
        raise ConfigError(
            f"{what}: {value!r} is not valid (1-64 characters: letters, digits, '_', '.', ':', '/', '-'; "
            "starting with a letter or '_')"
        )
    return value

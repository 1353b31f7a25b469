"""Validation of the label values and names the run client sends.

A bad value is refused with a ConfigError naming the label, so nothing the user passes can break the
exposition format or the Pushgateway URL, or smuggle in another series. Messages quote at most a short
prefix of the value: a 10 kB label gives a one-line error, not a 10 kB one.
"""

from __future__ import annotations

import re

from carbonwatch.errors import ConfigError
from carbonwatch.runid import RUN_ID_RE
from carbonwatch.runid import validate_run_id as _validate_run_id

__all__ = ["RUN_ID_RE", "shown", "validate_label", "validate_metric_name", "validate_run_id"]

MAX_LABEL_LENGTH = 128
MAX_RUN_ID_LENGTH = 128
# Names of user training metrics (the `name` label of carbonwatch_run_metric) and phases.
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")
SHOWN_CHARS = 40


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters of the value with the full length said."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def _undecodable(value: str) -> bool:
    """Bytes that were not UTF-8 reach Python strings (argv, environment) as lone surrogates."""
    return any("\ud800" <= ch <= "\udfff" for ch in value)


def validate_label(label: str, value: object, allow_empty: bool = True) -> str:
    """`value` as a safe Prometheus label value, else ConfigError naming `label`."""
    if value is None:
        value = ""
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError(f"{label}: expected a string label value, got bytes {shown(bytes(value))}; decode it first")
    if not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string label value, got {type(value).__name__} {shown(value)}")
    if not value and not allow_empty:
        raise ConfigError(f"{label}: must not be empty")
    if len(value) > MAX_LABEL_LENGTH:
        raise ConfigError(f"{label}: {len(value)} characters is too long (at most {MAX_LABEL_LENGTH})")
    if _undecodable(value):
        raise ConfigError(f"{label}: {shown(value)} is not valid UTF-8 text")
    for ch in value:
        if not ch.isprintable():
            raise ConfigError(
                f"{label}: {shown(value)} holds a non-printable character {ch!r} (no newlines or controls)"
            )
    if value != value.strip():
        raise ConfigError(f"{label}: {shown(value)} has leading or trailing white space")
    return value


def validate_run_id(run_id: object, what: str = "run_id") -> str:
    """The registration rule for run ids, with a short message for long or undecodable values."""
    if isinstance(run_id, str) and len(run_id) > MAX_RUN_ID_LENGTH:
        raise ConfigError(f"{what}: {len(run_id)} characters is too long (at most {MAX_RUN_ID_LENGTH})")
    if isinstance(run_id, str) and _undecodable(run_id):
        raise ConfigError(f"{what}: {shown(run_id)} is not valid UTF-8 text")
    return _validate_run_id(run_id, what)


def validate_metric_name(value: object, what: str = "metric name") -> str:
    if not isinstance(value, str) or not METRIC_NAME_RE.match(value):
        raise ConfigError(
            f"{what}: {shown(value)} is not valid (1-64 characters: letters, digits, '_', '.', ':', '/', '-'; "
            "starting with a letter or '_')"
        )
    return value

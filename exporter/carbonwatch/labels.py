"""The one rule for run ids and label values, shared by the run client (which refuses a bad value with a
ConfigError naming the label), the registration files and the exporter (which drops a bad value read from the
node and counts it by reason in `carbonwatch_label_rejections_total`).

A run id is part of the Pushgateway URL (grouping key), of file names and of every run series' labels, so its
alphabet is conservative: 1-128 characters, letters, digits and `_ . : @ + -`, starting with a letter or digit.

A label value (user, project, model, team, ...) is at most 128 characters of valid, printable UTF-8 without
quotes or backslashes: legal in the exposition format, but they break hand-written PromQL selectors, so no
part of carbonwatch lets them through. Messages quote at most a short prefix of the value: a 10 kB label gives
a one-line error, not a 10 kB one.
"""

from __future__ import annotations

import re

from carbonwatch.errors import ConfigError

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$")
MAX_LABEL_LENGTH = 128
MAX_RUN_ID_LENGTH = 128
# Names of user training metrics (the `name` label of carbonwatch_run_metric) and phases.
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")
SHOWN_CHARS = 40
# label_problem's reasons (the `reason` label of carbonwatch_label_rejections_total)
EMPTY, TOO_LONG, INVALID_UTF8, QUOTE_OR_BACKSLASH, CONTROL_CHARACTER = (
    "empty", "too_long", "invalid_utf8", "quote_or_backslash", "control_character")


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters of the value with the full length said."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


def _undecodable(value: str) -> bool:
    """Bytes that were not UTF-8 reach Python strings (argv, environment) as lone surrogates; a decoder told to
    replace them leaves U+FFFD."""
    return "\ufffd" in value or any("\ud800" <= ch <= "\udfff" for ch in value)


def label_problem(value: str) -> str:
    """Why `value` cannot be a label value ("" if it can): one of the reasons above."""
    if not value:
        return EMPTY
    if len(value) > MAX_LABEL_LENGTH:
        return TOO_LONG
    if _undecodable(value):
        return INVALID_UTF8
    if not value.isprintable():
        return CONTROL_CHARACTER
    if '"' in value or "\\" in value:
        return QUOTE_OR_BACKSLASH
    return ""


def validate_label(label: str, value: object, allow_empty: bool = True) -> str:
    """`value` as a safe Prometheus label value, else ConfigError naming `label`."""
    if value is None:
        value = ""
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError(f"{label}: expected a string label value, got bytes {shown(bytes(value))}; decode it first")
    if not isinstance(value, str):
        raise ConfigError(f"{label}: expected a string label value, got {type(value).__name__} {shown(value)}")
    why = label_problem(value)
    if why == EMPTY:
        if allow_empty:
            return value
        raise ConfigError(f"{label}: must not be empty")
    if why == TOO_LONG:
        raise ConfigError(f"{label}: {len(value)} characters is too long (at most {MAX_LABEL_LENGTH})")
    if why == INVALID_UTF8:
        raise ConfigError(f"{label}: {shown(value)} is not valid UTF-8 text")
    if why == QUOTE_OR_BACKSLASH:
        raise ConfigError(f"{label}: {shown(value)} holds a quote or a backslash (they break PromQL selectors)")
    if why == CONTROL_CHARACTER:
        ch = next(c for c in value if not c.isprintable())
        raise ConfigError(f"{label}: {shown(value)} holds a non-printable character {ch!r} (no newlines or controls)")
    if value != value.strip():
        raise ConfigError(f"{label}: {shown(value)} has leading or trailing white space")
    return value


def is_run_id(value: str) -> bool:
    return bool(RUN_ID_RE.match(value))


def validate_run_id(run_id: object, what: str = "run_id") -> str:
    """`run_id` if it is a run id, else ConfigError naming `what` (a short message for long or undecodable
    values)."""
    if isinstance(run_id, str) and len(run_id) > MAX_RUN_ID_LENGTH:
        raise ConfigError(f"{what}: {len(run_id)} characters is too long (at most {MAX_RUN_ID_LENGTH})")
    if isinstance(run_id, str) and _undecodable(run_id):
        raise ConfigError(f"{what}: {shown(run_id)} is not valid UTF-8 text")
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"{what}: {shown(run_id)} is not a valid run id "
            "(1-128 characters: letters, digits and _ . : @ + -, starting with a letter or digit)"
        )
    return run_id


def validate_metric_name(value: object, what: str = "metric name") -> str:
    if not isinstance(value, str) or not METRIC_NAME_RE.match(value):
        raise ConfigError(
            f"{what}: {shown(value)} is not valid (1-64 characters: letters, digits, '_', '.', ':', '/', '-'; "
            "starting with a letter or '_')"
        )
    return value

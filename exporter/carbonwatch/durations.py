"""Prometheus-style durations: `500ms`, `15s`, `5m`, `1h30m`, `7d`."""

from __future__ import annotations

import re

from carbonwatch.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds in `value`. A bare number is seconds. Raises ConfigError naming `what`."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration such as 15s or 5m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise ConfigError(
                    f"{what}: {value!r} is not a duration (use e.g. 500ms, 15s, 5m, 1h30m)"
                ) from None
    if seconds < 0:
        raise ConfigError(f"{what}: must not be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Shortest Prometheus duration for a whole number of milliseconds."""
    ms = int(round(seconds * 1000))
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"

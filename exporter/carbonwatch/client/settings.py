"""Run client settings: defaults < YAML config (section `run`) < environment < flags / API arguments.

Environment: CARBONWATCH_PUSHGATEWAY, CARBONWATCH_PROMETHEUS, CARBONWATCH_USER, CARBONWATCH_PROJECT,
CARBONWATCH_TEAM, CARBONWATCH_ZONE, CARBONWATCH_RUNS_FILE, CARBONWATCH_CONFIG (the YAML file).
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

ON_BUDGET = ("warn", "stop")
ENV = {
    "pushgateway": "CARBONWATCH_PUSHGATEWAY",
    "prometheus": "CARBONWATCH_PROMETHEUS",
    "user": "CARBONWATCH_USER",
    "project": "CARBONWATCH_PROJECT",
    "team": "CARBONWATCH_TEAM",
    "zone": "CARBONWATCH_ZONE",
    "runs_file": "CARBONWATCH_RUNS_FILE",
}
_DURATIONS = ("push_interval", "heartbeat", "push_timeout", "retention", "meter_interval", "budget_interval")


@dataclass
class RunSettings:
    pushgateway: str | None = None  # URL or HOST:PORT; None: no pushes
    prometheus: str | None = None  # URL; read the run's recorded emissions for budgets and the summary
    user: str = ""
    project: str = ""
    team: str = ""
    zone: str = "world"
    runs_file: str = ""  # "" -> default_runs_file()
    push_interval: float = 1.0  # at most one push per interval
    heartbeat: float = 10.0  # push at least this often (carbonwatch_run_last_push_time_seconds)
    push_timeout: float = 2.0
    retention: float = 30.0  # the final state stays on the gateway this long, then the group is deleted
    local_meter: bool = True  # measure the process tree in-process (always in local mode)
    meter_interval: float = 1.0
    budget_interval: float = 5.0  # how often the budget is checked
    on_budget: str = "warn"
    intensity: dict[str, Any] = field(default_factory=dict)  # the config's `intensity` section
    price_per_kwh: float | None = None
    currency: str = ""

    @property
    def local_mode(self) -> bool:
        """No Pushgateway configured: everything is measured and summarised in-process."""
        return not self.pushgateway


def default_runs_file() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "carbonwatch" / "runs.jsonl"


def default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers without a passwd entry)
        return f"uid{os.getuid()}"


def hostname() -> str:
    return socket.gethostname()


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from carbonwatch.config import load_file

    return load_file(path)


def _apply(s: RunSettings, key: str, value: Any, what: str) -> None:
    if key in _DURATIONS:
        setattr(s, key, parse_duration(value, what))
    elif key == "local_meter":
        if not isinstance(value, bool):
            raise ConfigError(f"{what}: expected true or false, got {value!r}")
        s.local_meter = value
    elif key == "on_budget":
        if value not in ON_BUDGET:
            raise ConfigError(f"{what}: must be one of {', '.join(ON_BUDGET)}, got {value!r}")
        s.on_budget = str(value)
    elif key == "price_per_kwh":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{what}: expected a number >= 0, got {value!r}")
        s.price_per_kwh = float(value)
    elif key == "zone":
        from carbonwatch.config import validate_zone

        s.zone = validate_zone(value, what)
    elif key in ("pushgateway", "prometheus"):
        text = "" if value is None else str(value).strip()
        setattr(s, key, text or None)
    else:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{what}: expected a string, got {value!r}")
        setattr(s, key, value or "")


_FILE_KEYS = {f.name for f in fields(RunSettings)} - {"intensity", "price_per_kwh", "currency"}


def resolve(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunSettings:
    """Settings from the config file, then the environment, then `overrides` (None values are skipped)."""
    env = os.environ if environ is None else environ
    s = RunSettings()
    data = _load_config(config_file or env.get("CARBONWATCH_CONFIG"))
    if "zone" in data:
        _apply(s, "zone", data["zone"], "zone")
    intensity = data.get("intensity") or {}
    if not isinstance(intensity, Mapping):
        raise ConfigError(f"intensity: expected a mapping, got {type(intensity).__name__}")
    s.intensity = dict(intensity)
    if "price_per_kwh" in intensity:
        _apply(s, "price_per_kwh", intensity["price_per_kwh"], "intensity.price_per_kwh")
        s.currency = str(intensity.get("currency") or "")
    run = data.get("run") or {}
    if not isinstance(run, Mapping):
        raise ConfigError(f"run: expected a mapping, got {type(run).__name__}")
    for key, value in run.items():
        if key not in _FILE_KEYS:
            raise ConfigError(f"run.{key}: unknown key (allowed: {', '.join(sorted(_FILE_KEYS))})")
        _apply(s, key, value, f"run.{key}")
    for key, var in ENV.items():
        if env.get(var):
            _apply(s, key, env[var], var)
    for key, value in (overrides or {}).items():
        if value is not None:
            _apply(s, key, value, key.replace("_", "-"))
    if not s.user:
        s.user = default_user()
    if s.push_interval <= 0:
        raise ConfigError("push_interval: must be > 0")
    return s

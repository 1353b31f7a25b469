"""Run client settings: defaults < the stack settings file < YAML config (section `run`) < environment < flags
/ API arguments.

Environment: CARBONWATCH_PUSHGATEWAY, CARBONWATCH_PROMETHEUS, CARBONWATCH_LEDGER (read by report and job),
CARBONWATCH_USER, CARBONWATCH_PROJECT,
CARBONWATCH_TEAM, CARBONWATCH_ZONE, CARBONWATCH_RUNS_FILE, CARBONWATCH_CONFIG (the YAML file), the
Pushgateway's credentials CARBONWATCH_PUSHGATEWAY_* (carbonwatch.client.auth), and CARBONWATCH_STACK.

The stack settings file is how `carbonwatch stack up` points every later run of the same user at its
Pushgateway and Prometheus: it writes `~/.config/carbonwatch/stack.env` (under $XDG_CONFIG_HOME), this module
reads it on every resolve, and `stack down` removes it. CARBONWATCH_STACK names another file (a second stack,
the compose stack's deploy/compose-stack.env), or none with `CARBONWATCH_STACK=none`. The file holds
`NAME=value` lines (shell syntax, so it can also be sourced; `${VAR:-default}` is expanded from the
environment) of the variables in STACK_KEYS.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from carbonwatch.client import auth as pgauth
from carbonwatch.client.auth import PushgatewayAuth
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

log = logging.getLogger("carbonwatch.client")

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
STACK_ENV = "CARBONWATCH_STACK"  # path of the stack settings file ("none": do not read one)
STACK_STATE_DIR = "CARBONWATCH_STACK_STATE_DIR"  # the native stack's state directory (a stale file is ignored)
# What a stack settings file may set: the gateway, Prometheus, the gateway's credentials, and where it came from.
STACK_KEYS = (
    ENV["pushgateway"], ENV["prometheus"], "CARBONWATCH_LEDGER", STACK_STATE_DIR, *pgauth.ENV.values()
)
LEGACY_STACK_KEYS = ("CARBONWATCH_PROMETHEUS_URL",)  # written by older launchers: read, and ignored
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
    intensity: dict[str, object] = field(default_factory=dict)  # the config's `intensity` section
    price_per_kwh: float | None = None
    currency: str = ""
    pushgateway_auth: PushgatewayAuth = field(default_factory=PushgatewayAuth)  # credentials, TLS; never printed
    stack_file: str = ""  # the stack settings file that was read ("" if none)

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


def _load_config(path: str | None) -> dict[str, object]:
    if not path:
        return {}
    from carbonwatch import yamlfile

    data: dict[str, object] = yamlfile.load(path, "config.file")
    return data


def _mapping(value: object) -> Mapping[str, object]:
    """A section _check_file found to be a mapping or unset ({})."""
    return value if isinstance(value, Mapping) else {}


def _apply(s: RunSettings, key: str, value: object, what: str) -> None:
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
        from carbonwatch.intensity.providers import validate_zone

        s.zone = validate_zone(value, what)
    elif key in ("pushgateway", "prometheus"):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{what}: expected a URL or HOST:PORT string, got {value!r}")
        setattr(s, key, (value or "").strip() or None)
    else:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{what}: expected a string, got {value!r}")
        setattr(s, key, value or "")


_FILE_KEYS = {f.name for f in fields(RunSettings)} - {"intensity", "price_per_kwh", "currency", "stack_file"}


def default_stack_file(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "carbonwatch" / "stack.env"


def stack_file_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The stack settings file to read: CARBONWATCH_STACK, else the default; None for CARBONWATCH_STACK=none."""
    env = os.environ if environ is None else environ
    raw = env.get(STACK_ENV)
    if raw is not None:
        if raw.strip().lower() in ("", "none", "off", "0", "false"):
            return None
        return Path(raw.strip()).expanduser()
    return default_stack_file(env)


_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def read_stack_file(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of a stack settings file ({} when it does not exist). Bad lines are ConfigErrors naming
    the file and line."""
    env = os.environ if environ is None else environ
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{STACK_ENV}: cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError(f"{STACK_ENV}: {p} line {n}: expected NAME=value, got {line[:80]!r}")
        name, value = m.group(1), m.group(2)
        if name in LEGACY_STACK_KEYS:
            continue
        if name not in STACK_KEYS:
            raise ConfigError(f"{STACK_ENV}: {p} line {n}: {name} is not a stack setting "
                              f"(allowed: {', '.join(STACK_KEYS)})")  # fmt: skip
        try:
            words = shlex.split(value, posix=True)
        except ValueError as exc:
            raise ConfigError(f"{STACK_ENV}: {p} line {n}: {name}: {exc}") from None
        if len(words) > 1:
            raise ConfigError(f"{STACK_ENV}: {p} line {n}: {name}: quote a value with spaces")
        value = words[0] if words else ""
        if "'" not in m.group(2):  # no expansion inside single quotes, as in the shell
            value = _VAR.sub(lambda v: env.get(v.group(1)) or (v.group(2) or ""), value)
        out[name] = value
    state_dir = out.get(STACK_STATE_DIR)
    if state_dir and not (Path(state_dir) / "stack.json").is_file():
        log.debug("carbonwatch: ignoring %s: its stack (%s) is not running", p, state_dir)
        return {}
    return out


def _quote(value: str) -> str:
    """Shell quoting that keeps ${VAR:-default} expandable (double quotes) where the value has one."""
    if _VAR.search(value) and not any(c in value for c in '"\\`'):
        return f'"{value}"'
    return shlex.quote(value)


def write_stack_file(path: str | os.PathLike[str], values: Mapping[str, str], header: str = "") -> Path:
    """Write a stack settings file atomically, readable by its owner only."""
    p = Path(path)
    for name in values:
        if name not in STACK_KEYS:
            raise ConfigError(f"stack settings: {name} is not a stack setting")
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{name}={_quote(str(value))}" for name, value in values.items()]
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    tmp.replace(p)
    return p


def _auth_from_config(data: Mapping[str, object], config_file: str | None) -> pgauth.AuthValues:
    run = data.get("run") or {}
    if not isinstance(run, Mapping) or "pushgateway_auth" not in run:
        return {}
    base = Path(config_file).resolve().parent if config_file else None
    return pgauth.from_mapping(run["pushgateway_auth"], base, "run.pushgateway_auth")


def _check_file(data: Mapping[str, object], path: str | None) -> None:
    """The config file's top-level keys and its `intensity` section (the exporter's file may be shared; its
    own sections are the exporter's to check). Errors name the key and the file."""
    from carbonwatch.intensity.providers import check_section
    from carbonwatch.node.config import TOP_KEYS

    try:
        for key in data:
            if key not in TOP_KEYS:
                raise ConfigError(f"{key}: unknown key (allowed: {', '.join(sorted(TOP_KEYS))})")
        for key in ("intensity", "run"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise ConfigError(f"{key}: expected a mapping, got {type(data[key]).__name__}")
        check_section(_mapping(data.get("intensity")))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _apply_stack_file(s: RunSettings, env: Mapping[str, str]) -> None:
    """The Pushgateway, Prometheus and credentials of `carbonwatch stack up`'s settings file, if there is one."""
    stack_path = stack_file_path(env)
    stack = read_stack_file(stack_path, env) if stack_path is not None else {}
    if stack:
        s.stack_file = str(stack_path)
        for key in ("pushgateway", "prometheus"):
            if stack.get(ENV[key]):
                _apply(s, key, stack[ENV[key]], f"{STACK_ENV} {stack_path}: {ENV[key]}")
        s.pushgateway_auth = pgauth.merge(s.pushgateway_auth, pgauth.from_env(stack))


def _apply_overrides(s: RunSettings, overrides: Mapping[str, object]) -> None:
    """The caller's keyword arguments (flags, Run(...)); None values are skipped."""
    for key, value in overrides.items():
        if value is not None:
            if key == "pushgateway_auth":
                if not isinstance(value, PushgatewayAuth):
                    raise ConfigError(f"pushgateway_auth: expected a PushgatewayAuth, got {type(value).__name__}")
                s.pushgateway_auth = value
                continue
            _apply(s, key, value, key.replace("_", "-"))


def resolve(
    overrides: Mapping[str, object] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunSettings:
    """Settings from the config file, then the environment, then `overrides` (None values are skipped)."""
    env = os.environ if environ is None else environ
    s = RunSettings()
    _apply_stack_file(s, env)
    config_path = config_file or env.get("CARBONWATCH_CONFIG")
    data = _load_config(config_path)
    _check_file(data, config_path)
    s.pushgateway_auth = pgauth.merge(s.pushgateway_auth, _auth_from_config(data, config_path))
    if "zone" in data:
        _apply(s, "zone", data["zone"], f"{config_path}: zone")
    intensity = _mapping(data.get("intensity"))
    s.intensity = dict(intensity)
    if "price_per_kwh" in intensity:
        _apply(s, "price_per_kwh", intensity["price_per_kwh"], f"{config_path}: intensity.price_per_kwh")
        s.currency = str(intensity.get("currency") or "")
    for key, value in _mapping(data.get("run")).items():
        if key not in _FILE_KEYS:
            raise ConfigError(f"{config_path}: run.{key}: unknown key (allowed: {', '.join(sorted(_FILE_KEYS))})")
        if key != "pushgateway_auth":
            _apply(s, key, value, f"{config_path}: run.{key}")
    for key, var in ENV.items():
        if env.get(var):
            _apply(s, key, env[var], var)
    s.pushgateway_auth = pgauth.merge(s.pushgateway_auth, pgauth.from_env(env))
    _apply_overrides(s, overrides or {})
    if s.pushgateway:  # credentials in the URL move to the auth settings, so the URL can be shown
        clean, user, password = pgauth.split_userinfo(s.pushgateway)
        if user or password is not None:
            s.pushgateway = clean
            s.pushgateway_auth = pgauth.merge(s.pushgateway_auth, {"username": user, "password": password})
    if s.pushgateway or not s.pushgateway_auth.empty:
        s.pushgateway_auth.check("pushgateway credentials (CARBONWATCH_PUSHGATEWAY_* or run.pushgateway_auth)")
    if not s.user:
        s.user = default_user()
    if s.push_interval <= 0:
        raise ConfigError("push_interval: must be > 0")
    return s

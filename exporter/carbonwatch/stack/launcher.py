"""`carbonwatch stack up|down|status`: the Prometheus stack from local binaries, without Docker.

It runs the same configuration files as docker-compose.yml: prometheus/prometheus.yml and the rules are
rendered for local targets (and, for tests, short intervals) by carbonwatch.stack.config into the state
directory; alerting/alertmanager.yml is copied there with its template paths made absolute (and, with
--webhook-url, every receiver pointed at that URL). Processes run detached (their own session), with their
pid, log and data in the state directory, so `up` returns and `down` finds them again.

`up` also writes the stack settings file (~/.config/carbonwatch/stack.env; carbonwatch.client.settings), so
later `carbonwatch run` and `carbonwatch.run(...)` of the same user report to this stack's Pushgateway and
Prometheus; `down` removes it. With --secure the exporter and the Pushgateway serve TLS with basic auth (the
exporter also wants Prometheus' client certificate), from files generated into the state directory
(carbonwatch.stack.config.write_secure_files); Prometheus scrapes them with the matching settings and the
settings file carries what the run clients need. `carbonwatch stack secure --compose` writes the same files
for deploy/docker-compose.secure.yml.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from carbonwatch import yamlfile
from carbonwatch.client import settings as client_settings
from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError

DEFAULT_PORTS: dict[str, int] = {
    "prometheus": 9090,
    "pushgateway": 9091,
    "alertmanager": 9093,
    "exporter": 9860,
    "grafana": 3000,
}
# Start order: what Prometheus scrapes and alerts to first.
ORDER = ("alertmanager", "pushgateway", "reaper", "exporter", "prometheus", "grafana")
# The reaper enforces the finished runs' retention on the Pushgateway (carbonwatch.client.reaper): no port.
NO_PORT = ("reaper",)
# Executable names to look for (Debian's first) and the Debian package that provides them.
BINARIES: dict[str, tuple[tuple[str, ...], str]] = {
    "prometheus": (("prometheus",), "prometheus"),
    "pushgateway": (("prometheus-pushgateway", "pushgateway"), "prometheus-pushgateway"),
    "alertmanager": (("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
    "grafana": (("grafana-server", "grafana"), "grafana"),
}
READY_PATH = {
    "prometheus": "/-/ready",
    "pushgateway": "/-/ready",
    "alertmanager": "/-/ready",
    "exporter": "/metrics",
    "grafana": "/api/health",
}
STATE_FILE = "stack.json"
SECURE_DIR = "secure"  # in the state directory: certificates, keys, password, web configurations (--secure)
SECURE = ("exporter", "pushgateway")  # the services --secure puts behind TLS and basic auth
HOST = "127.0.0.1"
_CHILDREN: list[subprocess.Popen[bytes]] = []  # kept so that they are not reported as leaked while we wait


@dataclass
class Service:
    name: str
    port: int
    cmd: list[str]
    pid: int = 0
    start_ticks: int = 0  # /proc/PID/stat start time: a pid plus this is the process' identity
    log: str = ""
    scheme: str = "http"  # https for the services --secure protects

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def ready_url(self) -> str:
        return self.url + READY_PATH[self.name] if self.name in READY_PATH else ""


@dataclass
class StackState:
    state_dir: str
    repo_root: str
    started_at: float
    services: dict[str, Service] = field(default_factory=dict)
    grafana_password_file: str = ""
    secure_dir: str = ""  # --secure: the TLS and basic-auth files
    settings_file: str = ""  # the stack settings file this stack wrote ("" if none)

    def secure_files(self) -> Any:
        if not self.secure_dir:
            return None
        from carbonwatch.stack.config import SecureFiles

        return SecureFiles(Path(self.secure_dir))

    def save(self) -> None:
        data = asdict(self)
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--state-dir: cannot read {path}: {exc}") from None
        services = {k: Service(**v) for k, v in data.pop("services", {}).items()}
        return cls(services=services, **data)


# ----------------------------------------------------------------------------------------------- helpers


def repo_root_default() -> Path:
    """The checkout this package runs from (editable install), or CARBONWATCH_REPO_ROOT."""
    env = os.environ.get("CARBONWATCH_REPO_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[3]


def find_binary(service: str, path: str | None = None) -> str | None:
    names, _pkg = BINARIES[service]
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def missing_binary_message(services: Iterable[str]) -> str:
    lines = []
    pkgs = []
    for s in sorted(services, key=list(BINARIES).index):
        names, pkg = BINARIES[s]
        lines.append(f"  {s}: none of {', '.join(names)} is on PATH")
        pkgs.append(pkg)
    return (
        "missing binaries for the stack:\n" + "\n".join(lines) + "\n"
        f"install them with:  sudo apt-get install -y {' '.join(pkgs)}\n"
        "(or run `make setup`, or use docker-compose.yml instead)"
    )


def process_start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); 0 when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(svc: Service) -> bool:
    """The very process we started is still there (not a zombie, not a reused pid)."""
    if svc.pid <= 0 or process_start_ticks(svc.pid) != svc.start_ticks:
        return False
    try:
        state = Path(f"/proc/{svc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def is_ready(svc: Service, timeout: float = 2.0, secure: Any = None) -> bool:
    """The service answers its readiness URL (over TLS, with the password and client certificate of a
    --secure stack's `secure` files where it is protected)."""
    if svc.name in NO_PORT:
        return alive(svc)
    kw: dict[str, Any] = {}
    if svc.scheme == "https" and secure is not None:
        kw = {"verify": str(secure.ca_cert), "auth": (secure.username, secure.password()),
              "cert": (str(secure.client_cert), str(secure.client_key))}  # fmt: skip
    try:
        return requests.get(svc.ready_url, timeout=timeout, **kw).status_code == 200
    except (requests.RequestException, OSError):
        return False


def log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------- configs


def render_alertmanager_config(
    source: Path, webhook_url: str | None = None, group_wait: str | None = None, group_interval: str | None = None
) -> str:
    """alerting/alertmanager.yml for a config in another directory: template paths made absolute; with
    `webhook_url`, every receiver delivers to that URL only (its other integrations need the outside world)."""
    doc = yamlfile.load(source, "alertmanager config")
    if "route" not in doc:
        raise ConfigError(f"alertmanager config: {source} has no top-level `route`")
    base = source.resolve().parent
    doc["templates"] = [t if os.path.isabs(t) else str(base / t) for t in doc.get("templates") or []]
    if webhook_url:
        receivers = doc.get("receivers") or [{"name": doc["route"].get("receiver", "default")}]
        doc["receivers"] = [
            {"name": r["name"], "webhook_configs": [{"url": webhook_url, "send_resolved": True}]} for r in receivers
        ]

    def walk(route: dict[str, Any]) -> None:
        if group_wait:
            route["group_wait"] = group_wait
        if group_interval:
            route["group_interval"] = group_interval
        for child in route.get("routes") or []:
            walk(child)

    walk(doc["route"])
    out: str = yaml.safe_dump(doc, sort_keys=False)
    return out


def write_configs(args: argparse.Namespace, root: Path, state: Path, ports: dict[str, int],
                  secure: Any = None) -> dict[str, Path]:  # fmt: skip
    """Render every config the binaries read into `state`/config; returns their paths by service."""
    try:
        from carbonwatch.stack import config as stackconfig
    except ImportError:
        raise ConfigError(
            "carbonwatch.stack.config is missing from this installation (it renders prometheus.yml and the rules "
            "for local targets); update carbonwatch"
        ) from None
    cfg = state / "config"
    rule_dir = cfg / "rules"
    if cfg.exists():
        shutil.rmtree(cfg)
    rule_dir.mkdir(parents=True)
    evaluation = format_duration(args.evaluation_interval)
    alert_for = format_duration(args.alert_for) if args.alert_for is not None else None
    stackconfig.render_rules(root, rule_dir, evaluation, for_override=alert_for)
    targets = {
        "carbonwatch": [f"{HOST}:{ports['exporter']}"],
        "pushgateway": [f"{HOST}:{ports['pushgateway']}"],
        "prometheus": [f"{HOST}:{ports['prometheus']}"],
        "alertmanager": [f"{HOST}:{ports['alertmanager']}"],
    }
    prom_text = stackconfig.render_prometheus_config(
        root,
        targets,
        [f"{HOST}:{ports['alertmanager']}"],
        format_duration(args.scrape_interval),
        evaluation,
        rule_dir,
        job_settings=stackconfig.secure_scrape_settings(secure) if secure is not None else None,
    )
    prom = cfg / "prometheus.yml"
    prom.write_text(prom_text)
    am = cfg / "alertmanager.yml"
    am.write_text(
        render_alertmanager_config(
            root / "alerting" / "alertmanager.yml",
            args.webhook_url,
            format_duration(args.alert_group_wait) if args.alert_group_wait is not None else None,
            format_duration(args.alert_group_interval) if args.alert_group_interval is not None else None,
        )
    )
    return {"prometheus": prom, "alertmanager": am}


# ------------------------------------------------------------------------------------------------ up/down


def plan(args: argparse.Namespace, root: Path, state: Path, ports: dict[str, int]) -> list[Service]:
    """The services to start, with their command lines (binaries resolved, configs rendered)."""
    wanted = [s for s in ORDER if not (s == "exporter" and args.no_exporter)]
    grafana = None if args.no_grafana else find_binary("grafana")
    if grafana is None and "grafana" in wanted:
        wanted.remove("grafana")
    missing = [s for s in wanted if s not in ("exporter", "grafana", *NO_PORT) and find_binary(s) is None]
    if missing:
        raise ConfigError(missing_binary_message(missing))
    for name in ("prometheus", "alertmanager"):
        if not (root / ("prometheus" if name == "prometheus" else "alerting") / f"{name}.yml").is_file():
            rel = "prometheus/prometheus.yml" if name == "prometheus" else "alerting/alertmanager.yml"
            raise ConfigError(
                f"--repo-root: {root} has no {rel} (run from a carbonwatch checkout or set CARBONWATCH_REPO_ROOT)"
            )
    busy = [f"{s} port {ports[s]}" for s in wanted if s in ports and port_in_use(ports[s])]
    if busy:
        raise ConfigError(
            f"ports in use: {', '.join(busy)} (is another stack running? try `carbonwatch stack status`, "
            "or move this one with --port-offset)"
        )
    secure = None
    if getattr(args, "secure", False):
        from carbonwatch.stack.config import write_secure_files

        secure = write_secure_files(state / SECURE_DIR)
    configs = write_configs(args, root, state, ports, secure)
    data = state / "data"
    retention = format_duration(args.retention)
    out: list[Service] = []
    for name in wanted:
        listen = f"{HOST}:{ports.get(name, 0)}"
        if name == "prometheus":
            cmd = [
                find_binary("prometheus") or "prometheus",
                f"--config.file={configs['prometheus']}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                f"--storage.tsdb.retention.time={retention}",
                f"--web.listen-address={listen}",
                "--web.enable-lifecycle",
            ]
        elif name == "pushgateway":
            cmd = [
                find_binary("pushgateway") or "pushgateway",
                f"--web.listen-address={listen}",
                f"--persistence.file={data / 'pushgateway.data'}",
                "--persistence.interval=1m",
            ]
            if secure is not None:
                cmd.append(f"--web.config.file={secure.pushgateway_web}")
        elif name == "alertmanager":
            cmd = [
                find_binary("alertmanager") or "alertmanager",
                f"--config.file={configs['alertmanager']}",
                f"--storage.path={data / 'alertmanager'}",
                f"--web.listen-address={listen}",
                "--cluster.listen-address=",  # no gossip port: one instance, and parallel stacks do not clash
            ]
        elif name == "reaper":
            scheme = "https" if secure is not None else "http"
            cmd = [sys.executable, "-m", "carbonwatch.client.reaper",
                   f"--gateway={scheme}://{HOST}:{ports['pushgateway']}", "--every=5s"]
        elif name == "exporter":
            cmd = [sys.executable, "-m", "carbonwatch", "exporter", f"--web.listen-address={listen}",
                   f"--storage.path={data / 'exporter'}"]  # the durable counters, in-tree for the native stack
            if secure is not None:
                cmd.append(f"--web.config.file={secure.exporter_web}")
            cmd += list(args.exporter_arg)
        else:
            cmd = [grafana or "grafana-server", f"--homepath={args.grafana_homepath}"]
            if Path(cmd[0]).name == "grafana":
                cmd.insert(1, "server")
        scheme = "https" if secure is not None and name in SECURE else "http"
        out.append(Service(name, ports.get(name, 0), cmd, log=str(state / "logs" / f"{name}.log"), scheme=scheme))
    return out


def grafana_env(state: Path, root: Path, ports: dict[str, int]) -> tuple[dict[str, str], str]:
    """Grafana's settings through its GF_* variables, and the admin password file."""
    pw_file = state / "grafana-admin-password"
    password = os.environ.get("GRAFANA_ADMIN_PASSWORD", "")
    if not password:
        password = pw_file.read_text().strip() if pw_file.is_file() else secrets.token_urlsafe(18)
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    env = {
        "GF_SERVER_HTTP_ADDR": HOST,
        "GF_SERVER_HTTP_PORT": str(ports["grafana"]),
        "GF_PATHS_DATA": str(state / "data" / "grafana"),
        "GF_PATHS_LOGS": str(state / "logs"),
        "GF_PATHS_PROVISIONING": str(root / "grafana" / "provisioning"),
        "GF_SECURITY_ADMIN_PASSWORD": password,
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": str(root / "grafana" / "dashboards" / "fleet.json"),
        "CARBONWATCH_PROMETHEUS": f"http://{HOST}:{ports['prometheus']}",
        "CARBONWATCH_DASHBOARDS_DIR": str(root / "grafana" / "dashboards"),
    }
    return env, str(pw_file)


def start(svc: Service, env: dict[str, str] | None = None) -> None:
    Path(svc.log).parent.mkdir(parents=True, exist_ok=True)
    with open(svc.log, "ab") as log:
        proc = subprocess.Popen(
            svc.cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: `up` returns, `down` signals the group
            env={**os.environ, **(env or {})},
        )
    _CHILDREN.append(proc)
    svc.pid = proc.pid
    svc.start_ticks = process_start_ticks(proc.pid)


def stop(svc: Service, grace: float = 10.0) -> bool:
    """SIGTERM to the service's process group, SIGKILL after `grace` seconds. False if it was not running."""
    if not alive(svc):
        return False
    try:
        os.killpg(svc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(svc.pid)
        if not alive(svc):
            return True
        time.sleep(0.1)
    try:
        os.killpg(svc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(svc.pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_ready(services: list[Service], timeout: float, secure: Any = None) -> list[str]:
    """Wait until each service answers its readiness URL; the problems of those that do not."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending and time.monotonic() < deadline:
        for svc in list(pending):
            _reap(svc.pid)
            if not alive(svc):
                return [f"{svc.name} exited while starting; the end of {svc.log}:\n{log_tail(svc.log)}"]
            if is_ready(svc, timeout=1.0, secure=secure):
                pending.remove(svc)
        if pending:
            time.sleep(0.25)
    return [f"{s.name} not ready at {s.ready_url} after {timeout:g}s; see {s.log}" for s in pending]


def running_state(state_dir: Path) -> StackState | None:
    st = StackState.load(state_dir)
    if st is None:
        return None
    return st if any(alive(s) for s in st.services.values()) else None


def up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    root = Path(args.repo_root).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if running_state(state) is not None:
        raise ConfigError(f"a stack is already running from {state}; stop it with `carbonwatch stack down`")
    ports = {name: port + args.port_offset for name, port in DEFAULT_PORTS.items()}
    for name in DEFAULT_PORTS:
        explicit = getattr(args, f"{name}_port")
        if explicit is not None:
            ports[name] = explicit
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise ConfigError(f"--{name}-port: {port} is out of range 1..65535")
    services = plan(args, root, state, ports)
    st = StackState(str(state), str(root), time.time())
    secure = None
    if getattr(args, "secure", False):
        st.secure_dir = str(state / SECURE_DIR)
        secure = st.secure_files()
    try:
        for svc in services:
            env = None
            if svc.name == "grafana":
                env, st.grafana_password_file = grafana_env(state, root, ports)
            elif svc.name == "reaper" and secure is not None:  # the gateway's credentials, never in argv
                env = dict(os.environ, **{k: v for k, v in settings_values(st).items()
                                         if k.startswith("CARBONWATCH_PUSHGATEWAY_")})
            start(svc, env)
            st.services[svc.name] = svc
            (state / f"{svc.name}.pid").write_text(f"{svc.pid}\n")
            st.save()
        problems = wait_ready(services, args.wait, secure)
    except BaseException:
        _down(st, quiet=True)
        raise
    if problems:
        _down(st, quiet=True)
        print("carbonwatch stack: failed to start:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    settings_line = write_settings(st, args)
    print(f"carbonwatch stack up (state, logs and data in {state}):")
    _print_table(st)
    if st.grafana_password_file:
        print(f"Grafana login: admin, password in {st.grafana_password_file}")
    elif not args.no_grafana:
        print("Grafana: grafana-server is not on PATH, not started (dashboards: docs/dashboards.md)")
    if secure is not None:
        print(f"TLS and basic auth on the exporter and the Pushgateway: user {secure.username}, password in "
              f"{secure.password_file}, CA {secure.ca_cert}")  # fmt: skip
    if settings_line:
        print(settings_line)
    print(
        f"stop it with: {command_name()} stack down"
        + ("" if args.state_dir == default_state_dir() else f" --state-dir {state}")
    )
    return 0


def command_name() -> str:
    """How to call carbonwatch in a printed command: `carbonwatch` when that is on PATH and is this
    installation, else the full path of this installation's script (or `python -m carbonwatch`)."""
    script = Path(sys.executable).with_name("carbonwatch")
    found = shutil.which("carbonwatch")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "carbonwatch"
    if script.exists():
        return str(script)
    if found:
        return "carbonwatch"
    return f"{sys.executable} -m carbonwatch"


def settings_values(st: StackState) -> dict[str, str]:
    """What the run clients need to report to this stack (names: client_settings.STACK_KEYS)."""
    out: dict[str, str] = {client_settings.STACK_STATE_DIR: st.state_dir}
    if "pushgateway" in st.services:
        out[client_settings.ENV["pushgateway"]] = st.services["pushgateway"].url
    if "prometheus" in st.services:
        out[client_settings.ENV["prometheus"]] = st.services["prometheus"].url
    secure = st.secure_files()
    if secure is not None:
        from carbonwatch.client.auth import ENV as AUTH_ENV

        out[AUTH_ENV["username"]] = secure.username
        out[AUTH_ENV["password_file"]] = str(secure.password_file)
        out[AUTH_ENV["ca_file"]] = str(secure.ca_cert)
    return out


def _owner(path: Path) -> str:
    """The state directory of the running stack a settings file belongs to ("" if none is running)."""
    try:
        values = client_settings.read_stack_file(path, {})
    except ConfigError:
        return ""
    return values.get(client_settings.STACK_STATE_DIR, "")


def write_settings(st: StackState, args: argparse.Namespace) -> str:
    """Write the stack settings file; the one line to print about it ("" when --no-settings-file)."""
    if getattr(args, "no_settings_file", False):
        return ""
    default = client_settings.default_stack_file()
    path = Path(args.settings_file).expanduser() if getattr(args, "settings_file", None) else default
    owner = _owner(path)
    if owner and Path(owner).resolve() != Path(st.state_dir).resolve():
        # another running stack owns it: leave its settings alone, ours go to the state directory
        path = Path(st.state_dir) / "stack.env"
    header = (f"carbonwatch stack settings, written by `carbonwatch stack up` for the stack in {st.state_dir};\n"
              "removed by `carbonwatch stack down`. Read by `carbonwatch run` and carbonwatch.run(...) (the\n"
              "environment and flags win). See docs/stack.md.")  # fmt: skip
    client_settings.write_stack_file(path, settings_values(st), header)
    st.settings_file = str(path)
    st.save()
    if path == default and client_settings.STACK_ENV not in os.environ:
        return (f"later `carbonwatch run` and carbonwatch.run(...) report to this stack: settings in {path} "
                "(removed by `stack down`)")  # fmt: skip
    return f"export {client_settings.STACK_ENV}={path}   # in each shell whose runs should report to this stack"


def remove_settings(st: StackState) -> None:
    """Remove the settings file this stack wrote, unless another stack has written it since."""
    if not st.settings_file:
        return
    path = Path(st.settings_file)
    owner = _owner(path)
    if owner and Path(owner).resolve() != Path(st.state_dir).resolve():
        return
    path.unlink(missing_ok=True)


def _down(st: StackState, quiet: bool = False) -> list[str]:
    stopped = []
    for name in reversed(ORDER):
        svc = st.services.get(name)
        if svc is None:
            continue
        if stop(svc):
            stopped.append(name)
        (Path(st.state_dir) / f"{name}.pid").unlink(missing_ok=True)
    remove_settings(st)
    (Path(st.state_dir) / STATE_FILE).unlink(missing_ok=True)
    if not quiet:
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return stopped


def down(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    st = StackState.load(state)
    if st is None:
        print(f"no stack state in {state}: nothing to stop")
        return 0
    _down(st)
    return 0


def status_rows(st: StackState) -> list[dict[str, Any]]:
    rows = []
    secure = st.secure_files()
    for name in ORDER:
        svc = st.services.get(name)
        if svc is None:
            continue
        running = alive(svc)
        rows.append(
            {
                "service": name,
                "pid": svc.pid,
                "running": running,
                "ready": running and is_ready(svc, secure=secure),
                "url": svc.url if svc.name not in NO_PORT else "-",
                "log": svc.log,
            }
        )
    return rows


def _print_table(st: StackState) -> None:
    for row in status_rows(st):
        state = "ready" if row["ready"] else ("running, not ready" if row["running"] else "stopped")
        print(f"  {row['service']:<13} {row['url']:<24} pid {row['pid']:<8} {state}")
    if st.settings_file:
        print(f"  {'settings':<13} {st.settings_file}")


def status(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    st = StackState.load(state)
    if st is None:
        if args.json:
            print(json.dumps({"state_dir": str(state), "services": []}))
        else:
            print(f"no stack running from {state} (start one with `carbonwatch stack up`)")
        return 3
    rows = status_rows(st)
    if args.json:
        print(json.dumps({"state_dir": str(state), "settings_file": st.settings_file, "secure": bool(st.secure_dir),
                          "services": rows}, indent=2))  # fmt: skip
    else:
        print(f"carbonwatch stack ({state}):")
        _print_table(st)
    return 0 if rows and all(r["ready"] for r in rows) else 1


# ---------------------------------------------------------------------------------------------------- CLI


def default_state_dir() -> str:
    return os.environ.get("CARBONWATCH_STATE_DIR") or str(repo_root_default() / ".state" / "stack")


def _duration(what: str) -> Any:
    def parse(value: str) -> float:
        try:
            return parse_duration(value, what)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=default_state_dir(),
        help="pids, logs, data and generated configs (default .state/stack in the checkout; env CARBONWATCH_STATE_DIR)",
    )
    u = sub.add_parser("up", parents=[common], help="start the stack in the background")
    u.add_argument(
        "--repo-root", default=str(repo_root_default()), help="checkout with prometheus/, alerting/, grafana/"
    )
    u.add_argument("--scrape-interval", type=_duration("--scrape-interval"), default=15.0, metavar="DURATION",
                   help="how often Prometheus scrapes the exporters and the Pushgateway (default 15s)")
    u.add_argument("--evaluation-interval", type=_duration("--evaluation-interval"), default=15.0, metavar="DURATION",
                   help="how often Prometheus evaluates rules and alerts (default 15s); rule groups with "
                        "longer intervals are scaled by the same factor")
    u.add_argument("--retention", type=_duration("--retention"), default=15 * 86400.0, metavar="DURATION",
                   help="Prometheus TSDB retention (default 15d)")  # fmt: skip
    u.add_argument("--port-offset", type=int, default=0, help="add N to every default port (9090, 9091, ...)")
    for name, port in DEFAULT_PORTS.items():
        u.add_argument(f"--{name}-port", type=int, default=None, metavar="PORT", help=f"default {port} + offset")
    u.add_argument("--exporter-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to `carbonwatch exporter` (repeat; e.g. --exporter-arg=--zone=DE)")  # fmt: skip
    u.add_argument("--no-exporter", action="store_true", help="do not start the exporter (one already runs)")
    u.add_argument("--no-grafana", action="store_true", help="do not start grafana-server even when on PATH")
    u.add_argument("--grafana-homepath", default="/usr/share/grafana", help="grafana-server --homepath")
    u.add_argument("--webhook-url", metavar="URL", help="deliver every alert to this webhook instead of the receivers")
    u.add_argument("--alert-for", type=_duration("--alert-for"), default=None, metavar="DURATION",
                   help="replace every alert's `for:` (tests)")  # fmt: skip
    u.add_argument("--alert-group-wait", type=_duration("--alert-group-wait"), default=None, metavar="DURATION",
                   help="override Alertmanager group_wait (tests)")  # fmt: skip
    u.add_argument("--alert-group-interval", type=_duration("--alert-group-interval"), default=None,
                   metavar="DURATION", help="override Alertmanager group_interval (tests)")  # fmt: skip
    u.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="how long to wait for readiness")
    u.add_argument("--secure", action="store_true",
                   help="TLS and basic auth on the exporter (plus client certificates) and the Pushgateway; "
                        f"certificates and password generated into STATE_DIR/{SECURE_DIR} (kept if present)")
    u.add_argument("--settings-file", metavar="FILE",
                   help="where to write the settings that point later runs at this stack (default "
                        "~/.config/carbonwatch/stack.env, read by the run client; CARBONWATCH_STACK=FILE for others)")
    u.add_argument("--no-settings-file", action="store_true", help="write no settings file")
    sub.add_parser("down", parents=[common], help="stop the stack (SIGTERM, then SIGKILL)")
    sec = sub.add_parser("secure", help="write the TLS and basic-auth files of a secure stack (for "
                         "deploy/docker-compose.secure.yml with --compose)")
    sec.add_argument("--dir", default=str(repo_root_default() / ".state" / "compose-secure"),
                     help="where to write them (default .state/compose-secure in the checkout)")
    sec.add_argument("--compose", action="store_true",
                     help="for docker compose: certificates also for the service names, files readable by the "
                          "containers' users, and DIR/prometheus.yml for the Prometheus container")
    sec.add_argument("--host", action="append", default=[], metavar="NAME",
                     help="also put NAME (a host name or IP) in the server certificate (repeat)")
    sec.add_argument("--repo-root", default=str(repo_root_default()), help="checkout with prometheus/")
    s = sub.add_parser("status", parents=[common], help="is each service running and ready")
    s.add_argument("--json", action="store_true", help="machine-readable output")


def secure(args: argparse.Namespace) -> int:
    """`stack secure`: the files of a secure stack, for compose (or to inspect them)."""
    from carbonwatch.stack import config as stackconfig

    dest = Path(args.dir).resolve()
    hosts = list(stackconfig.DEFAULT_HOSTS) + (list(stackconfig.COMPOSE_HOSTS) if args.compose else []) + args.host
    files = stackconfig.write_secure_files(dest, hosts, shared=args.compose)
    values = {
        client_settings.ENV["pushgateway"]: f"https://127.0.0.1:${{PUSHGATEWAY_PORT:-{DEFAULT_PORTS['pushgateway']}}}",
        client_settings.ENV["prometheus"]: f"http://127.0.0.1:${{PROMETHEUS_PORT:-{DEFAULT_PORTS['prometheus']}}}",
    }
    from carbonwatch.client.auth import ENV as AUTH_ENV

    values.update({AUTH_ENV["username"]: files.username, AUTH_ENV["password_file"]: str(files.password_file),
                   AUTH_ENV["ca_file"]: str(files.ca_cert)})  # fmt: skip
    settings = client_settings.write_stack_file(
        dest / "stack.env", values,
        "carbonwatch run settings for the secure compose stack (deploy/docker-compose.secure.yml).",
    )
    print(f"wrote the TLS and basic-auth files to {dest}: user {files.username}, password in {files.password_file}")
    if args.compose:
        prom = dest / "prometheus.yml"
        prom.write_text(stackconfig.render_compose_secure_prometheus(Path(args.repo_root), files))
        os.chmod(dest, 0o755)
        print(f"start it with:  CARBONWATCH_SECURE_DIR={dest} docker compose -f docker-compose.yml "
              "-f deploy/docker-compose.secure.yml up -d")  # fmt: skip
    print(f"export {client_settings.STACK_ENV}={settings}   # so that your runs report to it")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.action == "up":
        return up(args)
    if args.action == "down":
        return down(args)
    if args.action == "secure":
        return secure(args)
    return status(args)

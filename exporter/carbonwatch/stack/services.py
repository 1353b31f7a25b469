"""The native stack's services: which run, their ports, command lines and readiness URLs, and the configs
they read (prometheus/prometheus.yml and the rules rendered by carbonwatch.stack.config, alerting/alertmanager.yml
with absolute template paths). carbonwatch.stack.processes starts and stops them; carbonwatch.stack.launcher is
the `carbonwatch stack` command.

The ledger (`carbonwatch ledger serve`, docs/ledger.md) runs when this installation has it: port 9863, its
SQLite database in the state directory, scraped by Prometheus under the job LEDGER_JOB (nothing depends on the
name).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from carbonwatch import yamlfile
from carbonwatch.durations import format_duration
from carbonwatch.errors import ConfigError

if TYPE_CHECKING:
    from carbonwatch.stack.config import SecureFiles

DEFAULT_PORTS: dict[str, int] = {
    "prometheus": 9090,
    "pushgateway": 9091,
    "alertmanager": 9093,
    "exporter": 9860,
    "ledger": 9863,
    "grafana": 3000,
}
# Start order: what Prometheus scrapes and alerts to first; the ledger reads Prometheus, so it comes after it.
ORDER = ("alertmanager", "pushgateway", "reaper", "exporter", "prometheus", "ledger", "grafana")
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
    "ledger": "/-/ready",  # ready once its database is open and migrated
    "grafana": "/api/health",
}
STATE_FILE = "stack.json"
SECURE_DIR = "secure"  # in the state directory: certificates, keys, password, web configurations (--secure)
SECURE = ("exporter", "pushgateway")  # the services --secure puts behind TLS and basic auth
HOST = "127.0.0.1"
LEDGER_JOB = "carbonwatch-ledger"  # the scrape job of the ledger (no rule or alert depends on it)
LEDGER_DB = "ledger.db"  # in the state directory's data/: the ledger's SQLite database


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

    def secure_files(self) -> SecureFiles | None:
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


# ----------------------------------------------------------------------------------------------- configs


def render_alertmanager_config(
    source: Path, webhook_url: str | None = None, group_wait: str | None = None, group_interval: str | None = None
) -> str:
    """alerting/alertmanager.yml for a config in another directory: template paths made absolute; with
    `webhook_url`, every receiver delivers to that URL only (its other integrations need the outside world)."""
    doc = yamlfile.load(source, "alertmanager config")
    if "route" not in doc:
        raise ConfigError(f"alertmanager config: {source} has no top-level `route`")
    route, templates = doc["route"], doc.get("templates") or []
    if not isinstance(route, dict):
        raise ConfigError(f"alertmanager config: {source}: `route` must be a mapping, not {route!r}"[:300])
    if not isinstance(templates, list):
        raise ConfigError(f"alertmanager config: {source}: `templates` must be a list, not {templates!r}"[:300])
    base = source.resolve().parent
    doc["templates"] = [t if os.path.isabs(t) else str(base / t) for t in templates]
    if webhook_url:
        receivers = doc.get("receivers") or [{"name": route.get("receiver", "default")}]
        if not isinstance(receivers, list):
            raise ConfigError(f"alertmanager config: {source}: `receivers` must be a list, not {receivers!r}"[:300])
        doc["receivers"] = [
            {"name": r["name"], "webhook_configs": [{"url": webhook_url, "send_resolved": True}]} for r in receivers
        ]

    def walk(route: object) -> None:
        if not isinstance(route, dict):
            raise ConfigError(f"alertmanager config: {source}: a route must be a mapping, not {route!r}"[:300])
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
                  secure: SecureFiles | None = None, with_ledger: bool = False) -> dict[str, Path]:  # fmt: skip
    """Render every config the binaries read into `state`/config (Prometheus scrapes the ledger when
    `with_ledger`); returns their paths by service."""
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
    if with_ledger:
        targets[LEDGER_JOB] = [f"{HOST}:{ports['ledger']}"]
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


# ----------------------------------------------------------------------------------------------- services


def ledger_available() -> bool:
    """This installation has the ledger service (`carbonwatch ledger serve`)."""
    return importlib.util.find_spec("carbonwatch.ledger") is not None


def wanted_services(args: argparse.Namespace) -> list[str]:
    """The services to start, in ORDER: all but those turned off, Grafana when on PATH, the ledger when
    installed."""
    wanted = [s for s in ORDER if not (s == "exporter" and args.no_exporter)]
    if args.no_grafana or find_binary("grafana") is None:
        wanted.remove("grafana")
    if getattr(args, "no_ledger", False) or not ledger_available():
        wanted.remove("ledger")
    return wanted


def check_plan(root: Path, wanted: list[str], ports: dict[str, int]) -> None:
    """ConfigError for a missing binary, a checkout without the configs, or a port in use."""
    missing = [s for s in wanted if s in BINARIES and s != "grafana" and find_binary(s) is None]
    if missing:
        raise ConfigError(missing_binary_message(missing))
    for rel in ("prometheus/prometheus.yml", "alerting/alertmanager.yml"):
        if not (root / rel).is_file():
            raise ConfigError(
                f"--repo-root: {root} has no {rel} (run from a carbonwatch checkout or set CARBONWATCH_REPO_ROOT)"
            )
    busy = [f"{s} port {ports[s]}" for s in wanted if s in ports and port_in_use(ports[s])]
    if busy:
        raise ConfigError(
            f"ports in use: {', '.join(busy)} (is another stack running? try `carbonwatch stack status`, "
            "or move this one with --port-offset)"
        )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def plan(args: argparse.Namespace, root: Path, state: Path, ports: dict[str, int]) -> list[Service]:
    """The services to start, with their command lines (binaries resolved, configs rendered)."""
    wanted = wanted_services(args)
    check_plan(root, wanted, ports)
    secure = None
    if getattr(args, "secure", False):
        from carbonwatch.stack.config import write_secure_files

        secure = write_secure_files(state / SECURE_DIR)
    configs = write_configs(args, root, state, ports, secure, with_ledger="ledger" in wanted)
    out: list[Service] = []
    for name in wanted:
        cmd = command(name, args, state, ports, configs, secure)
        scheme = "https" if secure is not None and name in SECURE else "http"
        out.append(Service(name, ports.get(name, 0), cmd, log=str(state / "logs" / f"{name}.log"), scheme=scheme))
    return out


def command(name: str, args: argparse.Namespace, state: Path, ports: dict[str, int], configs: dict[str, Path],
            secure: SecureFiles | None) -> list[str]:  # fmt: skip
    """The command line of one service."""
    data = state / "data"
    listen = f"{HOST}:{ports.get(name, 0)}"
    if name == "prometheus":
        return [find_binary("prometheus") or "prometheus", f"--config.file={configs['prometheus']}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                f"--storage.tsdb.retention.time={format_duration(args.retention)}",
                f"--web.listen-address={listen}", "--web.enable-lifecycle"]  # fmt: skip
    if name == "pushgateway":
        cmd = [find_binary("pushgateway") or "pushgateway", f"--web.listen-address={listen}",
               f"--persistence.file={data / 'pushgateway.data'}", "--persistence.interval=1m"]  # fmt: skip
        return cmd + ([f"--web.config.file={secure.pushgateway_web}"] if secure is not None else [])
    if name == "alertmanager":
        return [find_binary("alertmanager") or "alertmanager", f"--config.file={configs['alertmanager']}",
                f"--storage.path={data / 'alertmanager'}", f"--web.listen-address={listen}",
                "--cluster.listen-address="]  # no gossip port: one instance, and parallel stacks do not clash
    if name == "reaper":
        scheme = "https" if secure is not None else "http"
        return [sys.executable, "-m", "carbonwatch.client.reaper",
                f"--gateway={scheme}://{HOST}:{ports['pushgateway']}", "--every=5s"]  # fmt: skip
    if name == "exporter":
        cmd = [sys.executable, "-m", "carbonwatch", "exporter", f"--web.listen-address={listen}",
               f"--storage.path={data / 'exporter'}"]  # the durable counters, in-tree for the native stack
        if secure is not None:
            cmd.append(f"--web.config.file={secure.exporter_web}")
        return cmd + list(args.exporter_arg)
    if name == "ledger":
        data.mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-m", "carbonwatch", "ledger", "serve",
                f"--prometheus=http://{HOST}:{ports['prometheus']}", f"--database=sqlite:///{data / LEDGER_DB}",
                f"--web.listen-address={listen}"]  # fmt: skip
    cmd = [find_binary("grafana") or "grafana-server", f"--homepath={args.grafana_homepath}"]
    return cmd[:1] + ["server"] + cmd[1:] if Path(cmd[0]).name == "grafana" else cmd


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



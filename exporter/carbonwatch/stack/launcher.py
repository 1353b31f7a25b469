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

The service table and configs are in carbonwatch.stack.services, process handling in carbonwatch.stack.processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from carbonwatch.client import settings as client_settings
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.stack.processes import alive, is_ready, running_state, start, stop, wait_ready
from carbonwatch.stack.services import (
    DEFAULT_PORTS,
    NO_PORT,
    ORDER,
    SECURE_DIR,
    STATE_FILE,
    Service,
    StackState,
    grafana_env,
    plan,
    render_alertmanager_config,
    repo_root_default,
)

LEDGER_ENV = "CARBONWATCH_LEDGER"  # the stack settings' ledger URL
RETENTION_S = 35 * 86400.0  # covers the longest period a rule computes (30d) with its offsets' look-back

__all__ = ["Service", "StackState", "add_arguments", "main", "render_alertmanager_config", "repo_root_default",
           "running_state"]


def stack_ports(args: argparse.Namespace) -> dict[str, int]:
    """Each service's port: its default plus --port-offset, or its --NAME-port."""
    ports = {name: port + args.port_offset for name, port in DEFAULT_PORTS.items()}
    for name in DEFAULT_PORTS:
        explicit = getattr(args, f"{name}_port", None)
        if explicit is not None:
            ports[name] = explicit
    for name, port in ports.items():
        if not 0 < port < 65536:
            raise ConfigError(f"--{name}-port: {port} is out of range 1..65535")
    return ports


def start_all(st: StackState, services: list[Service], args: argparse.Namespace, ports: dict[str, int]) -> list[str]:
    """Start the planned services in order, saving the state after each; the problems of those that do not
    become ready (everything is stopped again on an exception)."""
    state, root, secure = Path(st.state_dir), Path(st.repo_root), st.secure_files()
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
        return wait_ready(services, args.wait, secure)
    except BaseException:
        _down(st, quiet=True)
        raise


def up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    root = Path(args.repo_root).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if running_state(state) is not None:
        raise ConfigError(f"a stack is already running from {state}; stop it with "
                          f"`{command_name()} stack down --state-dir {state}`")
    ports = stack_ports(args)
    services = plan(args, root, state, ports)
    st = StackState(str(state), str(root), time.time())
    if getattr(args, "secure", False):
        st.secure_dir = str(state / SECURE_DIR)
    problems = start_all(st, services, args, ports)
    if problems:
        _down(st, quiet=True)
        print("carbonwatch stack: failed to start:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    settings_line = write_settings(st, args)
    print_up(st, args, settings_line)
    return 0


def print_up(st: StackState, args: argparse.Namespace, settings_line: str) -> None:
    """What `up` prints once every service is ready."""
    print(f"carbonwatch stack up (state, logs and data in {st.state_dir}):")
    _print_table(st)
    if st.grafana_password_file:
        print(f"Grafana login: admin, password in {st.grafana_password_file}")
    elif not args.no_grafana:
        print("Grafana: grafana-server is not on PATH, not started (dashboards: docs/dashboards.md)")
    if "ledger" not in st.services and not getattr(args, "no_ledger", False):
        print("Ledger: this installation has no `carbonwatch ledger`, not started (totals come from Prometheus)")
    secure = st.secure_files()
    if secure is not None:
        print(f"TLS and basic auth on the exporter and the Pushgateway: user {secure.username}, password in "
              f"{secure.password_file}, CA {secure.ca_cert}")  # fmt: skip
    if settings_line:
        print(settings_line)
    print(
        f"stop it with: {command_name()} stack down"
        + ("" if args.state_dir == default_state_dir() else f" --state-dir {st.state_dir}")
    )


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
    if "ledger" in st.services:
        out[LEDGER_ENV] = st.services["ledger"].url  # `carbonwatch report` and `job` read the ledger
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


class ServiceRow(TypedDict):
    """One service in `stack status` (and its --json output)."""

    service: str
    pid: int
    running: bool
    ready: bool
    url: str
    log: str


def status_rows(st: StackState) -> list[ServiceRow]:
    rows: list[ServiceRow] = []
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
            print(f"no stack running from {state} (start one with `{command_name()} stack up`)")
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


def _duration(what: str) -> Callable[[str], float]:
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
    u.add_argument("--retention", type=_duration("--retention"), default=RETENTION_S, metavar="DURATION",
                   help="Prometheus TSDB retention (default 35d: the rules' longest period, 30 days, plus the "
                        "look-back of their copies)")  # fmt: skip
    u.add_argument("--port-offset", type=int, default=0, help="add N to every default port (9090, 9091, ...)")
    for name, port in DEFAULT_PORTS.items():
        u.add_argument(f"--{name}-port", type=int, default=None, metavar="PORT", help=f"default {port} + offset")
    u.add_argument("--exporter-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to `carbonwatch exporter` (repeat; e.g. --exporter-arg=--zone=DE)")  # fmt: skip
    u.add_argument("--no-exporter", action="store_true", help="do not start the exporter (one already runs)")
    u.add_argument("--no-grafana", action="store_true", help="do not start grafana-server even when on PATH")
    u.add_argument("--no-ledger", action="store_true",
                   help="do not start the ledger (`carbonwatch ledger serve`, database STATE_DIR/data/ledger.db)")
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

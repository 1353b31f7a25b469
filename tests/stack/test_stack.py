"""`carbonwatch stack up|down|status` with the real binaries, on free ports and a temporary state dir."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from carbonwatch.client.settings import read_stack_file, resolve, write_stack_file
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.stack.config import SecureFiles, rule_files
from carbonwatch.stack.launcher import StackState, remove_settings, render_alertmanager_config, write_settings
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
HAVE_BINARIES = all(
    shutil.which(b) for b in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager", "promtool")
)
needs_binaries = pytest.mark.skipif(not HAVE_BINARIES, reason="Prometheus stack binaries not installed")


@pytest.fixture(autouse=True)
def own_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every stack here writes its settings file under the test's own XDG_CONFIG_HOME, never the user's."""
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("CARBONWATCH_STACK", raising=False)
    for var in [v for v in os.environ if v.startswith("CARBONWATCH_PUSHGATEWAY") or v == "CARBONWATCH_PROMETHEUS"]:
        monkeypatch.delenv(var)
    return home




def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", "stack", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def port_flags(ports: list[int]) -> list[str]:
    names = ("prometheus", "pushgateway", "alertmanager", "exporter", "grafana", "ledger")
    return [f"--{n}-port={p}" for n, p in zip(names, ports, strict=False)]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_missing_binaries_are_named_with_the_apt_get_line(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no binaries at all; python is called by absolute path
    proc = cli("up", "--state-dir", str(tmp_path / "state"), env=env)
    assert proc.returncode == 2
    for name in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager"):
        assert name in proc.stderr
    assert "sudo apt-get install -y prometheus prometheus-pushgateway prometheus-alertmanager" in proc.stderr


def test_status_and_down_without_a_stack(tmp_path: Path) -> None:
    st = cli("status", "--state-dir", str(tmp_path))
    assert st.returncode == 3 and "no stack running" in st.stdout
    js = cli("status", "--json", "--state-dir", str(tmp_path))
    assert json.loads(js.stdout)["services"] == []
    down = cli("down", "--state-dir", str(tmp_path))
    assert down.returncode == 0 and "nothing to stop" in down.stdout


def test_alertmanager_variant_sends_every_receiver_to_the_webhook(tmp_path: Path) -> None:
    src = ROOT / "alerting" / "alertmanager.yml"
    text = render_alertmanager_config(src, "http://127.0.0.1:1234/hook", group_wait="1s", group_interval="2s")
    doc = yaml.safe_load(text)
    original = yaml.safe_load(src.read_text())
    assert [r["name"] for r in doc["receivers"]] == [r["name"] for r in original["receivers"]]
    for r in doc["receivers"]:
        assert r["webhook_configs"] == [{"url": "http://127.0.0.1:1234/hook", "send_resolved": True}]
        assert set(r) == {"name", "webhook_configs"}

    def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield route
        for child in route.get("routes") or []:
            yield from routes(child)

    assert all(r["group_wait"] == "1s" and r["group_interval"] == "2s" for r in routes(doc["route"]))
    assert doc["inhibit_rules"] == original["inhibit_rules"]
    # Template paths are absolute, so the file works from the state dir.
    for t in doc["templates"]:
        assert os.path.isabs(t) and glob.glob(t) == glob.glob(str(ROOT / "alerting" / "templates" / "*.tmpl"))
    out = tmp_path / "alertmanager.yml"
    out.write_text(text)
    if shutil.which("amtool"):
        check = subprocess.run(["amtool", "check-config", str(out)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_variant_without_webhook_keeps_receivers(tmp_path: Path) -> None:
    src = ROOT / "alerting" / "alertmanager.yml"
    doc = yaml.safe_load(render_alertmanager_config(src))
    assert doc["receivers"] == yaml.safe_load(src.read_text())["receivers"]
    bad = tmp_path / "bad.yml"
    bad.write_text("receivers: []\n")
    with pytest.raises(ConfigError, match="no top-level `route`"):
        render_alertmanager_config(bad)


@needs_binaries
def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    ports = free_ports(6)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        proc = cli("up", "--state-dir", str(tmp_path), "--no-grafana", *port_flags(ports))
    assert proc.returncode == 2
    assert f"prometheus port {ports[0]}" in proc.stderr and "in use" in proc.stderr
    assert not (tmp_path / "stack.json").exists()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, list[int], subprocess.CompletedProcess[str]]]:
    ports = free_ports(6)
    state = tmp_path / "state"
    try:
        up = cli(
            "up",
            "--state-dir",
            str(state),
            "--no-grafana",
            "--scrape-interval=1s",
            "--evaluation-interval=1s",
            "--exporter-arg=--sample-interval=500ms",
            *port_flags(ports),
        )
        yield state, ports, up
    finally:
        cli("down", "--state-dir", str(state))


@pytest.mark.slow
@needs_binaries
def test_up_status_down(stack: tuple[Path, list[int], subprocess.CompletedProcess[str]]) -> None:
    state, ports, up = stack
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"http://127.0.0.1:{ports[0]}" in up.stdout and "stack down" in up.stdout
    # the settings file points later runs at this stack, and the client settings read it
    settings_file = Path(os.environ["XDG_CONFIG_HOME"]) / "carbonwatch" / "stack.env"
    assert f"settings in {settings_file}" in up.stdout
    s = resolve(environ=dict(os.environ))
    assert s.pushgateway == f"http://127.0.0.1:{ports[1]}" and s.prometheus == f"http://127.0.0.1:{ports[0]}"
    assert s.stack_file == str(settings_file) and not s.local_mode
    status = cli("status", "--json", "--state-dir", str(state))
    assert status.returncode == 0, status.stdout
    rows = json.loads(status.stdout)["services"]
    assert {r["service"] for r in rows} == {"prometheus", "pushgateway", "alertmanager", "exporter", "reaper", "ledger"}
    assert read_stack_file(settings_file)["CARBONWATCH_LEDGER"] == f"http://127.0.0.1:{ports[5]}"
    assert all(r["ready"] for r in rows)
    pids = {r["service"]: r["pid"] for r in rows}
    for name, pid in pids.items():
        assert (state / f"{name}.pid").read_text().strip() == str(pid)
        assert os.getsid(pid) == pid  # detached: its own session
        assert (state / "logs" / f"{name}.log").is_file()
    # Prometheus runs the generated config: it scrapes our exporter and the Pushgateway and loads the rules.
    prom = f"http://127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 30
    up_jobs: dict[str, str] = {}
    while time.monotonic() < deadline:
        res = requests.get(f"{prom}/api/v1/query", params={"query": "up"}, timeout=5).json()["data"]["result"]
        up_jobs = {r["metric"]["job"]: r["value"][1] for r in res}
        if up_jobs.get("carbonwatch") == "1" and up_jobs.get("pushgateway") == "1":
            break
        time.sleep(0.5)
    assert up_jobs.get("carbonwatch") == "1" and up_jobs.get("pushgateway") == "1", up_jobs
    # and the ledger, under whatever job name (nothing depends on it): its own series arrive in Prometheus
    deadline = time.monotonic() + 60
    ledger: list[Any] = []
    while time.monotonic() < deadline and not ledger:
        ledger = requests.get(f"{prom}/api/v1/query", params={"query": "carbonwatch_ledger_info"},
                              timeout=5).json()["data"]["result"]
        time.sleep(0.5)
    assert ledger and (state / "data" / "ledger.db").is_file(), (state / "logs" / "ledger.log").read_text()[-2000:]
    groups = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert any(g["name"].startswith("carbonwatch") for g in groups)
    # Rendered for the 1s evaluation interval (longer groups scaled by the same factor as the base one, 1/15).
    committed = {g["name"]: g.get("interval", "15s") for f in rule_files(ROOT) for g in
                 (yaml.safe_load(f.read_text()) or {}).get("groups") or []}  # fmt: skip
    assert {g["name"]: g["interval"] for g in groups} == {
        name: parse_duration(iv) / 15 for name, iv in committed.items()
    }
    # A second `up` on the same state dir refuses.
    again = cli("up", "--state-dir", str(state), "--no-grafana", *port_flags(ports))
    assert again.returncode == 2 and "already running" in again.stderr
    down = cli("down", "--state-dir", str(state))
    assert down.returncode == 0 and "prometheus" in down.stdout
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not settings_file.exists() and resolve(environ=dict(os.environ)).local_mode
    assert cli("status", "--state-dir", str(state)).returncode == 3


@pytest.mark.slow
@needs_binaries
def test_a_service_that_dies_at_start_is_reported_and_the_rest_stopped(tmp_path: Path) -> None:
    ports = free_ports(6)
    state = tmp_path / "state"
    try:
        up = cli(
            "up", "--state-dir", str(state), "--no-grafana", "--exporter-arg=--zone=not a zone!", *port_flags(ports)
        )
        assert up.returncode == 1
        assert "exporter exited while starting" in up.stderr and "not a grid zone" in up.stderr
        assert not (state / "stack.json").exists()
        for name in ("prometheus", "alertmanager", "pushgateway"):
            assert not (state / f"{name}.pid").exists()
        for port in ports[:4]:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))  # free again: nothing left listening
    finally:
        cli("down", "--state-dir", str(state))


def _fake_stack(state: Path, port: int) -> StackState:
    from carbonwatch.stack.launcher import Service

    state.mkdir(parents=True, exist_ok=True)
    st = StackState(str(state), str(ROOT), time.time())
    st.services["pushgateway"] = Service("pushgateway", port, ["pushgateway"])
    st.services["prometheus"] = Service("prometheus", port - 1, ["prometheus"])
    st.save()  # stack.json: "running" as far as the settings file is concerned
    return st


def test_a_second_stack_does_not_take_over_or_remove_the_first_ones_settings(
    tmp_path: Path, own_config_home: Path
) -> None:
    first = _fake_stack(tmp_path / "one", 19091)
    second = _fake_stack(tmp_path / "two", 29091)
    args = argparse.Namespace(settings_file=None, no_settings_file=False)
    line1 = write_settings(first, args)
    default = own_config_home / "carbonwatch" / "stack.env"
    assert first.settings_file == str(default) and "settings in" in line1
    line2 = write_settings(second, args)
    assert second.settings_file == str(tmp_path / "two" / "stack.env")
    assert line2 == f"export CARBONWATCH_STACK={tmp_path / 'two' / 'stack.env'}   # in each shell whose runs " \
                    "should report to this stack"
    assert read_stack_file(default, {})["CARBONWATCH_PUSHGATEWAY"] == "http://127.0.0.1:19091"
    s = resolve(environ={"XDG_CONFIG_HOME": str(own_config_home), "CARBONWATCH_STACK": second.settings_file})
    assert s.pushgateway == "http://127.0.0.1:29091"
    remove_settings(second)
    assert default.exists() and not Path(second.settings_file).exists()
    # the first stack's file written over by someone else's stack is not removed by the first's down
    write_stack_file(default, {"CARBONWATCH_STACK_STATE_DIR": str(tmp_path / "two"),
                               "CARBONWATCH_PUSHGATEWAY": "http://127.0.0.1:29091"})  # fmt: skip
    remove_settings(first)
    assert default.exists()
    # a stale file (its stack's state is gone) is ignored by the client and replaced by the next up
    (tmp_path / "two" / "stack.json").unlink()
    assert resolve(environ={"XDG_CONFIG_HOME": str(own_config_home)}).local_mode
    write_settings(first, args)
    assert first.settings_file == str(default)
    remove_settings(first)
    assert not default.exists()


@pytest.mark.slow
@needs_binaries
def test_secure_stack_serves_tls_and_basic_auth_and_runs_report_to_it(tmp_path: Path, own_config_home: Path) -> None:
    ports = free_ports(6)
    state = tmp_path / "state"
    try:
        up = cli("up", "--state-dir", str(state), "--no-grafana", "--secure", "--scrape-interval=1s",
                 "--evaluation-interval=1s", "--exporter-arg=--sample-interval=500ms", *port_flags(ports))  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        files = SecureFiles(state / "secure")
        assert f"https://127.0.0.1:{ports[1]}" in up.stdout and f"https://127.0.0.1:{ports[3]}" in up.stdout
        assert files.password() not in up.stdout + up.stderr
        assert oct(files.password_file.stat().st_mode & 0o777) == "0o600"
        gateway, exporter = f"https://127.0.0.1:{ports[1]}", f"https://127.0.0.1:{ports[3]}"
        creds = (files.username, files.password())
        # the exporter: TLS, Prometheus' client certificate, and the password
        client = (str(files.client_cert), str(files.client_key))
        assert requests.get(exporter + "/metrics", verify=str(files.ca_cert), cert=client, timeout=10,
                            auth=(files.username, "wrong")).status_code == 401  # fmt: skip
        with pytest.raises(requests.ConnectionError):
            requests.get(exporter + "/metrics", verify=str(files.ca_cert), auth=creds, timeout=10)  # no client cert
        plain = requests.get(f"http://127.0.0.1:{ports[3]}/metrics", timeout=10)  # no plain HTTP: a 400 says so
        assert plain.status_code == 400 and "carbonwatch_node_info" not in plain.text
        r = requests.get(exporter + "/metrics", verify=str(files.ca_cert), cert=client, auth=creds, timeout=10)
        assert r.status_code == 200 and "carbonwatch_node_info" in r.text
        # the Pushgateway: TLS and the password
        assert requests.get(gateway + "/api/v1/status", verify=str(files.ca_cert), timeout=10).status_code == 401
        # Prometheus scrapes both over TLS with the generated settings
        prom = f"http://127.0.0.1:{ports[0]}"
        deadline = time.monotonic() + 30
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            targets = requests.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets if t["scrapeUrl"].startswith("https://")}
            if health == {"carbonwatch": "up", "pushgateway": "up"}:
                break
            time.sleep(0.5)
        assert health == {"carbonwatch": "up", "pushgateway": "up"}
        # a run in a fresh shell (only the settings file points it at the stack) pushes through TLS and auth
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
        env.update(XDG_CONFIG_HOME=str(own_config_home), CARBONWATCH_RUNS_FILE=str(tmp_path / "runs.jsonl"))
        run = subprocess.run([sys.executable, "-m", "carbonwatch", "run", "--run-id", "secure-run-1", "--retention",
                              "10m", "--", sys.executable, "-c", "import time; time.sleep(1)"],
                             capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert files.password() not in run.stdout + run.stderr
        listed = requests.get(gateway + "/api/v1/metrics", verify=str(files.ca_cert), auth=creds, timeout=10)
        ids = {g["labels"].get("run_id") for g in listed.json()["data"]}
        assert "secure-run-1" in ids, run.stderr
    finally:
        cli("down", "--state-dir", str(state))
    assert not (own_config_home / "carbonwatch" / "stack.env").exists()

"""`carbonwatch stack up|down|status` with the real binaries, on free ports and a temporary state dir."""

from __future__ import annotations

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

from carbonwatch.errors import ConfigError
from carbonwatch.stack import render_alertmanager_config

ROOT = Path(__file__).resolve().parents[1]
HAVE_BINARIES = all(
    shutil.which(b) for b in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager", "promtool")
)
needs_binaries = pytest.mark.skipif(not HAVE_BINARIES, reason="Prometheus stack binaries not installed")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


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
    names = ("prometheus", "pushgateway", "alertmanager", "exporter", "grafana")
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
    ports = free_ports(5)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        proc = cli("up", "--state-dir", str(tmp_path), "--no-grafana", *port_flags(ports))
    assert proc.returncode == 2
    assert f"prometheus port {ports[0]}" in proc.stderr and "in use" in proc.stderr
    assert not (tmp_path / "stack.json").exists()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, list[int], subprocess.CompletedProcess[str]]]:
    ports = free_ports(5)
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
    assert f"http://127.0.0.1:{ports[0]}" in up.stdout and "carbonwatch stack down" in up.stdout
    status = cli("status", "--json", "--state-dir", str(state))
    assert status.returncode == 0, status.stdout
    rows = json.loads(status.stdout)["services"]
    assert {r["service"] for r in rows} == {"prometheus", "pushgateway", "alertmanager", "exporter"}
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
    groups = requests.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert any(g["name"].startswith("carbonwatch") for g in groups)
    # Rendered for the 1s evaluation interval (longer groups scaled by the same factor as the base one).
    assert min(g["interval"] for g in groups) == 1 and max(g["interval"] for g in groups) < 15
    # A second `up` on the same state dir refuses.
    again = cli("up", "--state-dir", str(state), "--no-grafana", *port_flags(ports))
    assert again.returncode == 2 and "already running" in again.stderr
    down = cli("down", "--state-dir", str(state))
    assert down.returncode == 0 and "prometheus" in down.stdout
    assert not any(pid_alive(pid) for pid in pids.values())
    assert cli("status", "--state-dir", str(state)).returncode == 3


@pytest.mark.slow
@needs_binaries
def test_a_service_that_dies_at_start_is_reported_and_the_rest_stopped(tmp_path: Path) -> None:
    ports = free_ports(5)
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

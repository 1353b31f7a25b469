"""Alertmanager config (amtool) and the end-to-end path: real Prometheus evaluating our rule files
against exporter- and Pushgateway-format metrics we serve, real Alertmanager with our routing, and a
webhook receiver that gets the notification."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonwatch.stack.config import render_prometheus_config, render_rules

ROOT = Path(__file__).resolve().parents[2]
AM_CONFIG = ROOT / "alerting" / "alertmanager.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["amtool", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_amtool_check_config_is_clean() -> None:
    res = amtool("check-config", str(AM_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and "1 templates" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "labels, receivers",
    [
        (["alertname=CarbonwatchRunBudgetExceeded", "severity=critical", "team=vision", "project=vision"],
         "carbonwatch-critical"),
        (["alertname=CarbonwatchRunBudgetWarning", "severity=warning", "team=vision", "project=vision"],
         "carbonwatch-default"),
        (["alertname=CarbonwatchHighIntensityTraining", "severity=info", "team=vision"], "carbonwatch-info"),
        (["alertname=CarbonwatchRunBudgetExceeded", "severity=critical", "team=research", "project=nlp"],
         "team-research,carbonwatch-critical"),
        (["alertname=CarbonwatchProjectBudgetWarning", "severity=warning", "project=llm-pretrain"],
         "project-llm-pretrain,carbonwatch-default"),
        (["alertname=SomethingElse"], "carbonwatch-default"),
    ],
    ids=["critical", "warning", "info", "team-route-continues", "project-route-continues", "fallback"],
)
def test_amtool_routes(labels: list[str], receivers: str) -> None:
    res = amtool("config", "routes", "test", f"--config.file={AM_CONFIG}", f"--verify.receivers={receivers}",
                 *labels)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == receivers


# ---- end to end -----------------------------------------------------------------------------------


class Serve:
    """A tiny HTTP server answering GET /metrics with `body()` and recording POSTed JSON."""

    def __init__(self, body: Callable[[], str] = lambda: "") -> None:
        self.posts: list[tuple[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                data = body().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                outer.posts.append((self.path, json.loads(self.rfile.read(n))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exporter_text(t0: float) -> str:
    """One DE node running run "e2e" at 36 kW (0.01 kWh/s -> 3.809 g/s at the DE table value), with the
    energy and emissions counters an exporter integrates."""
    e = 36000.0 * (time.time() - t0)
    return (
        'carbonwatch_node_info{zone="DE",cpu_model="Intel Xeon",hostname="n1",gpus="1",'
        'cpu_source="rapl",memory_source="rapl"} 1\n'
        'carbonwatch_grid_carbon_intensity_grams_per_kwh{zone="DE",source="table:owid-2023"} 380.9\n'
        'carbonwatch_node_intensity_grams_per_kwh{zone="DE",source="table:owid-2023"} 380.9\n'
        "# TYPE carbonwatch_run_energy_joules_total counter\n"
        f'carbonwatch_run_energy_joules_total{{run_id="e2e",component="gpu"}} {e}\n'
        "# TYPE carbonwatch_run_emissions_grams_total counter\n"
        f'carbonwatch_run_emissions_grams_total{{run_id="e2e",component="gpu"}} {e / 3.6e6 * 380.9}\n'
        'carbonwatch_run_power_watts{run_id="e2e",component="gpu"} 36000\n'
    )


def gateway_text() -> str:
    lab = 'job="carbonwatch_run",instance="",run_id="e2e"'
    return (
        f'carbonwatch_run_info{{{lab},user="alice",project="llm-pretrain",model="gpt-small",'
        'team="research",host="n1",status="running"} 1\n'
        f"carbonwatch_run_budget_grams{{{lab}}} 10\n"
        f"carbonwatch_run_start_time_seconds{{{lab}}} {time.time()}\n"
    )


def start_alertmanager(tmp_path: Path, webhook_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """A real Alertmanager with our routing (alerting/alertmanager.yml), every webhook pointed at the test's
    receiver on `webhook_port`, and 1 s group waits; returns it once ready, and its port."""
    am = yaml.safe_load(AM_CONFIG.read_text())
    for r in am["receivers"]:
        for w in r.get("webhook_configs", []):
            w["url"] = w["url"].replace("http://127.0.0.1:5001", f"http://127.0.0.1:{webhook_port}")

    def fast(route: dict[str, Any]) -> None:
        route.update(group_wait="1s", group_interval="1s")
        for child in route.get("routes", []):
            fast(child)

    fast(am["route"])
    amdir = tmp_path / "am"
    amdir.mkdir()
    shutil.copytree(ROOT / "alerting" / "templates", amdir / "templates")
    (amdir / "alertmanager.yml").write_text(yaml.safe_dump(am))
    port = free_port()
    log = tmp_path / "alertmanager.log"
    proc = start(["prometheus-alertmanager", f"--config.file={amdir / 'alertmanager.yml'}",
                  f"--storage.path={amdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                  "--cluster.listen-address="], log)
    wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, log)
    return proc, port


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} process exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not ready:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    t0 = time.time()
    exporter, gateway, webhook = Serve(lambda: exporter_text(t0)), Serve(gateway_text), Serve()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # Alertmanager: our config with every webhook pointed at the test receiver and short timings.
        am_proc, am_port = start_alertmanager(tmp_path, webhook.port)
        procs.append(am_proc)

        # Prometheus: the committed config and rules, rendered for local targets and 1 s intervals.
        render_rules(ROOT, tmp_path / "rules", "1s", for_override="2s")
        cfg = render_prometheus_config(
            ROOT, {"carbonwatch": [f"127.0.0.1:{exporter.port}"], "pushgateway": [f"127.0.0.1:{gateway.port}"]},
            [f"127.0.0.1:{am_port}"], "1s", "1s", tmp_path / "rules",
        )
        (tmp_path / "prometheus.yml").write_text(cfg)
        prom_port = free_port()
        prom_log = tmp_path / "prometheus.log"
        procs.append(start(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s"],
                           prom_log))
        wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", procs[-1], prom_log)
        logs = [tmp_path / "alertmanager.log", prom_log]
        yield {"webhook": webhook, "prometheus": f"http://127.0.0.1:{prom_port}", "logs": logs}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in (exporter, gateway, webhook):
            s.close()


def query(base: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?query={urllib.parse.quote(expr)}" + (f"&time={at}" if at is not None else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return list(json.load(r)["data"]["result"])


@pytest.mark.slow
def test_a_run_past_its_budget_notifies_the_webhook_with_user_project_and_run(stack: dict[str, Any]) -> None:
    webhook: Serve = stack["webhook"]
    deadline = time.time() + 60
    found: list[tuple[str, dict[str, Any]]] = []
    while time.time() < deadline and not found:
        time.sleep(0.5)
        found = [
            (path, a)
            for path, payload in list(webhook.posts)
            for a in payload["alerts"]
            if a["labels"].get("alertname") == "CarbonwatchRunBudgetExceeded" and a["status"] == "firing"
        ]
    logs = "\n".join(p.read_text()[-2000:] for p in stack["logs"])
    assert found, f"no notification; got {webhook.posts!r}\n{logs}"
    paths = {p for p, _ in found}
    # critical route, plus the team and project routes that `continue`
    assert paths == {"/carbonwatch/critical", "/carbonwatch/team/research", "/carbonwatch/project/llm-pretrain"}
    labels = found[0][1]["labels"]
    assert {k: labels[k] for k in ("run_id", "user", "project", "team", "severity")} == {
        "run_id": "e2e", "user": "alice", "project": "llm-pretrain", "team": "research", "severity": "critical",
    }
    ann = found[0][1]["annotations"]
    assert ann["runbook_url"] == "docs/runbook.md#carbonwatchrunbudgetexceeded"
    assert ann["dashboard"].endswith("var-run_id=e2e")
    assert ann["description"].startswith("Run e2e of alice (project llm-pretrain) has emitted ")
    # The recorded totals behind it: the exporter's energy and emissions counters (DE table intensity). The two
    # are recorded by different groups (emissions every 15 s for the budget alerts, energy every 30 s), so each
    # is checked against the counters at its own evaluation time.
    base = stack["prometheus"]
    for recorded, counter in (("run_id:carbonwatch_energy_joules:total", "carbonwatch_run_energy_joules_total"),
                              ("run_id:carbonwatch_emissions_grams:total", "carbonwatch_run_emissions_grams_total")):
        def stamp(recorded: str = recorded) -> float:  # the recorded sample's evaluation time
            return float(query(base, f'timestamp({recorded}{{run_id="e2e"}})')[0]["value"][1])

        at, value, again = stamp(), query(base, f'{recorded}{{run_id="e2e"}}')[0]["value"][1], stamp()
        while again != at:  # an evaluation in between: read both again
            at, value, again = again, query(base, f'{recorded}{{run_id="e2e"}}')[0]["value"][1], stamp()
        raw = query(base, f'sum(last_over_time({counter}{{run_id="e2e"}}[15m]))', at)
        assert float(value) == pytest.approx(float(raw[0]["value"][1]), rel=1e-9), recorded
        if counter.startswith("carbonwatch_run_emissions"):
            energy = query(base, 'sum(last_over_time(carbonwatch_run_energy_joules_total{run_id="e2e"}[15m]))', at)
            assert float(value) == pytest.approx(float(energy[0]["value"][1]) / 3.6e6 * 380.9, rel=1e-9)

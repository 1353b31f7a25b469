"""End to end with the real binaries: `carbonwatch stack up` (Prometheus, Pushgateway, Alertmanager, the exporter),
a real training run under `carbonwatch run` that passes a tiny budget, and then:

- the recorded per-run energy and emissions agree with the exporter's counters and the zone's intensity;
- CarbonwatchRunBudgetExceeded reaches a test webhook through Alertmanager;
- the run's Pushgateway group is gone after the run ends;
- every dashboard panel's query, variables substituted, is accepted by the live Prometheus, and returns data
  except the panels listed in EXPECTED_EMPTY (GPU panels on a machine without GPUs).

Intervals are 1s (rendered from the committed files by carbonwatch.stack.config), so it takes about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from carbonwatch import dashboards
from tests.support import free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(b) for b in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager")),
        reason="Prometheus stack binaries not installed",
    ),
]

USER, PROJECT, MODEL, TEAM = "alice", "vision", "mlp", "e2e"  # alice and vision have budgets in budgets.yml
BUDGET_GRAMS = 0.0002
PRICE_PER_KWH = 0.25
# Panels with no data on this machine, and why. Everything else must return data during the run.
EXPECTED_EMPTY = {
    (q.dashboard, q.panel): "GPU series: this machine has no GPU" for q in dashboards.queries() if q.gpu_only
}
# The ledger dashboard reads only the ledger's /metrics: empty where the stack runs no ledger.
EXPECTED_EMPTY |= {(q.dashboard, q.panel): "no ledger in this stack" for q in dashboards.queries() if q.ledger_only}
# A period forecast exists only while something burns (it needs a 5m rate of the user's or project's
# emissions); with the short test run that can end before the rate has two points.
EXPECTED_EMPTY |= {
    ("carbonwatch-budgets", "User forecast"): "no current burn once the run has ended",
    ("carbonwatch-budgets", "Project forecast"): "no current burn once the run has ended",
    # Period totals per user, project, model and zone are read from the recorded copies of the runs' totals
    # (every 5 minutes, and hourly for 30 days, scaled to 20 s and 4 min here): a one-minute test run ends
    # before the copies hold the run, and the day's and month's increases need two copies.
    **{("carbonwatch-budgets", p): "period totals come from the 5-minute / hourly copies" for p in (
        "Project CO2e against budget", "Project budget used", "Project burn-down", "User CO2e against budget",
        "User budget used", "User burn-down")},
    **{("carbonwatch-fleet", p): "period totals come from the 5-minute / hourly copies" for p in (
        "CO2e by model, 30 days", "CO2e by project, 30 days", "CO2e by user, 30 days", "CO2e by zone, 30 days",
        "CO2e this month", "Energy this month")},
    ("carbonwatch-run", "Cost"): "cost is read from the runs' 5-minute copies",
    **{("carbonwatch-fleet", p): "period totals come from the 5-minute copies" for p in (
        "CO2e by model, today", "CO2e by project, today", "CO2e by user, today", "CO2e by zone, today",
        "CO2e today", "Energy today")},
}




class Webhook:
    """An Alertmanager webhook receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        return [a for n in list(self.notifications) for a in n.get("alerts", [])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    prometheus: str
    pushgateway: str
    alertmanager: str
    state: Path
    env: dict[str, str]
    webhook: Webhook

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        data = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        body = requests.post(f"{self.prometheus}/api/v1/query", data=data, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str, at: float | None = None) -> float | None:
        res = self.query(expr, at)
        return float(res[0]["value"][1]) if res else None


def eventually(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    spool = tmp / "spool"
    spool.mkdir()
    exporter_cfg = tmp / "exporter.yml"
    exporter_cfg.write_text(
        f"process:\n  spool_dir: {spool}\n"
        f"intensity:\n  provider: table\n  price_per_kwh: {PRICE_PER_KWH}\n  currency: EUR\n"
    )
    ports = free_ports(5)
    names = ("prometheus", "pushgateway", "alertmanager", "exporter", "grafana")
    webhook = Webhook()
    state = tmp / "state"
    env = {**os.environ, "CARBONWATCH_SPOOL_DIR": str(spool), "CARBONWATCH_RUNS_FILE": str(tmp / "runs.jsonl")}
    cmd = [sys.executable, "-m", "carbonwatch", "stack", "up", "--state-dir", str(state), "--no-grafana"]
    cmd += [f"--{n}-port={p}" for n, p in zip(names, ports, strict=True)]
    cmd += ["--scrape-interval=1s", "--evaluation-interval=1s", "--alert-for=2s"]
    cmd += ["--alert-group-wait=1s", "--alert-group-interval=1s", f"--webhook-url={webhook.url}"]
    cmd += [f"--exporter-arg=--config.file={exporter_cfg}", "--exporter-arg=--sample-interval=500ms"]
    try:
        up = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        assert up.returncode == 0, up.stdout + up.stderr
        yield Stack(
            prometheus=f"http://127.0.0.1:{ports[0]}",
            pushgateway=f"http://127.0.0.1:{ports[1]}",
            alertmanager=f"http://127.0.0.1:{ports[2]}",
            state=state,
            env=env,
            webhook=webhook,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "carbonwatch", "stack", "down", "--state-dir", str(state)],
            capture_output=True,
            timeout=60,
        )
        webhook.close()


@dataclass
class RunResult:
    run_id: str
    panel_results: list[tuple[dashboards.Query, str, int]]
    rc: int
    output: str


WORKLOAD = """
import os, sys, time
import carbonwatch

stop_file, deadline = sys.argv[1], time.time() + float(sys.argv[2])
with carbonwatch.run(model="mlp", total_epochs=1000) as run:
    epoch = 0
    while not os.path.exists(stop_file) and time.time() < deadline:
        epoch += 1
        run.epoch(epoch)
        run.phase("train")
        t, x = time.time(), 0
        while time.time() - t < 1.0:  # an epoch is one second of CPU
            for i in range(20000):
                x += i * i
            run.progress(samples=20000, loss=1.0 / epoch)
print(f"workload: {epoch} epochs", file=sys.stderr)
"""


@pytest.fixture(scope="module")
def run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunResult]:
    """A training-like CPU workload using the in-code API under `carbonwatch run`; it goes on until the checks
    that need a live run are done (the stop file), then ends normally."""
    tmp = tmp_path_factory.mktemp("run")
    script, stop_file = tmp / "workload.py", tmp / "stop"
    script.write_text(WORKLOAD)
    run_id = "e2e-" + uuid.uuid4().hex[:8]
    cmd = [sys.executable, "-m", "carbonwatch", "run", f"--pushgateway={stack.pushgateway}"]
    cmd += [f"--prometheus={stack.prometheus}", f"--run-id={run_id}", f"--budget-grams={BUDGET_GRAMS}"]
    cmd += [f"--user={USER}", f"--project={PROJECT}", f"--model={MODEL}", f"--team={TEAM}", "--retention=2s"]
    cmd += ["--", sys.executable, str(script), str(stop_file), "150"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=stack.env, cwd=ROOT)
    try:
        sel = f'run_id="{run_id}"'

        def firing() -> list[dict[str, Any]]:
            assert proc.poll() is None, "the run ended early: " + (proc.stdout.read() if proc.stdout else "")
            return stack.query(f'ALERTS{{alertname="CarbonwatchRunBudgetExceeded",alertstate="firing",{sel}}}')

        eventually(firing, 60, "the budget alert to fire")
        eventually(lambda: stack.query(f"run_id:carbonwatch_grams_per_epoch:ratio{{{sel}}}"), 30, "grams per epoch")
        eventually(lambda: stack.query(f"run_id:carbonwatch_emissions_grams:forecast{{{sel}}}"), 30, "a forecast")
        values = dashboards.default_values()
        values.update(run_id=run_id, user=USER, project=PROJECT, model=MODEL, period="30d")
        panel_results = dashboards.check_live(stack.prometheus, values)
        assert proc.poll() is None, "the run ended before the checks while running"
        stop_file.touch()
        out, _ = proc.communicate(timeout=60)
        yield RunResult(run_id, panel_results, proc.returncode, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_run_succeeds(run: RunResult) -> None:
    assert run.rc == 0, run.output
    assert f"run {run.run_id}: succeeded" in run.output


def test_recorded_energy_and_emissions_match_the_exporter_and_the_intensity(stack: Stack, run: RunResult) -> None:
    sel = f'run_id="{run.run_id}"'
    # The exporter's own per-run counters (summed over components), at their last value.
    measured = stack.value(f"sum(last_over_time(carbonwatch_run_energy_joules_total{{{sel}}}[10m]))")
    assert measured is not None and measured > 0

    def settled() -> float | None:
        recorded = stack.value(f"last_over_time(run_id:carbonwatch_energy_joules:total{{{sel}}}[10m])")
        return recorded if recorded is not None and recorded >= 0.9 * measured else None

    recorded = eventually(settled, 20, "the recorded energy to catch up with the exporter")
    assert recorded == pytest.approx(measured, rel=0.1)
    # The per-component totals evaluate less often than the run's: each equals the exporter's counters as they
    # were when it was evaluated, give or take the scrape that had not been stored yet (1 s scrapes here).
    parts = eventually(lambda: stack.query(f"run_id_component:carbonwatch_energy_joules:total{{{sel}}}"), 60,
                       "the per-component totals")
    for p in parts:
        at, value = float(p["value"][0]), float(p["value"][1])
        comp = p["metric"]["component"]
        expr = f'sum(last_over_time(carbonwatch_run_energy_joules_total{{{sel},component="{comp}"}}[15m]))'
        # the sample's own time (an instant query reports the query's)
        at = stack.value(f'timestamp(run_id_component:carbonwatch_energy_joules:total{{{sel},component="{comp}"}})')
        assert at is not None
        then, before = stack.value(expr, at=at), stack.value(expr, at=at - 2.5)
        assert then is not None and (before or 0.0) * 0.999 <= value <= then * 1.001, (comp, before, value, then)
    assert {p["metric"]["component"] for p in parts} >= {"cpu"}
    # The emissions total is recorded every 15 s, the energy total every 30 s: compare the emissions with the
    # exporters' energy at the emissions' own evaluation.
    grams_at = stack.value(f"timestamp(last_over_time(run_id:carbonwatch_emissions_grams:total{{{sel}}}[10m]))")
    assert grams_at is not None
    grams = stack.value(f"last_over_time(run_id:carbonwatch_emissions_grams:total{{{sel}}}[10m])", at=grams_at)
    # give or take the scrape not yet stored when the rule ran (1 s scrapes), as for the components above.
    energy = f"sum(last_over_time(carbonwatch_run_energy_joules_total{{{sel}}}[15m]))"
    then, before = stack.value(energy, at=grams_at), stack.value(energy, at=grams_at - 2.5)
    intensity = stack.value('zone:carbonwatch_grid_intensity_grams_per_kwh:current{zone="world"}')
    assert intensity == pytest.approx(481)
    assert grams is not None and grams > BUDGET_GRAMS and then is not None
    lo, hi = (before or 0.0) / 3.6e6 * intensity, then / 3.6e6 * intensity
    assert lo * 0.99 <= grams <= hi * 1.01, (before, grams, then)
    cost = eventually(lambda: stack.query(f"last_over_time(run_id:carbonwatch_cost:total{{{sel}}}[10m])"), 60,
                      "the run's cost (from its 5-minute copies)")
    assert cost and cost[0]["metric"]["currency"] == "EUR"
    # cost is priced from the runs' 5-minute copies of their energy (20 s here): at most the energy the exporter had
    # counted when the cost was evaluated (the copy may be newer than `recorded` above, read while still settling)
    cost_at = stack.value(f"timestamp(run_id:carbonwatch_cost:total{{{sel}}})")
    assert cost_at is not None
    energy_then = stack.value(f"sum(last_over_time(carbonwatch_run_energy_joules_total{{{sel}}}[15m]))", at=cost_at)
    assert energy_then is not None
    assert 0 < float(cost[0]["value"][1]) <= energy_then / 3.6e6 * PRICE_PER_KWH * 1.001


def test_the_budget_alert_reaches_the_webhook_through_alertmanager(stack: Stack, run: RunResult) -> None:
    def delivered() -> list[dict[str, Any]]:
        return [
            a
            for a in stack.webhook.alerts()
            if a["labels"].get("alertname") == "CarbonwatchRunBudgetExceeded"
            and a["labels"].get("run_id") == run.run_id
        ]

    alerts = eventually(delivered, 30, "the webhook notification")
    labels = alerts[0]["labels"]
    assert labels["severity"] == "critical" and labels["user"] == USER and labels["project"] == PROJECT
    assert run.run_id in alerts[0]["annotations"]["description"]


def test_no_stale_run_group_after_the_run_ends(stack: Stack, run: RunResult) -> None:
    def groups() -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = requests.get(f"{stack.pushgateway}/api/v1/metrics", timeout=5).json()["data"]
        return [g for g in data if g["labels"].get("run_id") == run.run_id]

    eventually(lambda: not groups(), 20, "the run's Pushgateway group to be deleted")
    sel = f'run_id="{run.run_id}"'
    # the client's run info goes stale with its group (the exporter's own, origin="env", stays for the linger)
    eventually(lambda: not stack.query(f'carbonwatch_run_info{{{sel},origin=~"|client"}}'), 20,
               "the client's carbonwatch_run_info to go stale")
    # What the dashboards and the report need after the end is kept by the rules.
    assert eventually(lambda: stack.query(f"last_over_time(run_id:carbonwatch_run_info:last{{{sel}}}[10m])"), 30,
                      "the recorded run info")


def test_every_dashboard_query_is_accepted_and_returns_data_where_it_exists(run: RunResult) -> None:
    errors = [f"{q.dashboard} / {q.panel}: {err}" for q, err, _n in run.panel_results if err]
    assert not errors, "\n".join(errors)
    empty = {(q.dashboard, q.panel) for q, _err, n in run.panel_results if n == 0}
    unexpected = sorted(empty - set(EXPECTED_EMPTY))
    assert not unexpected, f"panels without data: {unexpected}"
    assert len(run.panel_results) == len(dashboards.queries())


def test_the_report_reads_the_recorded_run(stack: Stack, run: RunResult) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carbonwatch",
            "report",
            run.run_id,
            "--prometheus",
            stack.prometheus,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    sel = f'run_id="{run.run_id}"'
    grams = float(
        requests.post(
            f"{stack.prometheus}/api/v1/query",
            data={"query": f"last_over_time(run_id:carbonwatch_emissions_grams:total{{{sel}}}[10m])"},
            timeout=10,
        ).json()["data"]["result"][0]["value"][1]
    )
    assert rep["status"] == "succeeded"
    assert rep["user"] == USER and rep["project"] == PROJECT and rep["model"] == MODEL
    assert rep["emissions_grams"] == pytest.approx(grams, rel=0.05)
    assert rep["budget_grams"] == pytest.approx(BUDGET_GRAMS)
    assert rep["budget_used_ratio"] > 1
    assert rep["components"]["cpu"]["sources"] in (["model"], ["rapl"])
    assert rep["zones"] == ["world"]
    assert rep["duration_seconds"] > 0 and rep["epochs"] >= 1 and rep["samples"] > 0

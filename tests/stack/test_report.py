"""`carbonwatch report` against a real Prometheus serving a TSDB built with promtool from known series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from carbonwatch.equivalents import FACTORS
from carbonwatch.errors import ConfigError, NetworkError
from carbonwatch.promql import Prometheus
from carbonwatch.stack.figures import fmt_duration, fmt_energy, fmt_grams
from carbonwatch.stack.report import collect, render_table
from tests import support
from tests.support import free_port, run_cli

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None, reason="prometheus/promtool not installed"
)

BASE = (int(time.time()) // 60) * 60 - 3 * 3600  # three hours ago, on a minute
AT = BASE + 600  # the query time of the tests that pass one
STEP = 60




def fixture_series() -> dict[str, list[tuple[str, float, int]]]:
    """r1 ran on node n1 (zone DE) from BASE to BASE+300 and succeeded; r2 runs from BASE+120 on."""
    series: dict[str, list[tuple[str, float, int]]] = {}

    def add(name: str, labels: str, value: float, t: int) -> None:
        series.setdefault(name, []).append((labels, value, t))

    for t in range(BASE, BASE + 601, STEP):
        k = min(t - BASE, 300) / 300  # r1's progress, 0..1, flat after its end
        r1 = 'run_id="r1"'
        add("run_id:carbonwatch_run_info:last", r1 + ',user="ada",model="mlp",project="vision",team="ml"', 1, t)
        if t - BASE <= 240:
            add(
                "carbonwatch_run_info", r1 + ',user="ada",model="mlp",project="vision",team="ml",status="running"', 1, t
            )
        elif t - BASE == 300:
            add(
                "carbonwatch_run_info",
                r1 + ',user="ada",model="mlp",project="vision",team="ml",status="succeeded"',
                1,
                t,
            )
        if t - BASE <= 300:
            add("carbonwatch_run_start_time_seconds", r1, BASE, t)
            add("carbonwatch_run_budget_grams", r1, 500, t)
            add("carbonwatch_run_epoch", r1, round(5 * k), t)
            add("carbonwatch_run_samples_total", r1, 10000 * k, t)
            for comp, joules in (("gpu", 5.4e6), ("cpu", 1.44e6), ("memory", 0.36e6)):
                node = f'{r1},instance="n1:9860",component="{comp}"'
                add("carbonwatch_run_energy_joules_total", node, joules * k, t)
                add("carbonwatch_run_emissions_grams_total", node, joules * k / 9000, t)
        if t - BASE == 300:
            add("carbonwatch_run_end_time_seconds", r1, BASE + 300, t)
        add("run_id:carbonwatch_energy_joules:total", r1, 7.2e6 * k, t)
        add("run_id:carbonwatch_emissions_grams:total", r1, 800 * k, t)
        for comp, joules in (("gpu", 5.4e6), ("cpu", 1.44e6), ("memory", 0.36e6)):
            add("run_id_component:carbonwatch_energy_joules:total", f'{r1},component="{comp}"', joules * k, t)
            add("run_id_component:carbonwatch_emissions_grams:total", f'{r1},component="{comp}"', joules * k / 9000, t)
        add("run_id:carbonwatch_cost:total", r1 + ',currency="EUR"', 0.6 * k, t)
        # Node series: n1 ran r1 (rapl CPU, NVML GPU counter, modelled memory); n2 (FR, modelled CPU) did not.
        add("carbonwatch_node_info", 'instance="n1:9860",zone="DE"', 1, t)
        add("instance:carbonwatch_electricity_price_per_kwh:current", 'instance="n1:9860",currency="EUR"', 0.3, t)
        add("carbonwatch_node_info", 'instance="n2:9860",zone="FR"', 1, t)
        add("carbonwatch_cpu_energy_joules_total", 'instance="n1:9860",package="0",source="rapl"', t - BASE, t)
        add("carbonwatch_gpu_energy_joules_total", 'instance="n1:9860",gpu="0",source="nvml_counter"', t - BASE, t)
        add("carbonwatch_memory_energy_joules_total", 'instance="n1:9860",source="model"', t - BASE, t)
        add("carbonwatch_cpu_energy_joules_total", 'instance="n2:9860",package="all",source="model"', t - BASE, t)
        if t - BASE >= 120:
            r2 = 'run_id="r2"'
            add("run_id:carbonwatch_run_info:last", r2 + ',user="bob",model="bert",project="nlp",team=""', 1, t)
            add("carbonwatch_run_info", r2 + ',user="bob",model="bert",project="nlp",status="running"', 1, t)
            add("carbonwatch_run_start_time_seconds", r2, BASE + 120, t)
            add("run_id:carbonwatch_energy_joules:total", r2, 1000.0 * (t - BASE - 120), t)
            add("run_id:carbonwatch_emissions_grams:total", r2, 0.1 * (t - BASE - 120), t)
            add("run_id:carbonwatch_emissions_grams:forecast", r2, 123, t)
            add("run_id:carbonwatch_power_watts:sum", r2, 250, t)
            add("carbonwatch_run_energy_joules_total", r2 + ',instance="n2:9860",component="cpu"', 10.0 * t, t)
        add_resumed_and_stale(add, t)
    return series


def add_resumed_and_stale(add: Callable[[str, str, float, int], None], t: int) -> None:
    """r3 ran from BASE+420 to BASE+540; its per-component recorded series lag (recorded every 4 minutes) while
    its counters are fresh. r4 ran twice under one id on n1: segment 1 from BASE+60 to BASE+180 (1000 J), then
    was resumed as segment 2 from BASE+360 to BASE+480 (500 J; the exporter's counter started again from 0)."""
    r3, r4 = 'run_id="r3"', 'run_id="r4"'
    if BASE + 420 <= t:
        k3 = min(t - BASE - 420, 120) / 120
        add("run_id:carbonwatch_energy_joules:total", r3, 150 * k3, t)
        for comp, joules in (("gpu", 100.0), ("cpu", 50.0)):
            add("carbonwatch_run_energy_joules_total", f'{r3},instance="n1:9860",component="{comp}"', joules * k3, t)
            add("run_id_component:carbonwatch_energy_joules:total", f'{r3},component="{comp}"', joules * 0.25, t)
    for seg, (s0, joules) in enumerate(((BASE + 60, 1000.0), (BASE + 360, 500.0)), 1):
        if not s0 <= t <= s0 + 180:
            continue
        k4 = min(t - s0, 120) / 120
        add("carbonwatch_run_energy_joules_total", f'{r4},instance="n1:9860",component="gpu"', joules * k4, t)
        if t <= s0 + 120:  # pushed by the client while the segment runs and until its group is deleted
            done = t == s0 + 120
            status = "succeeded" if done else "running"
            add("carbonwatch_run_info", f'{r4},user="eve",model="vit",project="p",status="{status}"', 1, t)
            add("carbonwatch_run_start_time_seconds", r4, BASE + 60, t)
            add("carbonwatch_run_segment", r4, seg, t)
            add("carbonwatch_run_segment_start_time_seconds", r4, s0, t)
            if done:
                add("carbonwatch_run_end_time_seconds", r4, s0 + 120, t)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prom = support.Prometheus.from_series(tmp_path_factory.mktemp("prom"), fixture_series())
    try:
        yield prom.url
    finally:
        prom.stop()


@pytest.mark.slow
def test_an_ended_run_reports_its_totals_sources_and_budget(prometheus_url: str) -> None:
    rep = collect(Prometheus(prometheus_url), "r1", at=AT)
    assert rep.status == "succeeded"
    assert (rep.user, rep.model, rep.project, rep.team) == ("ada", "mlp", "vision", "ml")
    assert rep.start_time_seconds == BASE and rep.end_time_seconds == BASE + 300
    assert rep.duration_seconds == 300
    assert rep.energy_joules == pytest.approx(7.2e6)
    assert rep.emissions_grams == pytest.approx(800)
    assert rep.mean_intensity_grams_per_kwh == pytest.approx(400)
    assert rep.components["gpu"].energy_joules == pytest.approx(5.4e6)
    assert rep.components["memory"].emissions_grams == pytest.approx(40)
    # Sources come from the node the run used (n1), not from n2 where it did not run.
    assert rep.components["cpu"].sources == ["rapl"]
    assert rep.components["gpu"].sources == ["nvml_counter"]
    assert rep.components["memory"].sources == ["model"]
    assert rep.zones == ["DE"]
    assert rep.cost == {"EUR": pytest.approx(0.6)}
    assert rep.budget_grams == 500
    assert rep.budget_used_ratio == pytest.approx(1.6)
    assert rep.forecast_grams == pytest.approx(800)  # ended: forecast is what it emitted
    assert rep.epochs == 5 and rep.samples == pytest.approx(10000)
    assert rep.joules_per_sample == pytest.approx(720)
    assert rep.grams_per_epoch == pytest.approx(160)
    car = next(f for f in FACTORS if f.name == "car_km")
    assert rep.equivalents["car_km"] == pytest.approx(800 / car.grams_per_unit)
    assert set(rep.equivalents) == {f.name for f in FACTORS}


@pytest.mark.slow
def test_a_running_run_reports_its_forecast_power_and_elapsed_time(prometheus_url: str) -> None:
    rep = collect(Prometheus(prometheus_url), "r2", at=AT)
    assert rep.status == "running"
    assert rep.end_time_seconds is None
    assert rep.duration_seconds == pytest.approx(AT - (BASE + 120))
    assert rep.forecast_grams == 123
    assert rep.power_watts == 250
    assert rep.emissions_grams == pytest.approx(0.1 * 480)
    assert rep.budget_grams is None and rep.budget_used_ratio is None
    assert rep.zones == ["FR"]
    table = render_table(rep)
    assert "running" in table and "still running" in table and "bob" in table


@pytest.mark.slow
def test_an_unknown_run_is_a_clear_error(prometheus_url: str) -> None:
    with pytest.raises(ConfigError, match=r"run 'nope' is unknown to Prometheus at http://127\.0\.0\.1"):
        collect(Prometheus(prometheus_url), "nope", at=AT)


def test_an_unreachable_prometheus_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(NetworkError, match=f"cannot reach Prometheus at {url}"):
        collect(Prometheus(url, timeout=2), "r1")


def test_bad_run_ids_and_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="not a run id"):
        collect(Prometheus("http://127.0.0.1:1"), 'x"}')
    with pytest.raises(ConfigError, match="not an http"):
        Prometheus("ftp://127.0.0.1:9090")


@pytest.mark.slow
def test_cli_prints_json_and_exits_2_on_an_unknown_run(prometheus_url: str) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "r1", "--prometheus", prometheus_url, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["run_id"] == "r1" and data["status"] == "succeeded"
    assert data["emissions_grams"] == pytest.approx(800)
    assert data["components"]["cpu"]["sources"] == ["rapl"]
    assert "citation" in data["equivalent_sources"]["car_km"]
    table = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "r1", "--prometheus", prometheus_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0
    assert "800 g CO2e" in table.stdout and "2.00 kWh" in table.stdout and "160.0 %" in table.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "missing-run", "--prometheus", prometheus_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "missing-run" in bad.stderr and "unknown" in bad.stderr


def test_formatting_picks_readable_units_with_three_significant_figures() -> None:
    assert fmt_energy(7.2e6) == "2.00 kWh"
    assert fmt_energy(7200) == "2.00 Wh"
    assert fmt_energy(12.34) == "12.3 J" and fmt_energy(0.01234) == "0.0123 J"
    assert fmt_energy(3.6e11) == "100,000 kWh"
    assert fmt_grams(1500) == "1.50 kg CO2e"
    assert fmt_grams(0.0123) == "12.3 mg CO2e" and fmt_grams(0.0004734) == "0.473 mg CO2e"
    assert fmt_grams(999.6) == "1.00 kg CO2e" and fmt_energy(3599.9) == "1.00 Wh"
    assert fmt_duration(3725) == "1h02m05s" and fmt_duration(65) == "1m05s" and fmt_duration(None) == "-"


@pytest.mark.slow
def test_component_lines_add_up_to_the_total_right_after_a_run(prometheus_url: str) -> None:
    rep = collect(Prometheus(prometheus_url), "r3", at=BASE + 540)
    assert rep.energy_joules == pytest.approx(150)
    assert {c: cr.energy_joules for c, cr in rep.components.items()} == {"gpu": 100, "cpu": 50}
    assert sum(cr.energy_joules or 0 for cr in rep.components.values()) == pytest.approx(rep.energy_joules)
    assert rep.cost == {"EUR": pytest.approx(150 / 3.6e6 * 0.3)}  # fresh too: no recorded cost yet


@pytest.mark.slow
def test_a_resumed_run_is_one_run_with_its_segments(prometheus_url: str) -> None:
    rep = collect(Prometheus(prometheus_url), "r4", at=AT)
    assert rep.status == "succeeded"
    assert [(s.number, s.start, s.end) for s in rep.segments] == [
        (1, BASE + 60, BASE + 180), (2, BASE + 360, BASE + 480)]
    assert (rep.start_time_seconds, rep.end_time_seconds) == (BASE + 60, BASE + 480)
    assert rep.energy_joules == pytest.approx(1500)  # both segments, though the counter started again from 0
    assert any("started again from 0" in note for note in rep.quality)
    table = render_table(rep)
    assert "segment 1" in table and "segment 2" in table and "2m00s" in table
    running = collect(Prometheus(prometheus_url), "r4", at=BASE + 420)
    assert running.status == "running" and running.end_time_seconds is None
    assert [(s.number, s.end) for s in running.segments] == [(1, BASE + 180), (2, None)]


@pytest.mark.slow
def test_an_eight_epoch_run_numbered_from_0_reports_8_epochs_and_grams_per_epoch_over_8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: the run client pushes, a real Prometheus scrapes the Pushgateway, the report reads it."""
    from carbonwatch.client.api import Run
    from tests.client.test_client_pushgateway import BINARY, Gateway

    if BINARY is None:
        pytest.skip("prometheus-pushgateway is not installed")
    monkeypatch.setenv("CARBONWATCH_SPOOL_DIR", str(tmp_path / "spool"))
    gw = Gateway(tmp_path)
    gw.start()
    now = int(time.time())
    (tmp_path / "s.om").write_text(  # the run's recorded emissions, as the rules would have them
        "# TYPE run_id:carbonwatch_emissions_grams:total gauge\n"
        + "".join(f'run_id:carbonwatch_emissions_grams:total{{run_id="r8"}} 80 {t}\n' for t in (now - 60, now - 30))
        + "# EOF\n"
    )
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "s.om"),
                    str(tmp_path / "data")], check=True, capture_output=True, timeout=120)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw.port}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with Run(run_id="r8", user="ada", pushgateway=gw.url, runs_file=tmp_path / "runs.jsonl", summary=False,
                 local_meter=False, push_interval=0.05, retention=600.0, total_epochs=8) as run:
            for epoch in range(8):  # as the README and examples/train_mlp.py count
                run.epoch(epoch)
                run.progress(samples=100)
        deadline = time.monotonic() + 60
        while True:
            try:
                if Prometheus(url).scalar('carbonwatch_run_epoch{run_id="r8"}') == 8:
                    break
            except (ConfigError, NetworkError):
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the run's final state"
            time.sleep(0.3)
        rep = collect(Prometheus(url), "r8")
        assert rep.status == "succeeded"
        assert rep.epochs == 8 and rep.samples == 800
        assert rep.grams_per_epoch == pytest.approx(10.0)
        assert "CO2e per epoch" in render_table(rep) and "10.0 g CO2e" in render_table(rep)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        gw.kill()


# -- the ledger -------------------------------------------------------------------------------------------------

LEDGER_RUN_ID = "sweep/lr=3e-4&bs=64#2"
LEDGER_RUN = {  # the shape of the ledger's GET /api/v1/runs/{run_id} (docs/ledger.md)
    "run_id": LEDGER_RUN_ID, "user": "ada", "project": "vision", "model": "vit", "team": "ml",
    "status": "succeeded", "start": 1_700_000_000.0, "end": 1_700_000_014.0,
    "energy_joules": 412.0, "emissions_grams": 0.0473, "cost": 0.0000343, "currency": "EUR",
    "budget_grams": 0.05, "samples": 1000, "epochs": 2, "estimated": 0.25,
    "labels": {"user": "ada", "project": "vision", "model": "vit", "team": "ml"},
    "nodes": [
        {"instance": "n1:9860", "component": "gpu", "zone": "DE", "energy_joules": 300.0, "emissions_grams": 0.0344,
         "estimated_joules": 103.0, "first_sample": 1_700_000_000.0, "last_sample": 1_700_000_014.0},
        {"instance": "n1:9860", "component": "cpu", "zone": "DE", "energy_joules": 112.0, "emissions_grams": 0.0129,
         "estimated_joules": 0.0, "first_sample": 1_700_000_000.0, "last_sample": 1_700_000_014.0},
    ],
    "components": [
        {"component": "cpu", "energy_joules": 112.0, "emissions_grams": 0.0129, "estimated_joules": 0.0},
        {"component": "gpu", "energy_joules": 300.0, "emissions_grams": 0.0344, "estimated_joules": 103.0},
    ],
    "segments": [{"instance": "n1:9860", "start": 1_700_000_000.0, "end": 1_700_000_006.0},
                 {"instance": "n2:9860", "start": 1_700_000_008.0, "end": 1_700_000_014.0}],
    "quality": {"estimated_joules": 103.0, "estimated_hours": [1_699_999_200], "counter_resets": [],
                "notes": ["103 J spread linearly over scrape gaps in 1 hour(s)"]},
}


@pytest.fixture
def ledger_url() -> Iterator[str]:
    """A small HTTP server answering the ledger's run endpoint for one run (404 JSON for any other)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import quote

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            known = self.path == f"/api/v1/runs/{quote(LEDGER_RUN_ID, safe='')}"
            body = json.dumps(LEDGER_RUN if known else {"error": "unknown run"}).encode()
            self.send_response(200 if known else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cw(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`carbonwatch ARGS...` run in this process (what the console script runs), with `env` added to a
    environment without CARBONWATCH_PROMETHEUS and CARBONWATCH_LEDGER: (exit status, stdout, stderr)."""

    def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as m:
            for name in ("CARBONWATCH_PROMETHEUS", "CARBONWATCH_LEDGER"):
                m.delenv(name, raising=False)
            for name, value in (env or {}).items():
                m.setenv(name, value)
            return run_cli(capsys, argv)

    return run


def test_report_reads_the_ledger_with_its_quality_notes(ledger_url: str, cw: Cli) -> None:
    r = cw("report", LEDGER_RUN_ID, "--ledger", ledger_url, "--prometheus", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "succeeded" in out and "ada / vision / vit" in out and "DE" in out
    assert "412 J" in out and "47.3 mg CO2e" in out and "94.6 %" in out  # budget 0.05 g
    assert "300 J, 34.4 mg CO2e" in out and "112 J, 12.9 mg CO2e" in out
    assert "14s" in out and re.search(r"segment 1 .*\(6s\) on n1:9860", out) and "segment 2" in out
    assert "25 % of the energy is estimated" in out and "103 J spread linearly over scrape gaps" in out
    assert f"read from the ledger at {ledger_url}" in out
    data = json.loads(cw("report", LEDGER_RUN_ID, "--ledger", ledger_url, "--format", "json").stdout)
    assert data["source"] == "ledger" and data["energy_joules"] == 412.0 and data["duration_seconds"] == 14.0


def test_the_ledger_named_by_the_stack_settings_is_used_and_unknown_runs_exit_2(ledger_url: str, tmp_path: Path,
                                                                                cw: Cli) -> None:
    stack = tmp_path / "stack.env"
    stack.write_text(f"CARBONWATCH_LEDGER={ledger_url}\n")
    ok = cw("report", LEDGER_RUN_ID, env={"CARBONWATCH_STACK": str(stack)})
    assert ok.returncode == 0 and "from the ledger" in ok.stdout, ok.stderr
    missing = cw("report", "no-such-run", env={"CARBONWATCH_LEDGER": ledger_url})
    assert missing.returncode == 2 and "'no-such-run' is unknown to the ledger" in missing.stderr
    job = cw("job", "999", "-M", "hpc1", "--ledger", ledger_url)
    assert job.returncode == 2 and "job 999 on cluster hpc1 is unknown to the ledger" in job.stderr
    down = cw("report", "r1", "--ledger", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 4 and "cannot reach the ledger" in down.stderr


def test_job_reads_the_ledger(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from carbonwatch.stack import job

    monkeypatch.setitem(LEDGER_RUN, "run_id", "slurm-hpc1-4242")
    rows = job.collect_jobs_from_ledger(ledger_url, ["4242"], "hpc1")
    assert rows == []  # the server knows only LEDGER_RUN_ID's path
    monkeypatch.setattr(sys.modules[__name__], "LEDGER_RUN_ID", "slurm-hpc1-4242")
    rows = job.collect_jobs_from_ledger(ledger_url, ["4242"], "hpc1")
    assert job.render(rows, ("JobID", "Cluster", "User", "Elapsed", "Energy", "CO2e", "Cost"), parsable=True,
                      header=False) == "4242|hpc1|ada|00:00:14|412 J|47.3 mg|0.0000343 EUR"


def test_prometheus_comes_from_the_flag_the_environment_or_the_stack_settings(tmp_path: Path, cw: Cli) -> None:
    flag, env, stack_url = (f"http://127.0.0.1:{p}" for p in support.free_ports(3))
    stack = tmp_path / "stack.env"
    stack.write_text(f"CARBONWATCH_PROMETHEUS={stack_url}\n")
    for extra, environ, used in (
        (["--prometheus", flag], {"CARBONWATCH_PROMETHEUS": env, "CARBONWATCH_STACK": str(stack)}, flag),
        ([], {"CARBONWATCH_PROMETHEUS": env, "CARBONWATCH_STACK": str(stack)}, env),
        ([], {"CARBONWATCH_STACK": str(stack)}, stack_url),
    ):
        r = cw("report", "r1", "--timeout", "2", *extra, env=environ)
        assert r.returncode == 4 and f"cannot reach Prometheus at {used}" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_long_run_read_from_summaries_gives_the_same_totals(prometheus_url: str) -> None:
    from carbonwatch.stack import runseries

    prom, sel = Prometheus(prometheus_url), 'run_id="r1"'
    raw = runseries.run_counters(prom, runseries.ENERGY, sel, "30d", AT)["r1"]
    summarised = runseries.run_counters(prom, runseries.ENERGY, sel, "30d", AT, raw_limit=0)["r1"]
    assert summarised.by_component == pytest.approx(raw.by_component, rel=1e-12)
    assert raw.first_t == BASE and raw.grew_t == BASE + 300
    assert summarised.first_t is not None and summarised.grew_t is not None
    assert abs(summarised.first_t - raw.first_t) <= 60 and abs(summarised.grew_t - raw.grew_t) <= 120
    # r4's counter went down (a resumed run): read sample by sample whatever the limit
    resumed = runseries.run_counters(prom, runseries.ENERGY, 'run_id="r4"', "30d", AT, raw_limit=0)["r4"]
    assert resumed.total == pytest.approx(1500) and resumed.resets == 1
    sel4 = 'run_id="r4"'
    for at in (AT, BASE + 420):  # ended; its second segment running
        assert runseries.segments(prom, sel4, "30d", at, raw_limit=0) == runseries.segments(prom, sel4, "30d", at)
        assert runseries.latest_status(prom, sel4, "30d", at, raw_limit=0) == runseries.latest_status(
            prom, sel4, "30d", at)
    assert runseries.latest_status(prom, sel4, "30d", BASE + 420, raw_limit=0) == "running"

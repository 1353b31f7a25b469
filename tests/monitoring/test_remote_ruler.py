"""The remote-ruler path with real binaries: VictoriaMetrics (Debian's `victoria-metrics`) scrapes a real
`carbonwatch exporter` measuring a real run and a real Pushgateway, vmalert evaluates the committed rule
files (prometheus/rules/*.yml, alerting/alerts.yml, alerting/budgets.rules.yml) unchanged and writes the
recorded series back, and notifies a real Alertmanager with our routing, whose webhook this test receives.

Once the run has stopped and the engine's query latency (VictoriaMetrics' -search.latencyOffset, 30 s by
default) and one evaluation have passed, the contract series equal the exporter's own counters within
0.5 %: the rules read the counters directly, with nothing to accumulate or to chain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.exporter_proc import Exporter, start_exporter
from tests.monitoring.test_alerting import Serve, free_port, start, start_alertmanager, wait_ready

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("victoria-metrics", "vmalert", "prometheus-alertmanager", "prometheus-pushgateway")
RUN_ID = "vm-e2e"
LATENCY_S = 30.0  # VictoriaMetrics' default -search.latencyOffset
EVALUATION_S = 30.0  # the slower contract series' group interval (energy: carbonwatch-runs)
BURN = "import time\nt = time.time()\nwhile time.time() - t < 600: pass\n"  # stopped by the test

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(b) is None for b in BINARIES),
                       reason=f"needs {', '.join(BINARIES)} (scripts/setup.sh test)"),
]


def http(url: str, data: bytes | None = None, method: str = "GET") -> bytes:
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def vm_query(base: str, expr: str) -> list[dict[str, Any]]:
    body = json.loads(http(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}"))
    return list(body["data"]["result"])


def run_counters(exporter: Exporter) -> dict[str, float]:
    """The exporter's own run counters for RUN_ID, summed over components: {"energy": J, "grams": g}."""
    out = {"energy": 0.0, "grams": 0.0}
    for fam in text_string_to_metric_families(exporter.scrape()):
        for s in fam.samples:
            if s.labels.get("run_id") != RUN_ID:
                continue
            if s.name == "carbonwatch_run_energy_joules_total":
                out["energy"] += s.value
            elif s.name == "carbonwatch_run_emissions_grams_total":
                out["grams"] += s.value
    return out


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    procs: list[subprocess.Popen[Any]] = []
    webhook = Serve()
    exporter: Exporter | None = None
    try:
        # Alertmanager: our routing, every receiver pointed at the test's webhook, short group waits.
        am_proc, am_port = start_alertmanager(tmp_path, webhook.port)
        procs.append(am_proc)

        # The run client's side: labels and a tiny budget in a real Pushgateway.
        gw_port = free_port()
        procs.append(start(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{gw_port}"],
                           tmp_path / "pushgateway.log"))
        wait_ready(f"http://127.0.0.1:{gw_port}/-/ready", procs[-1], tmp_path / "pushgateway.log")
        http(f"http://127.0.0.1:{gw_port}/metrics/job/carbonwatch_run/run_id/{RUN_ID}", method="PUT", data=(
            b"# TYPE carbonwatch_run_info gauge\n"
            b'carbonwatch_run_info{user="alice",model="gpt-small",project="llm-pretrain",team="research",'
            b'host="n1",status="running"} 1\n'
            b"# TYPE carbonwatch_run_budget_grams gauge\ncarbonwatch_run_budget_grams 0.05\n"))

        # The run: a CPU burner with the run id, on a fake 3 kW GPU, measured by the real exporter.
        burner = subprocess.Popen([sys.executable, "-c", BURN], env=dict(os.environ, CARBONWATCH_RUN_ID=RUN_ID))
        procs.append(burner)
        gpu_procs = tmp_path / "gpu_procs.json"
        gpu_procs.write_text(json.dumps([{"gpu": 0, "pid": burner.pid, "sm_util": 90, "used_memory": 2 << 30}]))
        exporter = start_exporter(
            tmp_path,
            {"zone": "DE", "sample_interval": "250ms",
             "cpu": {"source": "model", "tdp_watts": 100},
             "process": {"spool_dir": str(tmp_path / "spool")}},
            env={"CARBONWATCH_FAKE_NVML": json.dumps({"gpus": 1, "watts": [3000],
                                                      "processes_file": str(gpu_procs)})},
            nvml="tests.fakes.fake_nvml",
        )

        # VictoriaMetrics scrapes both; vmalert evaluates the committed rule files against it.
        target = urllib.parse.urlsplit(exporter.url).netloc
        (tmp_path / "scrape.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "5s"},
            "scrape_configs": [
                {"job_name": "carbonwatch", "static_configs": [{"targets": [target]}]},
                {"job_name": "pushgateway", "honor_labels": True,
                 "static_configs": [{"targets": [f"127.0.0.1:{gw_port}"]}]},
            ],
        }))
        vm_port = free_port()
        vm = f"http://127.0.0.1:{vm_port}"
        procs.append(start(["victoria-metrics", f"-storageDataPath={tmp_path / 'vm'}",
                            f"-httpListenAddr=127.0.0.1:{vm_port}", f"-promscrape.config={tmp_path / 'scrape.yml'}",
                            "-retentionPeriod=1d"], tmp_path / "victoria-metrics.log"))
        wait_ready(f"{vm}/health", procs[-1], tmp_path / "victoria-metrics.log")
        rule_args = [f"-rule={ROOT / 'prometheus' / 'rules' / '*.yml'}", f"-rule={ROOT / 'alerting' / 'alerts.yml'}",
                     f"-rule={ROOT / 'alerting' / 'budgets.rules.yml'}"]
        vmalert_port = free_port()
        procs.append(start(["vmalert", *rule_args, f"-datasource.url={vm}", f"-remoteWrite.url={vm}",
                            f"-remoteRead.url={vm}", f"-notifier.url=http://127.0.0.1:{am_port}",
                            f"-httpListenAddr=127.0.0.1:{vmalert_port}", "-rule.resendDelay=1s"],
                           tmp_path / "vmalert.log"))
        wait_ready(f"http://127.0.0.1:{vmalert_port}/health", procs[-1], tmp_path / "vmalert.log")
        yield {"vm": vm, "exporter": exporter, "burner": burner, "webhook": webhook,
               "logs": [tmp_path / n for n in ("vmalert.log", "victoria-metrics.log", "alertmanager.log")]}
    finally:
        for p in reversed(procs):
            stop(p)
        if exporter is not None:
            exporter.stop()
        webhook.close()


def test_vmalert_on_victoriametrics_runs_the_rules_unchanged_and_totals_equal_the_counters(
    stack: dict[str, Any],
) -> None:
    webhook: Serve = stack["webhook"]

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in stack["logs"])

    # The run passes its 0.05 g budget within seconds; vmalert raises the alert from the 15 s groups (totals,
    # then carbonwatch-budget-alerts with `for: 15s`), each read after VictoriaMetrics' query latency.
    deadline = time.time() + 480
    found: list[tuple[str, dict[str, Any]]] = []
    while time.time() < deadline and not found:
        time.sleep(2)
        found = [(path, a) for path, payload in list(webhook.posts) for a in payload["alerts"]
                 if a["labels"].get("alertname") == "CarbonwatchRunBudgetExceeded" and a["status"] == "firing"]
    assert found, f"no budget notification from vmalert; webhook got {webhook.posts!r}\n{logs()}"
    assert {p for p, _ in found} == {"/carbonwatch/critical", "/carbonwatch/team/research",
                                     "/carbonwatch/project/llm-pretrain"}
    labels = found[0][1]["labels"]
    assert {k: labels[k] for k in ("run_id", "user", "project", "team", "severity")} == {
        "run_id": RUN_ID, "user": "alice", "project": "llm-pretrain", "team": "research", "severity": "critical"}

    # Stop the run: its counters stop growing (the exporter keeps them for its linger). After the query
    # latency, a scrape, an evaluation and the write-back, the contract series equal them.
    stack["burner"].kill()
    stack["burner"].wait()
    exporter = run_counters(stack["exporter"])
    for _ in range(30):  # until the exporter has sampled past the exit (later on a loaded machine)
        time.sleep(2)
        again = run_counters(stack["exporter"])
        if again == exporter:
            break
        exporter = again
    time.sleep(LATENCY_S + 5 + 2 * EVALUATION_S + 10 + LATENCY_S)
    assert run_counters(stack["exporter"]) == pytest.approx(exporter, rel=1e-6), "the run's counters still grew"
    vm = stack["vm"]
    energy = vm_query(vm, f'run_id:carbonwatch_energy_joules:total{{run_id="{RUN_ID}"}}')
    grams = vm_query(vm, f'run_id:carbonwatch_emissions_grams:total{{run_id="{RUN_ID}"}}')
    assert energy and grams, logs()
    assert exporter["energy"] > 100_000  # minutes on a 3 kW GPU
    assert float(energy[0]["value"][1]) == pytest.approx(exporter["energy"], rel=0.005)
    assert float(grams[0]["value"][1]) == pytest.approx(exporter["grams"], rel=0.005)
    # The run info join, written back by vmalert: the client's labels over the exporter's.
    info = vm_query(vm, f'run_id:carbonwatch_run_info:last{{run_id="{RUN_ID}"}}')
    assert [(i["metric"]["origin"], i["metric"]["user"], i["metric"]["project"]) for i in info] == [
        ("client", "alice", "llm-pretrain")]

"""The real exporter process: real child processes with CARBONWATCH_RUN_ID, a fake NVML module loaded by
dotted path, the CPU model (no RAPL on this machine), scraped over HTTP and checked by promtool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.exporter_proc import start_exporter

pytestmark = pytest.mark.slow  # real exporter processes

BUSY = """
import os, sys, time, subprocess
if len(sys.argv) > 1:
    child = subprocess.Popen([sys.executable, "-c", "import time\\nt=time.time()\\nwhile time.time()-t<60: pass"])
t = time.time()
while time.time() - t < 60:
    pass
"""


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


def one(series, **labels):
    hits = [v for lab, v in series if all(lab.get(k) == v2 for k, v2 in labels.items())]
    assert len(hits) == 1, (labels, series)
    return hits[0]


@pytest.fixture
def busy_run(tmp_path):
    env = dict(os.environ, CARBONWATCH_RUN_ID="e2e-run-1")
    p = subprocess.Popen([sys.executable, "-c", BUSY, "spawn-child"], env=env)
    yield p
    for c in _children(p.pid):
        try:
            os.kill(c, 9)
        except ProcessLookupError:
            pass
    p.kill()
    p.wait()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_exporter_attributes_real_processes_and_fake_gpus(tmp_path, busy_run):
    procs_file = tmp_path / "gpu_procs.json"
    procs_file.write_text(json.dumps([{"gpu": 0, "pid": busy_run.pid, "sm_util": 90, "used_memory": 2 << 30}]))
    fake = {"gpus": 2, "watts": [200, 200], "processes_file": str(procs_file)}
    exp = start_exporter(
        tmp_path,
        {"zone": "DE", "sample_interval": "250ms",
         "cpu": {"source": "model", "tdp_watts": 100}, "process": {"top_n": 5, "spool_dir": str(tmp_path / "spool")},
         "collectors": {"intensity": False}},
        env={"CARBONWATCH_FAKE_NVML": json.dumps(fake)}, nvml="tests.fakes.fake_nvml",
    )
    try:
        time.sleep(2.5)
        text = exp.scrape()
        m = samples(text)
        node = m["carbonwatch_node_info"][0][0]
        assert node["zone"] == "DE" and node["cpu_source"] == "model" and node["memory_source"] == "model"
        assert {lab["gpu"] for lab, _ in m["carbonwatch_gpu_info"]} == {"0", "1"}
        assert one(m["carbonwatch_gpu_power_watts"], gpu="0") == pytest.approx(200, rel=0.05)
        assert one(m["carbonwatch_gpu_energy_joules_total"], gpu="0", source="nvml_counter") > 200
        # the run: the parent (own env) and its busy child (inherited env) on the CPU, the GPU by SM share
        run_cpu = one(m["carbonwatch_run_energy_joules_total"], run_id="e2e-run-1", component="cpu")
        run_gpu = one(m["carbonwatch_run_energy_joules_total"], run_id="e2e-run-1", component="gpu")
        assert run_cpu > 0 and run_gpu > 200
        run_procs = [lab for lab, _ in m["carbonwatch_process_power_watts"] if lab["run_id"] == "e2e-run-1"]
        assert len({lab["pid"] for lab in run_procs}) >= 2
        # GPU 1 has no process: all of its energy is unattributed
        # (energy, not power: the counter ticks every 100 ms, so one 250 ms sample sees 2 or 3 ticks)
        assert one(m["carbonwatch_unattributed_energy_joules_total"], component="gpu") == pytest.approx(
            one(m["carbonwatch_gpu_energy_joules_total"], gpu="1"), rel=1e-9)
        assert run_gpu == pytest.approx(one(m["carbonwatch_gpu_energy_joules_total"], gpu="0"), rel=1e-9)
        # within one snapshot the parts add up to the device, per component
        for comp, dev_metric in (("cpu", "carbonwatch_cpu_power_watts"), ("memory", "carbonwatch_memory_power_watts"),
                                 ("gpu", "carbonwatch_gpu_power_watts")):
            procs = sum(v for lab, v in m["carbonwatch_process_power_watts"] if lab["component"] == comp)
            unatt = one(m["carbonwatch_unattributed_power_watts"], component=comp)
            if comp == "gpu":
                continue  # gpu gauge is NVML's averaged power, the split uses counter deltas
            dev = sum(v for _, v in m[dev_metric])
            assert procs + unatt == pytest.approx(dev, rel=1e-6)
        assert one(m["carbonwatch_collector_success"], collector="gpu") == 1
        assert one(m["carbonwatch_collector_success"], collector="process") == 1
        # counters grow between scrapes
        time.sleep(0.6)
        m2 = samples(exp.scrape())
        assert one(m2["carbonwatch_run_energy_joules_total"], run_id="e2e-run-1", component="cpu") > run_cpu
        if shutil.which("promtool"):
            r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr
    finally:
        assert exp.stop() == 0, exp.log()


def test_a_node_without_nvidia_driver_has_no_gpu_to_measure_which_is_not_a_failure(tmp_path):
    # the real pynvml on a machine without the NVIDIA driver: nvmlInit fails (library not found)
    exp = start_exporter(
        tmp_path,
        {"sample_interval": "200ms", "cpu": {"source": "model"}, "collectors": {"intensity": False}},
    )
    try:
        time.sleep(1.0)
        m = samples(exp.scrape())
        assert one(m["carbonwatch_collector_success"], collector="gpu") == 1
        assert one(m["carbonwatch_collector_devices"], collector="gpu") == 0
        info = [lab for lab, _ in m["carbonwatch_collector_info"] if lab["collector"] == "gpu"]
        assert info[0]["status"] == "absent" and "NVML" in info[0]["reason"]
        assert one(m["carbonwatch_collector_success"], collector="cpu") == 1
        assert "carbonwatch_gpu_info" not in m
        assert m["carbonwatch_cpu_energy_joules_total"]
    finally:
        assert exp.stop() == 0


def test_exporter_reads_a_two_socket_rapl_tree_without_double_counting(tmp_path):
    from tests.fakes.powercap import FakePowercap

    pc = FakePowercap(tmp_path / "sys", sockets=2, psys=True, mmio=True)
    zones = [z for zones in pc.package_zones.values() for z in zones]
    pc.near_wrap(zones[0], 30_000_000)  # socket 0 wraps during the test
    exp = start_exporter(
        tmp_path,
        {"sample_interval": "100ms", "cpu": {"powercap_root": str(pc.root)}, "collectors": {"gpu": False,
                                                                                           "intensity": False}},
    )
    try:
        time.sleep(0.5)  # the exporter has its baseline
        for _ in range(4):
            pc.advance(1.0, package_watts={0: 40.0, 1: 10.0}, dram_watts=3.0)  # 50 J + 6 J per step
            time.sleep(0.25)
        deadline = time.monotonic() + 10  # a sample after the last step, however loaded the machine
        while True:
            m = samples(exp.scrape())
            cpu = {lab["package"]: v for lab, v in m["carbonwatch_cpu_energy_joules_total"]}
            if sum(cpu.values()) >= 200.0 - 1e-6 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert {lab["source"] for lab, _ in m["carbonwatch_cpu_energy_joules_total"]} == {"rapl"}
        assert cpu == {"0": pytest.approx(160.0, abs=1e-6), "1": pytest.approx(40.0, abs=1e-6)}
        assert one(m["carbonwatch_memory_energy_joules_total"], source="rapl") == pytest.approx(24.0, abs=1e-6)
        assert m["carbonwatch_node_info"][0][0]["cpu_source"] == "rapl"
        assert one(m["carbonwatch_collector_success"], collector="rapl") == 1
    finally:
        exp.stop()


def test_exporter_publishes_its_zone_intensity_from_the_bundled_table(tmp_path):
    exp = start_exporter(tmp_path, {"zone": "FR", "sample_interval": "200ms", "collectors": {"gpu": False}})
    try:
        time.sleep(0.5)
        m = samples(exp.scrape())
        (labels, value), = m["carbonwatch_grid_carbon_intensity_grams_per_kwh"]
        assert labels["zone"] == "FR" and labels["source"].startswith("table")
        assert 10 < value < 200  # France's grid: mostly nuclear
    finally:
        exp.stop()


def test_bad_intensity_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("intensity: {zones: DE}\n")
    r = subprocess.run([sys.executable, "-m", "carbonwatch", "exporter", "--config.file", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "intensity.zones" in r.stderr

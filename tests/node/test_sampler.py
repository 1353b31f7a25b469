"""The sampler end to end on injected sources: fake /proc (real scanner), fake GPUs and RAPL."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.model import EnergyReading, GpuProcessUse, GpuReading, SourceError
from carbonwatch.node.registration import Registration
from carbonwatch.node.sampler import Sampler, Sources
from carbonwatch.node.sources.procs import ProcScanner
from tests.fakeproc import FakeProc


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeGpus:
    """Minimal GPU source: readings set by the test."""

    readings: list[GpuReading] = field(default_factory=list)
    fail: bool = False
    last_errors: list[str] = field(default_factory=list)

    def read(self) -> list[GpuReading]:
        if self.fail:
            raise SourceError("NVML: driver not loaded")
        return list(self.readings)


class FakeRapl:
    def __init__(self, packages: int = 2) -> None:
        self.pkg = [0.0] * packages
        self.dram = 0.0
        self.fail = False

    def read(self) -> SimpleNamespace:
        if self.fail:
            raise SourceError("permission denied reading energy_uj")
        return SimpleNamespace(
            packages=[EnergyReading(str(i), "rapl", energy_joules=e) for i, e in enumerate(self.pkg)],
            dram=EnergyReading("", "rapl", energy_joules=self.dram),
        )


class FlatModel:
    cpu_model = "Fake CPU"

    def __init__(self, watts: float = 50.0) -> None:
        self.watts = watts

    def power_watts(self, utilization: float = 0.0) -> float:
        return self.watts * (0.5 + utilization)


def make(tmp_path, top_n=20, linger=300.0, rapl=None, gpus=None, regs=(), intensity=None, resolver=None,
         scan_interval=10.0):
    """A sampler on a fake /proc (4 CPUs), with the test's clock as both its monotonic and boot clock."""
    proc = FakeProc(tmp_path / "proc", ncpu=4)
    cfg = ExporterConfig()
    cfg.process.top_n = top_n
    cfg.process.run_linger = linger
    cfg.process.scan_interval = scan_interval
    clock = Clock()
    src = Sources(procs=ProcScanner(str(tmp_path / "proc")), nvml=gpus, rapl=rapl, rapl_expected=rapl is not None,
                  cpu_model=FlatModel(), memory_model=FlatModel(4.0))
    s = Sampler(cfg, src, clock=clock, wall=lambda: 1.7e9 + clock.t, static_registrations=regs, boot_clock=clock,
                intensity=intensity, resolver=resolver)
    return proc, clock, s


def gpu(index, energy_j, power, procs=(), counter=True):
    return GpuReading(index, f"GPU-{index}", "Fake H100", power, energy_j if counter else None, 0.5, tuple(procs))


def check_sums(snap):
    """Within one sample: sum(process power) + unattributed == device power, per component."""
    for comp in ("gpu", "cpu", "memory"):
        dev = sum(d.power_watts for d in snap.devices if d.component == comp)
        if not any(d.component == comp for d in snap.devices):
            continue
        procs = sum(p.power_watts.get(comp, 0.0) for p in snap.processes)
        assert procs + snap.unattributed_power_watts[comp] == pytest.approx(dev, rel=1e-9, abs=1e-9), comp


def test_rapl_cpu_energy_splits_by_cpu_time_and_sums_exactly(tmp_path):
    rapl = FakeRapl(packages=2)
    proc, clock, s = make(tmp_path, rapl=rapl)
    proc.spawn(100, comm="train", run_id="r1")
    proc.spawn(101, ppid=100, comm="worker")  # a DataLoader worker: inherits the run from its parent
    proc.spawn(200, comm="other")
    assert s.sample_once() is None  # baseline
    proc.run(1.0, {100: 2.0, 101: 1.0, 200: 0.5})
    rapl.pkg = [60.0, 40.0]  # 100 J over 1 s on two sockets
    rapl.dram = 8.0
    clock.t += 1.0
    snap = s.sample_once()
    check_sums(snap)
    by_pid = {p.pid: p for p in snap.processes}
    # 4 CPUs for 1 s: train used 2 of 4 CPU-seconds -> half of 100 J
    assert by_pid[100].power_watts["cpu"] == pytest.approx(50.0)
    assert by_pid[101].power_watts["cpu"] == pytest.approx(25.0)
    assert by_pid[101].run_id == "r1"
    assert by_pid[200].power_watts["cpu"] == pytest.approx(12.5)
    assert snap.unattributed_power_watts["cpu"] == pytest.approx(12.5)
    run = {r.run_id: r for r in snap.runs}["r1"]
    assert run.energy_joules["cpu"] == pytest.approx(75.0)
    assert run.sources == {"cpu": "rapl", "memory": "rapl"}
    cpu_devs = {d.key: d for d in snap.devices if d.component == "cpu"}
    assert cpu_devs["0"].energy_joules == 60.0 and cpu_devs["1"].power_watts == 40.0
    # memory: RSS share of installed memory (16 GiB); each process has 100 MiB
    assert by_pid[100].power_watts["memory"] == pytest.approx(8.0 * (100 / (16 * 1024)))


def test_gpu_energy_goes_to_processes_by_sm_share_and_survives_counter_reset(tmp_path):
    gpus = FakeGpus()
    proc, clock, s = make(tmp_path, gpus=gpus)
    proc.spawn(100, comm="rank0", run_id="r1")
    proc.spawn(300, comm="rank1", run_id="r2")
    gpus.readings = [gpu(0, 1000.0, 300.0), gpu(1, 5000.0, 80.0)]
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {})
    gpus.readings = [
        gpu(0, 1300.0, 300.0, [GpuProcessUse(100, sm_util=75), GpuProcessUse(300, sm_util=25)]),
        gpu(1, 5080.0, 80.0),  # idle GPU, no process: unattributed
    ]
    snap = s.sample_once()
    check_sums(snap)
    runs = {r.run_id: r for r in snap.runs}
    assert runs["r1"].energy_joules["gpu"] == pytest.approx(225.0)
    assert runs["r2"].energy_joules["gpu"] == pytest.approx(75.0)
    assert snap.unattributed_power_watts["gpu"] == pytest.approx(80.0)
    # driver reload: the hardware counter restarts from 0
    clock.t += 1.0
    gpus.readings = [gpu(0, 250.0, 250.0, [GpuProcessUse(100, sm_util=50)]), gpu(1, 5160.0, 80.0)]
    snap = s.sample_once()
    runs = {r.run_id: r for r in snap.runs}
    assert runs["r1"].energy_joules["gpu"] == pytest.approx(475.0)  # monotonic, never negative
    gpu0 = [d for d in snap.devices if d.component == "gpu" and d.key == "0"][0]
    assert gpu0.energy_joules == pytest.approx(550.0) and gpu0.source == "nvml_counter"


def test_gpu_without_counter_integrates_power_and_says_so(tmp_path):
    gpus = FakeGpus([gpu(0, 0, 100.0, counter=False)])
    proc, clock, s = make(tmp_path, gpus=gpus)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    clock.t += 2.0
    gpus.readings = [gpu(0, 0, 200.0, [GpuProcessUse(100, sm_util=10)], counter=False)]
    snap = s.sample_once()
    dev = [d for d in snap.devices if d.component == "gpu"][0]
    assert dev.source == "nvml_power"
    assert dev.energy_joules == pytest.approx(300.0)  # trapezoid (100 + 200) / 2 * 2 s
    run = snap.runs[0]
    assert run.energy_joules["gpu"] == pytest.approx(300.0) and run.sources["gpu"] == "nvml_power"


def test_gpu_process_outside_our_pid_namespace_is_still_counted(tmp_path):
    gpus = FakeGpus([gpu(0, 0.0, 100.0)])
    proc, clock, s = make(tmp_path, gpus=gpus)
    s.sample_once()
    clock.t += 1.0
    gpus.readings = [gpu(0, 100.0, 100.0, [GpuProcessUse(999, sm_util=40)])]
    snap = s.sample_once()
    check_sums(snap)
    unknown = [p for p in snap.processes if p.pid == 999][0]
    assert unknown.comm == "unknown" and unknown.power_watts["gpu"] == pytest.approx(100.0)


def test_a_gpu_process_that_exited_since_the_last_sample_still_charges_its_run(tmp_path):
    """NVML still names the process for the interval in which it exited; /proc no longer has it."""
    gpus = FakeGpus([gpu(0, 0.0, 300.0, [GpuProcessUse(100, sm_util=90)])])
    proc, clock, s = make(tmp_path, gpus=gpus)
    proc.spawn(100, comm="train", run_id="r1")
    s.sample_once()
    clock.t += 1.0
    gpus.readings = [gpu(0, 300.0, 300.0, [GpuProcessUse(100, sm_util=90)])]
    s.sample_once()
    proc.kill(100)
    clock.t += 1.0
    gpus.readings = [gpu(0, 600.0, 300.0, [GpuProcessUse(100, sm_util=90)])]
    snap = s.sample_once()
    check_sums(snap)
    assert {r.run_id: r.energy_joules["gpu"] for r in snap.runs} == {"r1": pytest.approx(600.0)}
    assert not [p for p in snap.processes if p.comm == "unknown"]
    clock.t += 1.0
    gpus.readings = [gpu(0, 700.0, 100.0)]  # gone from NVML too: its GPU is idle, unattributed
    snap = s.sample_once()
    assert snap.runs[0].energy_joules["gpu"] == pytest.approx(600.0)
    assert snap.unattributed_power_watts["gpu"] == pytest.approx(100.0)


def test_failing_source_marks_its_collector_and_others_carry_on(tmp_path):
    gpus = FakeGpus(fail=True)
    rapl = FakeRapl()
    rapl.fail = True
    proc, clock, s = make(tmp_path, gpus=gpus, rapl=rapl)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 4.0})
    snap = s.sample_once()
    assert snap.collectors["gpu"].success is False and "driver" in snap.collectors["gpu"].error
    assert snap.collectors["rapl"].success is False
    assert snap.collectors["cpu"].success is True  # fell back to the model, labelled so
    cpu = [d for d in snap.devices if d.component == "cpu"]
    assert [(d.key, d.source) for d in cpu] == [("all", "model")]
    assert cpu[0].power_watts == pytest.approx(75.0)  # FlatModel at 100 % utilisation
    assert snap.runs[0].energy_joules["cpu"] == pytest.approx(75.0)
    assert snap.runs[0].sources["cpu"] == "model"
    check_sums(snap)


def test_registered_root_counts_its_descendants(tmp_path):
    proc, clock, s = make(tmp_path, rapl=FakeRapl(1),
                          regs=[Registration("api-run", 500, 1.0)])
    proc.spawn(500, comm="python")  # in-code API: no CARBONWATCH_RUN_ID in its exec-time environment
    proc.spawn(501, ppid=500, comm="loader")
    proc.spawn(502, ppid=501, comm="loader2")
    proc.spawn(600, comm="unrelated")
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {500: 1.0, 501: 1.0, 502: 1.0, 600: 1.0})
    s.s.rapl.pkg = [40.0]
    snap = s.sample_once()
    run = {r.run_id: r for r in snap.runs}["api-run"]
    assert run.live_processes == 3
    assert run.energy_joules["cpu"] == pytest.approx(30.0)


def test_registration_with_wrong_start_time_is_ignored(tmp_path):
    proc, clock, s = make(tmp_path, rapl=FakeRapl(1), regs=[Registration("stale", 500, 999.0)])
    proc.spawn(500, start=1.0)
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {500: 1.0})
    snap = s.sample_once()
    assert snap.runs == []


def test_run_counters_are_monotonic_and_vanish_after_linger(tmp_path):
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, rapl=rapl, linger=10.0)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    last = 0.0
    for _ in range(5):
        clock.t += 1.0
        proc.run(1.0, {100: 1.0})
        rapl.pkg = [rapl.pkg[0] + 20.0]
        snap = s.sample_once()
        e = snap.runs[0].energy_joules["cpu"]
        assert e > last
        last = e
    proc.kill(100)
    clock.t += 1.0
    snap = s.sample_once()
    assert snap.runs[0].energy_joules["cpu"] == last  # kept, no longer growing
    assert snap.runs[0].power_watts["cpu"] == 0.0 and snap.runs[0].live_processes == 0
    s.counters.note_served(snap.runs)  # a scrape served its final values (tests/node/test_linger.py)
    clock.t += 11.0
    snap = s.sample_once()
    assert snap.runs == []


def test_top_n_folds_the_rest_into_other_and_sums_still_hold(tmp_path):
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, rapl=rapl, top_n=2)
    proc.spawn(100, run_id="r1")
    for pid in range(200, 210):
        proc.spawn(pid)
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 0.1, **{pid: 0.05 * (pid - 199) for pid in range(200, 210)}})
    rapl.pkg = [100.0]
    snap = s.sample_once()
    pids = [p.pid for p in snap.processes]
    assert 100 in pids  # run processes are always shown
    assert {209, 208} <= set(pids)  # the two busiest others
    assert -1 in pids  # the folded rest
    assert len(pids) == 1 + 2 + 1
    check_sums(snap)


def test_between_full_scans_only_followed_processes_are_read_and_new_run_children_are_found(tmp_path):
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, rapl=rapl, top_n=1)
    s.cfg.process.scan_interval = 100.0  # one full scan (the baseline), then the fast path
    proc.spawn(100, comm="train", run_id="r1")
    proc.spawn(200, comm="busy", cpu=50.0)  # the top 1 at the baseline: most CPU so far
    proc.spawn(300, comm="quiet", cpu=1.0)
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 1.0, 200: 1.0})
    rapl.pkg = [40.0]
    snap = s.sample_once()
    assert {p.pid for p in snap.processes} == {100, 200, -1}
    # a DataLoader worker starts: found through its parent's children list, its CPU counted to the run
    clock.t += 1.0
    proc.spawn(101, ppid=100, comm="worker", start=clock.t - 0.5)
    proc.run(1.0, {100: 1.0, 101: 1.0, 300: 1.0})  # pid 300, not followed, turns busy
    rapl.pkg = [80.0]
    snap = s.sample_once()
    check_sums(snap)
    by_pid = {p.pid: p for p in snap.processes}
    assert by_pid[101].run_id == "r1"
    assert by_pid[101].power_watts["cpu"] == pytest.approx(10.0)  # 1 of 4 CPU-seconds of 40 J
    assert 300 not in by_pid  # not read until the next full scan
    # the unfollowed busy process's time goes to pid="other" from /proc/stat, idle stays unattributed
    assert by_pid[-1].power_watts["cpu"] == pytest.approx(10.0)
    assert snap.unattributed_power_watts["cpu"] == pytest.approx(10.0)
    assert {r.run_id: r for r in snap.runs}["r1"].power_watts["cpu"] == pytest.approx(20.0)

"""The exporter integrates energy and emissions per run, container and node, and keeps the counters across
restarts: exact sums of dE x I(t) on injected sources (fake /proc, GPUs, RAPL) with hand-computed values."""

from __future__ import annotations

import pytest

from carbonwatch.intensity.providers import IntensityInUse
from carbonwatch.node.identity import ContainerRef, ProcessIdentity, Resolver, RunIdentity
from carbonwatch.node.model import GpuProcessUse
from carbonwatch.node.registration import Registration
from carbonwatch.node.sampler import Sampler
from tests.node.test_sampler import FakeGpus, FakeRapl, gpu
from tests.node.test_sampler import make as make_sampler


class Grid:
    """The intensity in use; the test steps it."""

    def __init__(self, grams: float) -> None:
        self.grams = grams

    def __call__(self) -> IntensityInUse:
        return IntensityInUse("DE", self.grams, "static")


def make(tmp_path, grid, rapl=None, gpus=None, regs=(), resolver=None, linger=300.0, scan_interval=10.0):
    return make_sampler(tmp_path, linger=linger, rapl=rapl, gpus=gpus, regs=regs, intensity=grid,
                        resolver=resolver, scan_interval=scan_interval)


def step_gpu(gpus, clock, joules_so_far, power, pids):
    clock.t += 1.0
    gpus.readings = [gpu(0, joules_so_far, power, [GpuProcessUse(p, sm_util=50) for p in pids])]


def test_each_sample_is_priced_at_the_intensity_of_that_sample(tmp_path):
    grid = Grid(100.0)
    gpus = FakeGpus([gpu(0, 0.0, 300.0)])
    proc, clock, s = make(tmp_path, grid, gpus=gpus)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    # 10 s at 300 W and 100 g/kWh, then 10 s at 300 W and 500 g/kWh: 3 kJ each
    e = 0.0
    for i in range(20):
        if i == 10:
            grid.grams = 500.0
        e += 300.0
        step_gpu(gpus, clock, e, 300.0, [100])
        snap = s.sample_once()
    run = snap.runs[0]
    assert run.energy_joules["gpu"] == pytest.approx(6000.0)
    exact = 3000.0 / 3.6e6 * 100.0 + 3000.0 / 3.6e6 * 500.0  # 0.5 g
    assert run.emissions_grams["gpu"] == pytest.approx(exact, rel=1e-12)
    assert snap.node_energy_joules["gpu"] == pytest.approx(6000.0)
    assert snap.node_emissions_grams["gpu"] == pytest.approx(exact, rel=1e-12)
    assert snap.intensity == IntensityInUse("DE", 500.0, "static")


def test_node_totals_include_unattributed_energy_and_parts_sum_to_the_device(tmp_path):
    grid = Grid(200.0)
    rapl = FakeRapl(packages=1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 1.0})  # 1 of 4 CPUs
    rapl.pkg = [40.0]
    rapl.dram = 4.0
    snap = s.sample_once()
    run = snap.runs[0]
    assert run.energy_joules["cpu"] == pytest.approx(10.0)
    assert snap.node_energy_joules["cpu"] == pytest.approx(40.0)  # idle and unattributed included
    assert snap.node_emissions_grams["cpu"] == pytest.approx(40.0 / 3.6e6 * 200.0)
    procs = sum(p.energy_joules.get("cpu", 0.0) for p in snap.processes)
    assert procs + snap.unattributed_energy_joules["cpu"] == pytest.approx(snap.node_energy_joules["cpu"])


def test_counters_continue_after_a_restart_from_the_exported_state(tmp_path):
    grid = Grid(300.0)
    gpus = FakeGpus([gpu(0, 0.0, 100.0)])
    proc, clock, s = make(tmp_path, grid, gpus=gpus)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    for i in range(1, 6):
        step_gpu(gpus, clock, 100.0 * i, 100.0, [100])
        before = s.sample_once()
    state = s.export_state()
    # a new exporter process: new sampler, same node, same hardware counter continuing
    s2 = Sampler(s.cfg, s.s, clock=clock, wall=s.wall, boot_clock=clock, intensity=grid)
    s2.restore_state(state)
    clock.t += 3.0  # down for 3 s: the first sample after a restart only sets baselines
    gpus.readings = [gpu(0, 800.0, 100.0, [GpuProcessUse(100, sm_util=50)])]
    s2.sample_once()
    step_gpu(gpus, clock, 900.0, 100.0, [100])
    after = s2.sample_once()
    r0, r1 = before.runs[0], after.runs[0]
    assert r1.energy_joules["gpu"] == pytest.approx(r0.energy_joules["gpu"] + 100.0)
    assert r1.emissions_grams["gpu"] == pytest.approx(r0.emissions_grams["gpu"] + 100.0 / 3.6e6 * 300.0)
    dev0 = [d for d in before.devices if d.component == "gpu"][0]
    dev1 = [d for d in after.devices if d.component == "gpu"][0]
    assert dev1.energy_joules == pytest.approx(dev0.energy_joules + 100.0)
    assert after.node_energy_joules["gpu"] == pytest.approx(before.node_energy_joules["gpu"] + 100.0)


def test_a_run_whose_linger_ran_out_while_the_exporter_was_down_is_not_brought_back(tmp_path):
    grid = Grid(100.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl, linger=60.0)
    proc.spawn(100, run_id="old")
    proc.spawn(200, run_id="recent")
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 1.0, 200: 1.0})
    rapl.pkg = [8.0]
    s.sample_once()
    proc.kill(100)
    clock.t += 50.0
    rapl.pkg = [9.0]
    proc.run(50.0, {200: 1.0})
    s.sample_once()  # "old" ended 50 s ago, "recent" still runs
    state = s.export_state()
    clock.t += 30.0  # down 30 s: "old" is now 80 s past its end, beyond the 60 s linger
    s2 = Sampler(s.cfg, s.s, clock=clock, wall=s.wall, boot_clock=clock, intensity=grid)
    s2.restore_state(state)
    assert set(s2.counters.runs) == {"recent"}


def test_a_new_run_process_is_counted_from_its_start_even_between_full_scans(tmp_path):
    grid = Grid(100.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl, scan_interval=100.0)
    proc.spawn(1, comm="init")
    s.sample_once()  # the only full scan for 100 s
    clock.t += 1.0
    rapl.pkg = [10.0]
    s.sample_once()
    # a burner started by hand with CARBONWATCH_RUN_ID, not the child of any run process
    clock.t += 1.0
    proc.spawn(700, ppid=1, comm="burn", run_id="burner", start=clock.t - 0.6)
    proc.run(1.0, {700: 0.6})  # 0.6 CPU-seconds in this 1 s interval, since its start
    rapl.pkg = [50.0]  # 40 J over 4 CPU-seconds
    snap = s.sample_once()
    run = {r.run_id: r for r in snap.runs}["burner"]
    assert run.energy_joules["cpu"] == pytest.approx(40.0 * 0.6 / 4.0)


def test_a_registration_counts_the_process_from_the_moment_it_registered(tmp_path):
    grid = Grid(100.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl, scan_interval=100.0)
    proc.spawn(500, comm="python", start=1.0, cpu=30.0)  # imports took 30 CPU-seconds before the run began
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {500: 1.0})
    rapl.pkg = [10.0]
    s.sample_once()
    # the in-code client registers at 31 CPU-seconds; the next sample reads it
    s.static_registrations = [Registration("api", 500, 1.0, cpu_seconds=31.0)]
    clock.t += 1.0
    proc.run(1.0, {500: 2.0})  # 2 CPUs for 1 s after registering
    rapl.pkg = [30.0]  # 20 J over 4 CPU-seconds
    snap = s.sample_once()
    run = {r.run_id: r for r in snap.runs}["api"]
    assert run.energy_joules["cpu"] == pytest.approx(20.0 * 2.0 / 4.0)
    assert run.origin == "registration"


class PodResolver(Resolver):
    """Places every process outside a run in one pod and run, as the fleet resolver would."""

    def assign(self, readings, regs):
        out = super().assign(readings, regs)
        pod = ContainerRef("ml", "trainer-0", "main", "uid-1")
        job = RunIdentity("kube-job", "kubernetes", {"user": "bob"})
        return {p.pid: ProcessIdentity(out[p.pid].run if p.pid in out else job, pod) for p in readings}


def test_container_counters_and_run_labels_from_the_resolver(tmp_path):
    grid = Grid(250.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl, resolver=PodResolver())
    proc.spawn(100)
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 2.0})
    rapl.pkg = [40.0]
    snap = s.sample_once()
    run = snap.runs[0]
    assert (run.run_id, run.origin, run.labels) == ("kube-job", "kubernetes", {"user": "bob"})
    box = snap.containers[0]
    assert (box.namespace, box.pod, box.container) == ("ml", "trainer-0", "main")
    assert box.energy_joules["cpu"] == pytest.approx(20.0)
    assert box.emissions_grams["cpu"] == pytest.approx(20.0 / 3.6e6 * 250.0)


def test_labels_the_run_client_set_in_the_environment_reach_the_run(tmp_path):
    grid = Grid(100.0)
    proc, clock, s = make(tmp_path, grid, rapl=FakeRapl(1))
    proc.spawn(100, run_id="r9")
    env = (proc.root / "100" / "environ").read_bytes() + b"CARBONWATCH_USER=alice\0CARBONWATCH_MODEL=resnet\0"
    (proc.root / "100" / "environ").write_bytes(env)
    s.sample_once()
    clock.t += 1.0
    snap = s.sample_once()
    run = snap.runs[0]
    assert run.labels == {"user": "alice", "model": "resnet"} and run.origin == "env"


def test_children_that_end_between_samples_are_counted_to_their_parents_run(tmp_path):
    grid = Grid(100.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl)
    proc.spawn(100, comm="train", run_id="r1")
    proc.spawn(101, ppid=100, comm="worker", start=1.0)
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 1.0, 101: 1.0})
    rapl.pkg = [40.0]
    s.sample_once()  # 20 J to the run: 2 of 4 CPU-seconds
    # next interval: the worker (seen, 1 CPU-s so far) uses 0.5 s more and ends, waited for by its parent; a
    # short shell command the parent ran also used 1 s and ended, never listed; the parent itself used 1 s
    clock.t += 1.0
    proc.run(1.0, {100: 1.0, 101: 0.5})
    proc.kill(101, reaped=True)
    proc.reaped_child(100, 1.0)
    proc.run(0.0, {})
    rapl.pkg = [80.0]  # 40 J over 4 CPU-seconds, of which 2.5 were the run's
    snap = s.sample_once()
    run = {r.run_id: r for r in snap.runs}["r1"]
    assert run.energy_joules["cpu"] == pytest.approx(20.0 + 40.0 * 2.5 / 4.0)
    other = [p for p in snap.processes if p.pid == -1][0]
    assert other.power_watts["cpu"] == pytest.approx(0.0)  # nothing of the run's left to pid="other"


def test_a_registered_run_is_counted_exactly_up_to_its_end_then_the_process_leaves_it(tmp_path):
    grid = Grid(100.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl, scan_interval=100.0)
    proc.spawn(500, comm="python", start=1.0, cpu=5.0)
    s.sample_once()
    s.static_registrations = [Registration("api", 500, 1.0, cpu_seconds=5.0)]
    clock.t += 1.0
    proc.run(1.0, {500: 1.0})
    rapl.pkg = [40.0]
    s.sample_once()  # 1 CPU-s of 4: 10 J
    # the run ends at 6.4 CPU-seconds (0.4 s into the next interval); the script goes on to 7.0
    s.static_registrations = [Registration("api", 500, 1.0, cpu_seconds=5.0, end_cpu_seconds=6.4)]
    clock.t += 1.0
    proc.run(1.0, {500: 1.0})
    rapl.pkg = [80.0]
    snap = s.sample_once()
    run = {r.run_id: r for r in snap.runs}["api"]
    assert run.energy_joules["cpu"] == pytest.approx(10.0 + 40.0 * 0.4 / 4.0)
    clock.t += 1.0
    proc.run(1.0, {500: 1.0})
    rapl.pkg = [120.0]
    snap = s.sample_once()  # after its end the process no longer counts to the run
    run = {r.run_id: r for r in snap.runs}["api"]
    assert run.energy_joules["cpu"] == pytest.approx(14.0) and run.live_processes == 0


def test_a_run_that_ends_and_exits_between_two_samples_keeps_its_last_interval(tmp_path):
    grid = Grid(100.0)
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, grid, rapl=rapl, scan_interval=100.0)
    proc.spawn(500, comm="python", start=1.0, cpu=5.0)
    s.static_registrations = [Registration("api", 500, 1.0, cpu_seconds=5.0)]
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {500: 1.0})
    rapl.pkg = [40.0]
    s.sample_once()  # 6.0 CPU-s, 10 J
    proc.run(0.5, {500: 1.0})
    proc.kill(500)  # ended at 6.5 CPU-s and exited before the next sample
    s.static_registrations = [Registration("api", 500, 1.0, cpu_seconds=5.0, end_cpu_seconds=6.5)]
    clock.t += 1.0
    proc.run(0.5, {})
    rapl.pkg = [80.0]
    snap = s.sample_once()
    run = {r.run_id: r for r in snap.runs}["api"]
    assert run.energy_joules["cpu"] == pytest.approx(10.0 + 40.0 * 0.5 / 4.0)

"""NvmlSource through the real pynvml, over a stub of the NVML C library (tests/fakes/nvml_stub.py).

Everything above the C boundary is pynvml's own code: wrappers, struct layouts, two-call sizing, the
version-mismatch error and the NVMLError classes. Pids are checked against a fake /proc tree."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pynvml
import pytest

from carbonwatch.node import attribution
from carbonwatch.node.model import FatalSourceError, GpuReading, SourceAbsent, SourceError
from carbonwatch.node.sources.nvml import (
    ENERGY_COUNTER,
    POWER_AVERAGE,
    POWER_INSTANT,
    NvmlSource,
    _field_number,
)
from tests.fakes import fake_nvml
from tests.fakes.nvml_stub import (
    COSTS,
    ENERGY_FIELD,
    ENERGY_FIELD_COST,
    FakeClock,
    FakeGpu,
    FakeMigDevice,
    FakeProcess,
    NvmlStub,
    bursty,
)
from tests.fakes.nvml_stub import (
    ProcTree as Proc,
)

GiB = 1 << 30
FIELDS = "nvmlDeviceGetFieldValues"
ENERGY_CALL = "nvmlDeviceGetTotalEnergyConsumption"
PROC_UTIL = "nvmlDeviceGetProcessUtilization"
COMPUTE = "nvmlDeviceGetComputeRunningProcesses_v3"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    return Proc(tmp_path / "proc")


Make = Callable[..., NvmlStub]


@pytest.fixture
def make(clock: FakeClock) -> Iterator[Make]:
    """Install a stub under pynvml for the test; fails the test if a stub callback itself broke."""
    stubs: list[NvmlStub] = []

    def build(gpus: list[FakeGpu] | int = 1, **kwargs: object) -> NvmlStub:
        stub = NvmlStub(gpus, clock=clock, **kwargs).install()  # type: ignore[arg-type]
        stubs.append(stub)
        return stub

    yield build
    for stub in stubs:
        stub.uninstall()
        assert stub.callback_errors == []


def source_for(stub: NvmlStub, proc: Proc, clock: FakeClock, **kwargs: object) -> NvmlSource:
    """A source over the stub that reads the counter and the per-process samples on every read (what one
    read does), unless the test asks for the intervals."""
    kwargs = {"counter_seconds": 0.0, "process_seconds": 0.0, **kwargs}
    return NvmlSource(pynvml, proc_root=str(proc.root), host_pids=True, clock=clock, wall=stub.wall,
                      **kwargs)  # type: ignore[arg-type]


def by_index(readings: list[GpuReading]) -> dict[int, GpuReading]:
    return {r.index: r for r in readings}


def procs_of(reading: GpuReading) -> dict[int, tuple[float | None, float | None, int | None]]:
    return {p.pid: (p.sm_util, p.mem_util, p.used_memory_bytes) for p in reading.processes}


# -- energy ------------------------------------------------------------------------------------------


def test_energy_and_power_come_from_one_field_values_call_per_gpu(make: Make, proc: Proc, clock: FakeClock) -> None:
    # 1 s period, 300 W for 0.3 s then 100 W: the 1 s average is 160 W.
    stub = make(3, watts=bursty(100.0, 300.0, period=1.0, duty=0.3))
    source = source_for(stub, proc, clock)
    source.read()
    stub.reset_counts()
    clock.advance(15.0)
    readings = source.read()
    assert [r.index for r in readings] == [0, 1, 2]
    for r in readings:
        assert r.energy_joules == pytest.approx(15 * 160.0)  # the counter in joules
        assert r.power_watts == pytest.approx(160.0)
        assert r.energy_source == ENERGY_COUNTER
    assert stub.calls[FIELDS] == 3
    assert stub.calls[ENERGY_CALL] == stub.calls["nvmlDeviceGetPowerUsage"] == 0
    assert source.last_errors == []


def test_the_energy_field_is_checked_once_against_the_dedicated_call(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make([FakeGpu(0, 200.0), FakeGpu(1, 200.0, energy_field_offset_mj=10**6)])  # GPU 1: 1 kJ off
    source = source_for(stub, proc, clock)
    clock.advance(10.0)
    first = by_index(source.read())
    assert stub.calls[ENERGY_CALL] == 2  # once per GPU
    clock.advance(10.0)
    second = by_index(source.read())
    assert stub.calls[ENERGY_CALL] == 3  # from now on only for GPU 1, whose field disagreed
    for r in (first, second):
        assert r[0].energy_source == r[1].energy_source == ENERGY_COUNTER
    assert second[1].energy_joules == pytest.approx(4000.0)  # the dedicated call's counter, not the field's
    assert second[0].energy_joules == pytest.approx(4000.0)


def test_without_the_energy_field_the_dedicated_call_is_used(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make([FakeGpu(0, 250.0, energy_field=False)])
    source = source_for(stub, proc, clock)
    clock.advance(4.0)
    r = source.read()[0]
    assert (r.energy_joules, r.power_watts, r.energy_source) == (pytest.approx(1000.0), 250.0, ENERGY_COUNTER)
    stub.reset_counts()
    source.read()
    assert stub.calls[ENERGY_CALL] == 1 and stub.calls[FIELDS] == 1  # the field is not asked for again


def test_without_a_counter_average_then_instant_power_is_the_source(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make([
        FakeGpu(0, 150.0, name="Tesla P100", energy_counter=False),  # averaged power field
        FakeGpu(1, 120.0, name="Tesla K80", energy_counter=False, power_average_field=False),  # instant field
        FakeGpu(2, 90.0, energy_counter=False, field_values=False),  # old driver: nvmlDeviceGetPowerUsage
        FakeGpu(3, 60.0, energy_counter=False, field_values=False, power_usage=False),  # nothing at all
    ])
    source = source_for(stub, proc, clock)
    clock.advance(2.0)
    r = by_index(source.read())
    assert [(r[i].energy_joules, r[i].power_watts, r[i].energy_source) for i in range(4)] == [
        (None, 150.0, POWER_AVERAGE),
        (None, 120.0, POWER_INSTANT),
        (None, 90.0, POWER_INSTANT),
        (None, None, POWER_INSTANT),
    ]
    stub.reset_counts()
    source.read()
    # what each GPU lacks is remembered: no counter asked for, no field-values call for GPUs 2 and 3
    assert stub.calls[ENERGY_CALL] == 0
    assert stub.calls[FIELDS] == 2
    assert stub.calls["nvmlDeviceGetPowerUsage"] == 1


def test_a_counter_gpu_without_power_fields_takes_its_power_from_the_counter(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    stub = make([FakeGpu(0, 320.0, field_values=False)])
    source = source_for(stub, proc, clock)
    assert source.read()[0].power_watts is None
    clock.advance(5.0)
    r = source.read()[0]
    assert r.power_watts == pytest.approx(320.0) and r.energy_source == ENERGY_COUNTER
    assert stub.calls["nvmlDeviceGetPowerUsage"] == 0  # 3.5 ms a call: never for a gauge


def test_counter_reset_is_reported_raw(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(1, watts=100.0)
    source = source_for(stub, proc, clock)
    clock.advance(10.0)
    assert source.read()[0].energy_joules == pytest.approx(1000.0)
    stub.board[0].reset_counter()
    clock.advance(1.0)
    assert source.read()[0].energy_joules == pytest.approx(100.0)  # the sampler absorbs the reset


# -- the session and its failures ---------------------------------------------------------------------


def test_the_real_library_missing_means_no_gpu_here() -> None:
    """pynvml over the real libnvidia-ml: on a node without the driver, the collector is absent, not failed."""
    assert pynvml.nvmlLib is None or isinstance(pynvml.nvmlLib, pynvml.CDLL)
    source = NvmlSource(pynvml)
    try:
        readings = source.read()
    except SourceAbsent as exc:
        assert "no NVIDIA driver" in str(exc)
    else:  # a GPU node
        assert all(r.uuid and r.energy_source for r in readings)
    finally:
        source.close()


def test_missing_pynvml_means_no_gpu_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(SourceAbsent, match="nvidia-ml-py"):
        NvmlSource().read()


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_LIBRARY_NOT_FOUND])
def test_no_driver_is_absent(make: Make, proc: Proc, clock: FakeClock, code: int) -> None:
    stub = make(1, init_error=code)
    with pytest.raises(SourceAbsent, match="no NVIDIA driver"):
        source_for(stub, proc, clock).read()


def test_no_gpu_is_absent(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(0)
    with pytest.raises(SourceAbsent, match="no GPU"):
        source_for(stub, proc, clock).read()


def test_a_driver_library_mismatch_is_fatal_at_init_and_later(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(1, init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    with pytest.raises(FatalSourceError, match="restarts the exporter"):
        source_for(stub, proc, clock).read()
    stub.init_error = None
    source = source_for(stub, proc, clock)
    source.read()
    stub.inject_error(FIELDS, pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    with pytest.raises(FatalSourceError, match="no longer matches"):
        source.read()


def test_other_init_failures_are_errors_and_retried(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(1, init_error=pynvml.NVML_ERROR_NO_PERMISSION)
    source = source_for(stub, proc, clock)
    with pytest.raises(SourceError, match="NVML initialisation failed: Insufficient Permissions"):
        source.read()
    stub.init_error = None
    assert len(source.read()) == 1


def test_driver_reload_fails_one_read_then_nvml_is_initialised_again(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(2, watts=100.0)
    source = source_for(stub, proc, clock)
    clock.advance(10.0)
    source.read()
    stub.driver_reload()
    with pytest.raises(SourceError, match="Uninitialized"):
        source.read()
    clock.advance(2.0)
    assert [r.energy_joules for r in source.read()] == pytest.approx([200.0, 200.0])
    assert stub.calls["nvmlInitWithFlags"] == 2


def test_nothing_is_carried_across_a_failed_read(make: Make, proc: Proc, clock: FakeClock) -> None:
    """With the counter read every 5 s: after a driver reload (a failed read) and a lost GPU, the next read
    is of the counter itself, never the averaged power integrated over the gap."""
    stub = make(2, watts=100.0)
    source = source_for(stub, proc, clock, counter_seconds=5.0)
    clock.advance(10.0)
    for _ in range(3):
        source.read()
        clock.advance(1.0)  # t=13: the counter was read at t=10 (1,000 J); t=11, 12 were carried
    stub.driver_reload()
    with pytest.raises(SourceError, match="Uninitialized"):
        source.read()
    clock.advance(1.0)
    stub.reset_counts()
    assert [r.energy_joules for r in source.read()] == pytest.approx([100.0, 100.0])  # since the reload
    assert stub.calls[ENERGY_FIELD] == 2
    stub.board[1].lose()
    clock.advance(1.0)
    assert [r.index for r in source.read()] == [0]
    stub.board[1].recover()
    clock.advance(2.0)
    stub.reset_counts()
    r = by_index(source.read())
    assert stub.calls[ENERGY_FIELD] == 1  # GPU 1's counter; GPU 0 is carried
    assert r[1].energy_joules == pytest.approx(400.0) and r[0].energy_joules == pytest.approx(400.0)


def test_a_lost_gpu_is_left_out_and_reported_while_the_others_read(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(3, watts=200.0)
    source = source_for(stub, proc, clock)
    source.read()
    stub.board[1].lose()
    clock.advance(5.0)
    assert [r.index for r in source.read()] == [0, 2]
    assert len(source.last_errors) == 1
    assert "GPU 1" in source.last_errors[0] and "GPU is lost" in source.last_errors[0]
    stub.board[1].recover()
    clock.advance(5.0)
    back = by_index(source.read())
    assert sorted(back) == [0, 1, 2] and source.last_errors == []
    assert back[1].energy_joules == pytest.approx(10 * 200.0)  # the counter went on


def test_close_shuts_nvml_down(make: Make, proc: Proc, clock: FakeClock) -> None:
    stub = make(1)
    source = source_for(stub, proc, clock)
    source.read()
    source.close()
    assert stub.refcount == 0
    source.read()
    assert stub.refcount == 1


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="gauge_seconds must be >= 0"):
        NvmlSource(gauge_seconds=-1.0)


# -- processes ----------------------------------------------------------------------------------------


def test_process_lists_and_samples_merge(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(100, 200, 300, 400)
    gpu = FakeGpu(0, 300.0, processes=[
        FakeProcess(100, sm_util=60, mem_util=30, used_memory=8 * GiB),
        FakeProcess(200, sm_util=0, mem_util=0, used_memory=None),  # an idle context; memory not available
        FakeProcess(300, sm_util=25, mem_util=5, kind="both"),  # compute and graphics
        FakeProcess(400, sm_util=10, mem_util=1, kind="graphics"),
    ])
    stub = make([gpu])
    source = source_for(stub, proc, clock)
    clock.advance(1.0)
    r = source.read()[0]
    assert procs_of(r) == {
        100: (60.0, 30.0, 8 * GiB),
        200: (0.0, 0.0, None),  # its (0, 0) samples: idle, not unknown
        300: (25.0, 5.0, GiB),
        400: (10.0, 1.0, GiB),
    }
    assert r.utilization_ratio == pytest.approx(0.95)


def test_shares_are_carried_while_no_new_samples_arrive(make: Make, proc: Proc, clock: FakeClock) -> None:
    """One busy process with little memory, one idle with much: a read that finds no new sample (NOT_FOUND)
    must not flip the split to memory share."""
    proc.add(1, 2)
    stub = make([FakeGpu(0, 300.0, processes=[FakeProcess(1, sm_util=90, used_memory=GiB),
                                               FakeProcess(2, sm_util=0, used_memory=40 * GiB)])])
    source = source_for(stub, proc, clock)
    clock.advance(2.0)
    assert procs_of(source.read()[0])[1][0] == 90.0
    clock.advance(0.5)  # no sample period ended: NVML answers NOT_FOUND
    r = source.read()[0]
    assert {p: f[0] for p, f in procs_of(r).items()} == {1: 90.0, 2: 0.0}
    parts, rest = attribution.split_gpu(100.0, r.processes)
    assert parts == {1: pytest.approx(100.0)} and rest == pytest.approx(0.0)
    # a process that ends leaves the list and /proc: it is dropped with its carried share
    stub.board[0].sync()
    stub.board[0].processes.pop(0)
    proc.remove(1)
    clock.advance(20.0)
    assert procs_of(source.read()[0]) == {2: (0.0, 0.0, 40 * GiB)}


def test_a_new_process_is_listed_before_its_first_sample(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(7)
    stub = make([FakeGpu(0, 300.0, processes=[FakeProcess(7, sm_util=70)])])
    source = source_for(stub, proc, clock)
    clock.advance(0.5)  # the driver has no sample yet (NOT_FOUND)
    assert procs_of(source.read()[0]) == {7: (0.0, 0.0, GiB)}  # memory share in the sampler
    clock.advance(1.0)
    assert procs_of(source.read()[0]) == {7: (70.0, 0.0, GiB)}


def test_a_process_error_keeps_the_energy_and_the_last_seen_timestamp(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(5)
    stub = make([FakeGpu(0, 200.0, processes=[FakeProcess(5, sm_util=80)])])
    source = source_for(stub, proc, clock)
    clock.advance(3.0)
    assert procs_of(source.read()[0])[5][0] == 80.0  # samples at 1, 2, 3 s
    clock.advance(1.0)
    stub.inject_error(PROC_UTIL, pynvml.NVML_ERROR_UNKNOWN)
    stub.inject_error(COMPUTE, pynvml.NVML_ERROR_UNKNOWN)
    failed = source.read()
    assert failed[0].energy_joules == pytest.approx(800.0)  # the energy is there all the same
    assert any("process utilization: Unknown Error" in e for e in source.last_errors)
    stub.board[0].processes[0].sm_util = 20  # samples from 5 s on: 20 %
    clock.advance(2.0)
    # the window starts after the 3 s sample: samples at 4 s (80 %), 5 s and 6 s (20 %), not the whole buffer
    assert procs_of(source.read()[0])[5][0] == pytest.approx(40.0)
    assert source.last_errors == []


def test_a_wall_clock_going_back_does_not_stop_the_samples(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(9)
    stub = make([FakeGpu(0, 200.0, processes=[FakeProcess(9, sm_util=80)])])
    source = source_for(stub, proc, clock)
    clock.advance(3.0)
    assert procs_of(source.read()[0])[9][0] == 80.0
    stub.board[0].sync()
    stub.wall_offset = -3600.0  # NTP steps the clock back an hour
    stub.board[0].processes[0].sm_util = 30
    clock.advance(2.0)
    assert procs_of(source.read()[0])[9][0] == 30.0  # new samples, not the carried 80 %
    clock.advance(1.0)
    assert procs_of(source.read()[0])[9][0] == 30.0


def test_insufficient_size_between_sizing_and_fill_is_retried(make: Make, proc: Proc, clock: FakeClock) -> None:
    pids = list(range(1000, 1012))
    proc.add(*pids)
    stub = make([FakeGpu(0, 300.0, processes=[FakeProcess(pids[0], sm_util=50)])])
    source = source_for(stub, proc, clock)

    def burst_of_processes() -> None:  # more than pynvml's 2n + 5 oversizing: its fill call fails
        stub.board[0].processes.extend(FakeProcess(p, sm_util=5) for p in pids[1:])

    stub.on_sized[COMPUTE] = burst_of_processes
    clock.advance(1.0)
    r = source.read()[0]
    assert source.last_errors == []
    assert sorted(procs_of(r)) == pids
    assert stub.calls[COMPUTE] == 4  # sizing, fill (Insufficient Size), sizing, fill

    def another_sample_period() -> None:  # samples written between the two calls of the utilisation read
        clock.advance(1.0)
        stub.board[0].sync()

    stub.on_sized[PROC_UTIL] = another_sample_period
    clock.advance(3.0)  # 36 samples: more than the one-call read has room for, so pynvml's wrapper sizes it
    stub.reset_counts()
    r = source.read()[0]
    assert stub.calls[PROC_UTIL] == 5  # one call too small; sizing, fill (Insufficient Size); sizing, fill
    assert source.last_errors == [] and procs_of(r)[pids[0]][0] == 50.0


def test_a_driver_older_than_r510_is_read_through_the_v2_lists(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(11, 12)
    stub = make([FakeGpu(0, 250.0, processes=[FakeProcess(11, sm_util=40, used_memory=2 * GiB),
                                               FakeProcess(12, kind="graphics")])], v3=False)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):  # what pynvml does on these drivers
        pynvml.nvmlInit()
        try:
            pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    source = source_for(stub, proc, clock)
    clock.advance(1.0)
    r = source.read()[0]
    assert r.energy_joules == pytest.approx(250.0)
    assert procs_of(r) == {11: (40.0, 0.0, 2 * GiB), 12: (0.0, 0.0, GiB)}
    assert source.last_errors == []
    assert stub.calls["nvmlDeviceGetComputeRunningProcesses_v2"] > 0


def test_the_r535_entry_layout_is_detected_and_read(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(1111, 2222, 3333)
    procs = [FakeProcess(1111, sm_util=10, used_memory=3 * GiB), FakeProcess(2222, sm_util=20, used_memory=5 * GiB),
             FakeProcess(3333, sm_util=30, used_memory=7 * GiB)]
    stub = make([FakeGpu(0, 300.0, processes=procs)], entry_bytes=32)
    pynvml.nvmlInit()
    try:  # the premise: pynvml alone reads these entries as pids 1111, 0 and 4294967295
        misread = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
        assert [p.pid for p in misread] == [1111, 0, 4294967295]
    finally:
        pynvml.nvmlShutdown()
    source = source_for(stub, proc, clock, list_seconds=0.0)
    clock.advance(1.0)
    assert procs_of(source.read()[0]) == {1111: (10.0, 0.0, 3 * GiB), 2222: (20.0, 0.0, 5 * GiB),
                                          3333: (30.0, 0.0, 7 * GiB)}
    stub.reset_counts()
    clock.advance(1.0)
    assert sorted(procs_of(source.read()[0])) == [1111, 2222, 3333]
    assert stub.calls[COMPUTE] == 2  # read raw at once: sizing and fill, no pynvml misread first


def test_entries_that_cannot_be_real_are_left_out(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(21, 22)
    stub = make([FakeGpu(0, 300.0, processes=[
        FakeProcess(21, used_memory=GiB),
        FakeProcess(22, used_memory=500 * GiB),  # more than the board has
        FakeProcess(23, used_memory=GiB),  # not in /proc (ended, or another pid namespace)
    ])])
    source = source_for(stub, proc, clock)
    assert sorted(procs_of(source.read()[0])) == [21]


def test_mps_clients_are_charged_and_the_server_is_not(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(50, comm="nvidia-cuda-mps-server")
    proc.add(51, 52)
    gpu = FakeGpu(0, 400.0, mps_samples_to=50, processes=[
        FakeProcess(50, used_memory=GiB),  # the server, in the compute list
        FakeProcess(51, sm_util=60, used_memory=3 * GiB, kind="mps"),
        FakeProcess(52, sm_util=20, used_memory=1 * GiB, kind="mps"),
    ])
    stub = make([gpu])
    source = source_for(stub, proc, clock)
    clock.advance(1.0)
    r = source.read()[0]
    # the driver reports the clients' SM time under the server (80 %); it goes to the clients by memory
    assert procs_of(r) == {51: (60.0, 0.0, 3 * GiB), 52: (20.0, 0.0, GiB)}
    parts, rest = attribution.split_gpu(400.0, r.processes)
    assert parts == {51: pytest.approx(300.0), 52: pytest.approx(100.0)} and rest == pytest.approx(0.0)


def mig_board(**kwargs: object) -> FakeGpu:
    return FakeGpu(0, 700.0, name="NVIDIA H100 80GB HBM3", mig=[
        FakeMigDevice(gpu_instance=1, slices=3),
        FakeMigDevice(gpu_instance=2, slices=1),
        FakeMigDevice(gpu_instance=3, slices=3),  # no process: its share stays unattributed
    ], processes=[
        FakeProcess(61, sm_util=90, used_memory=3 * GiB, gpu_instance=1),
        FakeProcess(62, sm_util=90, used_memory=1 * GiB, gpu_instance=1),
        FakeProcess(63, sm_util=90, used_memory=8 * GiB, gpu_instance=2),
    ], **kwargs)  # type: ignore[arg-type]


def test_mig_splits_the_board_by_slices_then_by_memory(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(61, 62, 63)
    stub = make([mig_board()], privileged=False)  # MIG-device handles answer without privileges
    source = source_for(stub, proc, clock)
    clock.advance(1.0)
    r = source.read()[0]
    assert source.last_errors == []
    assert r.energy_joules == pytest.approx(700.0) and r.energy_source == ENERGY_COUNTER
    assert r.utilization_ratio is None
    assert [round(s, 6) for _, s in r.mig_shares] == [round(3 / 7, 6), round(1 / 7, 6), round(3 / 7, 6)]
    assert {p.pid: (p.gpu_instance_id, p.board_share) for p in r.processes} == {
        61: (1, pytest.approx(3 / 7 * 0.75)), 62: (1, pytest.approx(3 / 7 * 0.25)), 63: (2, pytest.approx(1 / 7)),
    }
    parts, rest = attribution.split_gpu(700.0, r.processes)
    assert parts == {61: pytest.approx(225.0), 62: pytest.approx(75.0), 63: pytest.approx(100.0)}
    assert rest == pytest.approx(300.0)  # the 3g instance without a process
    assert stub.calls[PROC_UTIL] == stub.calls["nvmlDeviceGetUtilizationRates"] == 0


def test_mig_lists_refused_are_an_error_never_silent(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(61, 62, 63)
    stub = make([mig_board()], privileged=False, mig_handle_lists=False)
    source = source_for(stub, proc, clock)
    r = source.read()[0]
    assert r.energy_joules is not None and r.processes == ()
    assert len(source.last_errors) == 1
    assert "MIG: NVML refused the process lists" in source.last_errors[0]
    assert "Insufficient Permissions" in source.last_errors[0]


def test_mig_with_privileges_reads_the_board_list(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(61, 62, 63)
    stub = make([mig_board()], privileged=True, mig_handle_lists=False)
    source = source_for(stub, proc, clock)
    r = source.read()[0]
    assert source.last_errors == []
    assert {p.pid: p.gpu_instance_id for p in r.processes} == {61: 1, 62: 1, 63: 2}


def test_mig_instances_are_read_again_and_a_layout_error_keeps_the_energy(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    proc.add(81, 82)
    board = FakeGpu(0, 700.0, mig=[FakeMigDevice(1, 4)], processes=[FakeProcess(81, gpu_instance=1)])
    stub = make([board], privileged=False)
    stub.inject_error("nvmlDeviceGetMaxMigDeviceCount", pynvml.NVML_ERROR_UNKNOWN)
    source = source_for(stub, proc, clock)
    first = source.read()[0]
    assert first.energy_joules is not None and first.processes == ()
    assert source.last_errors == [f"GPU 0 ({board.uuid}): MIG layout unreadable: Unknown Error"]
    clock.advance(10.0)  # read again with the process lists
    assert {p.pid: p.board_share for p in source.read()[0].processes} == {81: pytest.approx(4 / 7)}
    assert source.last_errors == []
    assert board.mig is not None
    board.mig.append(FakeMigDevice(2, 2, uuid="MIG-new"))  # created later, without a GPU reset
    board.processes.append(FakeProcess(82, gpu_instance=2))
    clock.advance(60.0)
    r = source.read()[0]
    assert {p.pid: p.board_share for p in r.processes} == {81: pytest.approx(4 / 7), 82: pytest.approx(2 / 7)}
    assert ("MIG-new", pytest.approx(2 / 7)) in r.mig_shares


def test_outside_the_host_pid_namespace_processes_are_not_attributed(make: Make, proc: Proc, clock: FakeClock) -> None:
    proc.add(71)
    stub = make([FakeGpu(0, 300.0, processes=[FakeProcess(71, sm_util=50)])])
    source = NvmlSource(pynvml, proc_root=str(proc.root), host_pids=False, clock=clock, wall=stub.wall)
    clock.advance(1.0)
    r = source.read()[0]
    assert r.processes == () and r.energy_joules == pytest.approx(300.0)
    assert len(source.last_errors) == 1 and "host PID namespace" in source.last_errors[0]
    assert stub.calls[COMPUTE] == stub.calls[PROC_UTIL] == 0


def test_the_pid_namespace_is_detected_from_proc(make: Make, clock: FakeClock) -> None:
    """On this node (/proc of the exporter's own namespace), the detection decides."""
    from carbonwatch.node.sources import pidns

    make(1)
    source = NvmlSource(pynvml, clock=clock)
    assert source.host_pids() == pidns.detect("/proc").host_pids


# -- what a sample costs --------------------------------------------------------------------------------


def test_steady_state_calls_per_gpu_and_sample(make: Make, proc: Proc, clock: FakeClock) -> None:
    """At 1 Hz with the defaults: one field-values call per GPU and sample, asking for the energy counter
    every 5th; the per-process samples every 5 s, the process lists every second, the utilisation gauge
    every 30 s. No dedicated counter or power call at all."""
    pids = [2000 + i for i in range(16)]
    proc.add(*pids)
    gpus = [FakeGpu(i, 300.0, processes=[FakeProcess(pids[2 * i], sm_util=60),
                                         FakeProcess(pids[2 * i + 1], sm_util=20)]) for i in range(8)]
    stub = make(gpus)
    source = NvmlSource(pynvml, proc_root=str(proc.root), host_pids=True, clock=clock, wall=stub.wall)
    for _ in range(6):  # the first per-process samples come with the read 5 s after the first
        source.read()
        clock.advance(1.0)
    stub.reset_counts()
    for _ in range(60):
        clock.advance(1.0)
        readings = source.read()
        assert len(readings) == 8 and all(len(r.processes) == 2 for r in readings)
        # between the per-process reads every listed process keeps its figures
        assert all(sorted(p.sm_util or 0 for p in r.processes) == [20, 60] for r in readings)
    per = {name: n / (60 * 8) for name, n in stub.calls.items() if name != "nvmlDeviceGetCount_v2"}
    assert per[FIELDS] == 1.0 and per[ENERGY_FIELD] == pytest.approx(1 / 5)
    assert per[PROC_UTIL] == pytest.approx(1 / 5)  # into a buffer sized from earlier reads: no sizing call
    assert per[COMPUTE] == 2  # sizing and fill
    assert per["nvmlDeviceGetGraphicsRunningProcesses_v3"] == per["nvmlDeviceGetMPSComputeRunningProcesses_v3"] == 1
    assert per["nvmlDeviceGetUtilizationRates"] == pytest.approx(1 / 30)
    assert ENERGY_CALL not in per and "nvmlDeviceGetPowerUsage" not in per
    # at the H200's prices: the counter and the per-process samples are nearly all of it
    expected = (ENERGY_FIELD_COST + COSTS[PROC_UTIL]) / 5 + COSTS[FIELDS] + 4 * COSTS[COMPUTE] \
        + COSTS["nvmlDeviceGetUtilizationRates"] / 30
    assert stub.cost_seconds / (60 * 8) == pytest.approx(expected, rel=0.05)


def test_a_new_process_is_read_at_once_when_listed(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    proc.add(5001, 5002)
    gpu = FakeGpu(0, 400.0, processes=[FakeProcess(5001, sm_util=80)])
    stub = make([gpu])
    source = source_for(stub, proc, clock, process_seconds=5.0)
    for _ in range(7):
        source.read()
        clock.advance(1.0)  # the periodic per-process read was at t=5
    gpu.processes.append(FakeProcess(5002, sm_util=10))
    stub.reset_counts()
    r = source.read()[0]  # t=7: listed (lists every second) and read at once, before its first sample
    assert stub.calls[PROC_UTIL] == 1 and procs_of(r)[5001][0] == 80
    clock.advance(1.0)
    r = source.read()[0]  # t=8: listed before: the samples wait for 5 s after the last read (t=12)
    assert procs_of(r)[5002][0] == 0.0
    clock.advance(4.0)
    r = source.read()[0]
    assert procs_of(r)[5002][0] == 10 and procs_of(r)[5001][0] == 80


def test_samples_of_a_process_gone_before_the_previous_read_say_nothing_about_this_interval(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    """Per-process reads cover several seconds: a process that exited since the previous read used the GPU in
    this interval and keeps its figures once more; one already gone at the previous read gets none."""
    proc.add(6001, 6002)
    gpu = FakeGpu(0, 400.0, processes=[FakeProcess(6001, sm_util=50), FakeProcess(6002, sm_util=50)])
    stub = make([gpu])
    source = source_for(stub, proc, clock, process_seconds=5.0)
    for _ in range(6):
        source.read()
        clock.advance(1.0)
    proc.remove(6002)  # t=6; the driver still has its samples up to now
    r = source.read()[0]
    assert procs_of(r)[6002][0] == 50  # alive at the previous read: the interval it exited in is partly its
    clock.advance(1.0)
    assert 6002 not in procs_of(source.read()[0])
    clock.advance(3.0)
    r = source.read()[0]  # t=10: the periodic read names 6002 (samples from t=6), gone since before t=6
    assert set(procs_of(r)) == {6001}
    proc.remove(6001)  # exits within the next interval, between per-process reads
    clock.advance(1.0)
    r = source.read()[0]
    assert procs_of(r)[6001][0] == 50  # it was there at the previous read: this interval is partly its
    clock.advance(1.0)
    assert 6001 not in procs_of(source.read()[0])
    proc.add(6003)
    gpu.processes = [FakeProcess(6003, sm_util=70)]
    clock.advance(1.0)
    source.read()
    proc.remove(6003)  # exits just before a periodic read that names it
    clock.advance(5.0)
    assert procs_of(source.read()[0])[6003][0] == 70


def test_between_counter_reads_the_counter_is_carried_by_the_averaged_power(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    """A bursty GPU at 1 Hz, the counter read every 5 s: each read of the counter gives the counter itself
    (or an estimate ahead of it, held so the series never goes back); in between, the averaged power carries
    it. The averaged power is a trailing 1 s mean, so the estimate lags the counter by about half a second:
    between reads it is off by at most half a second of the swing (560 W here), and the total stays the
    counter's."""
    stub = make([FakeGpu(0, bursty(90.0, 650.0, period=2.3, duty=0.4))])
    source = source_for(stub, proc, clock, counter_seconds=5.0)
    previous = source.read()[0].energy_joules
    assert previous is not None
    lag = 0.6 * (650 - 90)
    for t in range(1, 601):
        clock.advance(1.0)
        stub.reset_counts()
        r = source.read()[0]
        assert r.energy_source == ENERGY_COUNTER and r.energy_joules is not None
        assert r.energy_joules >= previous  # never backwards
        real = stub.board[0].counter_mj / 1000.0
        if t % 5 == 0:
            assert stub.calls[ENERGY_FIELD] == 1
            assert r.energy_joules >= real - 1e-3
            assert r.energy_joules - real < lag
        else:
            assert stub.calls[ENERGY_FIELD] == 0 and stub.calls[FIELDS] == 1
            assert abs(r.energy_joules - real) < lag
        previous = r.energy_joules
    assert previous == pytest.approx(stub.board[0].counter_mj / 1000.0, abs=lag)


def test_a_counter_reset_between_reads_passes_through_at_the_next_read(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    stub = make(1, watts=100.0)
    source = source_for(stub, proc, clock, counter_seconds=5.0)
    clock.advance(10.0)
    assert source.read()[0].energy_joules == pytest.approx(1000.0)
    stub.board[0].reset_counter()
    clock.advance(1.0)
    assert source.read()[0].energy_joules == pytest.approx(1100.0)  # carried: the reset is not seen yet
    clock.advance(4.0)
    assert source.read()[0].energy_joules == pytest.approx(500.0)  # the counter itself: the sampler sees it
    clock.advance(1.0)
    assert source.read()[0].energy_joules == pytest.approx(600.0)


def test_without_the_averaged_power_field_the_counter_is_read_every_time(
    make: Make, proc: Proc, clock: FakeClock
) -> None:
    stub = make([FakeGpu(0, 200.0, power_average_field=False)])
    source = source_for(stub, proc, clock, counter_seconds=5.0)
    source.read()
    stub.reset_counts()
    for _ in range(4):
        clock.advance(1.0)
        source.read()
    assert stub.calls[ENERGY_FIELD] == 4


# # -- pieces ---------------------------------------------------------------------------------------------


def test_field_values_are_read_by_their_value_type() -> None:
    value = pynvml.c_nvmlFieldValue_t()
    value.valueType = pynvml.NVML_VALUE_TYPE_DOUBLE
    value.value.dVal = 1234.5
    assert _field_number(value) == 1234.5
    value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    value.value.ullVal = 250_000
    assert _field_number(value) == 250_000.0


def test_the_drop_in_module_serves_pynvml_over_its_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module tests/fakes/exporter.py hands to a whole exporter: a module, not pynvml, is injected."""
    me = os.getpid()
    monkeypatch.setenv(fake_nvml.ENV, f'{{"gpus": 2, "watts": [300, 150], "processes": [{{"gpu": 1, "pid": {me}}}]}}')
    try:
        fake_nvml.reset()
        source = NvmlSource(fake_nvml)
        r = by_index(source.read())
        assert sorted(r) == [0, 1] and r[1].processes[0].pid == me
        assert fake_nvml.stub().calls["nvmlInitWithFlags"] == 1
        with pytest.raises(ValueError, match="watts must be a number or a list of 2"):
            fake_nvml.configure_from_env({fake_nvml.ENV: '{"gpus": 2, "watts": [1, 2, 3]}'})
    finally:
        fake_nvml.reset()


def test_a_config_that_still_names_nvml_module_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """A fake NVML reaches the exporter through its constructors only; the old dotted-name key is an error."""
    from carbonwatch.errors import ConfigError
    from carbonwatch.node.config import ExporterConfig, apply_mapping

    with pytest.raises(ConfigError, match=r"^gpu.nvml_module: no longer a setting.*remove the key"):
        apply_mapping(ExporterConfig(), {"gpu": {"nvml_module": "tests.fakes.fake_nvml"}})

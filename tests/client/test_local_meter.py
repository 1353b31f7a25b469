"""The run client's local meter and its GPU attribution across PID namespaces: the real sampler, the real
/proc of this test process, and the real pynvml over the NVML C-library stub."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pynvml
import pytest

from carbonwatch.client.local_meter import LocalMeter, board_share, visible_devices
from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.model import GpuReading
from carbonwatch.node.sampler import Sources
from carbonwatch.node.sources import pidns
from carbonwatch.node.sources.nvml import NvmlSource
from carbonwatch.node.sources.procs import ProcScanner
from tests.fakes.nvml_stub import FakeClock, FakeGpu, FakeMigDevice, FakeProcess, NvmlStub

ME = os.getpid()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def gpu_only() -> ExporterConfig:
    cfg = ExporterConfig()
    cfg.collectors = dict(cfg.collectors, cpu=False, memory=False)
    return cfg


def measure(meter: LocalMeter, clock: FakeClock, seconds: float) -> dict[str, float]:
    meter.sampler.sample_once()  # baseline
    clock.advance(seconds)
    time.sleep(0.01)  # the sampler's own clock must move too
    meter.sampler.sample_once()
    return meter.totals().energy_joules


@pytest.fixture
def stub_two_gpus(clock: FakeClock) -> Iterator[NvmlStub]:
    with NvmlStub([FakeGpu(0, 300.0, processes=[FakeProcess(ME, sm_util=75), FakeProcess(1, sm_util=25)]),
                   FakeGpu(1, 200.0)], clock=clock) as stub:
        yield stub
        assert stub.callback_errors == []


def meter_for(stub: NvmlStub, clock: FakeClock, view: pidns.PidView, environ: dict[str, str] | None = None,
              root_pid: int = ME) -> LocalMeter:
    source = NvmlSource(pynvml, proc_root="/proc", host_pids=view.host_pids, clock=clock, wall=stub.wall)
    return LocalMeter("run-1", root_pid, config=gpu_only(), sources=Sources(procs=ProcScanner("/proc"), nvml=source),
                      pid_view=view, environ=environ or {})


def test_cuda_visible_devices_is_read_as_cuda_reads_it() -> None:
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 0"}) == ("2", "0")
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-8a1b,MIG-77c"}) == ("GPU-8a1b", "MIG-77c")
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,nope,1"}) == ("0",)  # CUDA stops at the first bad entry


def test_board_share_of_a_visible_gpu() -> None:
    board = GpuReading(0, "GPU-aaaa-1", "H100", 300.0, 1.0, None)
    assert board_share(board, None) == 1.0
    assert board_share(board, ("0",)) == board_share(board, ("GPU-aaaa",)) == 1.0
    assert board_share(board, ("1",)) == 0.0
    mig = GpuReading(0, "GPU-bbbb", "H100", 300.0, 1.0, None, mig_shares=(("MIG-one", 3 / 7), ("MIG-two", 1 / 7)))
    assert board_share(mig, None) == pytest.approx(4 / 7)  # a container sees only its own MIG devices
    assert board_share(mig, ("MIG-two",)) == pytest.approx(1 / 7)
    assert board_share(mig, ("MIG-nine",)) == 0.0


def test_in_the_host_namespace_the_run_pays_its_processes_share(stub_two_gpus: NvmlStub, clock: FakeClock) -> None:
    meter = meter_for(stub_two_gpus, clock, pidns.PidView(pidns.HOST, ME, "test"))
    assert meter.gpu_attribution == "host"
    energy = measure(meter, clock, 10.0)
    assert energy["gpu"] == pytest.approx(0.75 * 3000.0)  # 75 % of GPU 0's SM time; GPU 1 has no process of ours


def test_own_namespace_with_a_host_proc_maps_the_root_through_nspid(stub_two_gpus: NvmlStub, clock: FakeClock) -> None:
    # the run's root is pid 7 in its own namespace; the host numbers it as this test process
    meter = meter_for(stub_two_gpus, clock, pidns.PidView(pidns.NSPID, ME, "test"), root_pid=7)
    assert (meter.gpu_attribution, meter.root_proc_pid) == ("nspid", ME)
    assert measure(meter, clock, 10.0)["gpu"] == pytest.approx(0.75 * 3000.0)


def test_in_a_container_the_run_pays_for_the_gpus_it_sees(stub_two_gpus: NvmlStub, clock: FakeClock) -> None:
    view = pidns.PidView(pidns.VISIBLE_GPUS, ME, "own PID namespace with its own /proc")
    meter = meter_for(stub_two_gpus, clock, view, environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert meter.gpu_attribution == "visible_gpus"
    assert measure(meter, clock, 10.0)["gpu"] == pytest.approx(2000.0)  # all of GPU 1, nothing of GPU 0
    calls = stub_two_gpus.calls
    assert calls["nvmlDeviceGetComputeRunningProcesses_v3"] == calls["nvmlDeviceGetProcessUtilization"] == 0
    everything = meter_for(stub_two_gpus, clock, view)  # CUDA_VISIBLE_DEVICES unset: every GPU of the container
    assert measure(everything, clock, 10.0)["gpu"] == pytest.approx(5000.0)


def test_a_container_on_a_mig_device_pays_its_instances_share(clock: FakeClock) -> None:
    board = FakeGpu(0, 700.0, mig=[FakeMigDevice(1, 3), FakeMigDevice(2, 4)])
    with NvmlStub([board], clock=clock) as stub:
        mine = board.mig[0].uuid if board.mig else ""
        view = pidns.PidView(pidns.VISIBLE_GPUS, ME, "test")
        meter = meter_for(stub, clock, view, environ={"CUDA_VISIBLE_DEVICES": mine})
        assert measure(meter, clock, 10.0)["gpu"] == pytest.approx(7000.0 * 3 / 7)
        assert stub.callback_errors == []

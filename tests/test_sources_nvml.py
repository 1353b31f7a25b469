"""NvmlSource against the fake NVML (tests/fakes/fake_nvml.py), and against the real pynvml where it can."""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from carbonwatch.model import GpuReading, SourceError
from carbonwatch.sources.nvml import NvmlSource, _field_number
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import (
    FakeClock,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    bursty,
    configure_from_env,
    make_fake_nvml,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def restore_default() -> Iterator[None]:
    saved = fake_nvml._default
    try:
        yield
    finally:
        fake_nvml._default = saved


def by_index(readings: list[GpuReading]) -> dict[int, GpuReading]:
    return {r.index: r for r in readings}


def test_reads_every_gpu_with_counter_energy_and_averaged_power(clock: FakeClock) -> None:
    # 1 s period, 300 W for 0.3 s then 100 W: the 1 s average is 160 W, instant power is 100 or 300 W.
    nvml = make_fake_nvml(gpus=3, clock=clock, watts=bursty(100.0, 300.0, period=1.0, duty=0.3))
    source = NvmlSource(nvml)
    clock.advance(15.0)
    readings = source.read()
    assert [r.index for r in readings] == [0, 1, 2]
    assert len({r.uuid for r in readings}) == 3
    assert all(r.name == "NVIDIA H100 80GB HBM3" for r in readings)
    for r in readings:
        assert r.energy_joules == pytest.approx(15 * 160.0)  # mJ counter, in joules
        assert r.power_watts == pytest.approx(160.0)
    assert source.last_errors == []


def test_the_counter_is_exact_where_sampled_instant_power_is_not(clock: FakeClock) -> None:
    """Why the counter is the truth: on a bursty load, instant power sampled every 15 s and integrated
    misses badly; the averaged power is far better; the counter is exact."""
    nvml = make_fake_nvml(gpus=1, clock=clock, watts=bursty(60.0, 700.0, period=2.0, duty=0.25))
    nvml.gpus[0].power_average_field = False  # read instant power through the fields
    instant = NvmlSource(nvml)
    first = instant.read()[0]
    integrated_instant = 0.0
    for _ in range(40):  # 10 minutes, scraped every 15 s
        clock.advance(15.0)
        integrated_instant += (instant.read()[0].power_watts or 0.0) * 15.0
    last = instant.read()[0]
    truth = nvml.gpus[0].true_energy_joules
    assert last.energy_joules is not None and first.energy_joules is not None
    assert last.energy_joules - first.energy_joules == pytest.approx(truth, rel=1e-6)
    assert abs(integrated_instant / truth - 1) > 0.5  # every sample fell in the same phase of the burst


def test_falls_back_to_instant_field_then_to_power_usage(clock: FakeClock) -> None:
    gpus = [
        FakeGpu(0, 200.0, power_average_field=False),  # A100-like: no averaged field
        FakeGpu(1, 250.0, field_values=False),  # old driver: no field values at all
        FakeGpu(2, 90.0, field_values=False, power_usage=False),  # no power reading at all
    ]
    nvml = make_fake_nvml(gpus, clock=clock)
    source = NvmlSource(nvml)
    clock.advance(1.0)
    r = by_index(source.read())
    assert r[0].power_watts == pytest.approx(200.0)
    assert r[1].power_watts == pytest.approx(250.0)
    assert r[2].power_watts is None
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 2  # GPUs 1 and 2, once each
    clock.advance(1.0)
    source.read()
    # What each GPU supports is remembered: no more field-values calls for 1 and 2, none at all for 2.
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 3 + 1
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 2 + 1


def test_gpu_without_energy_counter_reports_none_and_is_not_asked_again(clock: FakeClock) -> None:
    nvml = make_fake_nvml([FakeGpu(0, 150.0, name="Tesla K80", energy_counter=False)], clock=clock)
    source = NvmlSource(nvml)
    clock.advance(2.0)
    reading = source.read()[0]
    assert reading.energy_joules is None
    assert reading.power_watts == pytest.approx(150.0)
    source.read()
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1


def test_processes_merge_lists_and_per_process_utilisation(clock: FakeClock) -> None:
    gpu = FakeGpu(
        0,
        300.0,
        processes=[
            FakeProcess(pid=100, sm_util=60, mem_util=30, used_memory=8 << 30),
            FakeProcess(pid=200, sm_util=0, mem_util=0, used_memory=None),  # listed, idle
            FakeProcess(pid=300, sm_util=25, mem_util=5, kind="both"),  # compute and graphics
            FakeProcess(pid=400, sm_util=10, mem_util=1, kind="graphics"),
        ],
    )
    nvml = make_fake_nvml([gpu], clock=clock)
    source = NvmlSource(nvml)
    clock.advance(1.0)
    reading = source.read()[0]
    procs = {p.pid: p for p in reading.processes}
    assert sorted(procs) == [100, 200, 300, 400]
    assert (procs[100].sm_util, procs[100].mem_util, procs[100].used_memory_bytes) == (60.0, 30.0, 8 << 30)
    assert (procs[200].sm_util, procs[200].used_memory_bytes) == (0.0, None)
    assert procs[300].sm_util == 25.0
    assert procs[400].sm_util == 10.0
    assert reading.utilization_ratio == pytest.approx(0.95)


def test_process_samples_are_read_since_the_last_one_seen(clock: FakeClock) -> None:
    nvml = make_fake_nvml([FakeGpu(0, 300.0, processes=[FakeProcess(pid=7, sm_util=70)])], clock=clock)
    source = NvmlSource(nvml)
    clock.advance(1.0)
    assert source.read()[0].processes[0].sm_util == 70.0
    # Same instant: NVML has no newer sample (NOT_FOUND), so the process had no measured use since.
    assert source.read()[0].processes[0].sm_util == 0.0
    clock.advance(0.5)
    assert source.read()[0].processes[0].sm_util == 70.0


def test_without_per_process_utilisation_the_figures_are_unknown(clock: FakeClock) -> None:
    gpu = FakeGpu(0, 300.0, process_utilization=False, processes=[FakeProcess(pid=7, sm_util=70)])
    source = NvmlSource(make_fake_nvml([gpu], clock=clock))
    clock.advance(1.0)
    proc = source.read()[0].processes[0]
    assert (proc.pid, proc.sm_util, proc.mem_util) == (7, None, None)


def test_a_lost_gpu_is_left_out_and_reported_while_the_others_read(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=3, clock=clock, watts=200.0)
    source = NvmlSource(nvml)
    source.read()
    nvml.gpus[1].lose()
    clock.advance(5.0)
    readings = source.read()
    assert [r.index for r in readings] == [0, 2]
    assert len(source.last_errors) == 1
    assert "GPU 1" in source.last_errors[0] and nvml.gpus[1].uuid in source.last_errors[0]
    assert "GPU is lost" in source.last_errors[0]
    # Still lost on the next read (the handle is fetched again and fails again).
    assert [r.index for r in source.read()] == [0, 2]
    assert "GPU is lost" in source.last_errors[0]
    nvml.gpus[1].recover()
    clock.advance(5.0)
    back = by_index(source.read())
    assert sorted(back) == [0, 1, 2]
    assert source.last_errors == []
    assert back[1].energy_joules == pytest.approx(10 * 200.0)  # the raw counter went on


def test_a_transient_error_drops_the_gpu_once_and_refetches_its_handle(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=2, clock=clock)
    source = NvmlSource(nvml)
    source.read()
    nvml.inject_error("nvmlDeviceGetTotalEnergyConsumption", pynvml.NVML_ERROR_UNKNOWN, gpu=0)
    assert [r.index for r in source.read()] == [1]
    assert "Unknown Error" in source.last_errors[0]
    handles_before = nvml.calls["nvmlDeviceGetHandleByIndex"]
    assert [r.index for r in source.read()] == [0, 1]
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == handles_before + 1


def test_counter_reset_is_reported_raw(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=1, clock=clock, watts=100.0)
    source = NvmlSource(nvml)
    clock.advance(10.0)
    assert source.read()[0].energy_joules == pytest.approx(1000.0)
    nvml.gpus[0].reset_counter()
    clock.advance(1.0)
    assert source.read()[0].energy_joules == pytest.approx(100.0)  # the sampler sees the reset


def test_driver_reload_fails_one_read_then_nvml_is_initialised_again(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=2, clock=clock, watts=100.0)
    source = NvmlSource(nvml)
    clock.advance(10.0)
    source.read()
    nvml.driver_reload()
    with pytest.raises(SourceError, match="Uninitialized"):
        source.read()
    clock.advance(2.0)
    readings = source.read()
    assert [r.energy_joules for r in readings] == pytest.approx([200.0, 200.0])
    assert nvml.calls["nvmlInitWithFlags"] == 2


def test_init_failure_is_a_source_error_and_is_retried(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=1, clock=clock, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    source = NvmlSource(nvml)
    with pytest.raises(SourceError, match="NVML initialisation failed: Driver Not Loaded"):
        source.read()
    nvml.init_error = None
    assert len(source.read()) == 1


def test_missing_pynvml_is_a_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(SourceError, match="nvidia-ml-py"):
        NvmlSource().read()


def test_real_pynvml_on_this_node() -> None:
    """The real module: without an NVIDIA driver its failure must surface as a SourceError."""
    source = NvmlSource()
    try:
        readings = source.read()
    except SourceError as exc:
        assert "NVML initialisation failed" in str(exc)
    else:
        assert all(isinstance(r, GpuReading) and r.uuid for r in readings)
    finally:
        source.close()


def test_steady_state_reads_are_cheap_for_eight_gpus(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=8, clock=clock)
    source = NvmlSource(nvml)
    source.read()
    nvml.calls.clear()
    nvml.cost_seconds = 0.0
    clock.advance(15.0)
    source.read()
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 0
    assert nvml.calls["nvmlDeviceGetUUID"] == nvml.calls["nvmlDeviceGetName"] == 0
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 0
    assert sum(nvml.calls.values()) == 1 + 8 * 6
    assert nvml.cost_seconds == pytest.approx(8 * 0.12e-3)  # vs 28 ms with nvmlDeviceGetPowerUsage


def test_bytes_names_from_older_pynvml_are_decoded(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=1, clock=clock)
    nvml.nvmlDeviceGetName = lambda handle: b"Tesla V100-SXM2-16GB"  # type: ignore[method-assign,assignment,return-value]
    assert NvmlSource(nvml).read()[0].name == "Tesla V100-SXM2-16GB"


def test_field_values_are_read_by_their_value_type() -> None:
    value = pynvml.c_nvmlFieldValue_t()
    value.valueType = pynvml.NVML_VALUE_TYPE_DOUBLE
    value.value.dVal = 1234.5
    assert _field_number(value) == 1234.5
    value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    value.value.ullVal = 250_000
    assert _field_number(value) == 250_000.0


def test_close_shuts_nvml_down(clock: FakeClock) -> None:
    nvml = make_fake_nvml(gpus=1, clock=clock)
    source = NvmlSource(nvml)
    source.read()
    source.close()
    assert nvml.refcount == 0
    source.read()  # and it can start again
    assert nvml.refcount == 1


# -- the fake itself --------------------------------------------------------------------------------


def test_fake_functions_have_pynvml_names_and_parameters() -> None:
    names = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    assert len(names) >= 14
    for name in names:
        real = getattr(pynvml, name)
        real_params = list(inspect.signature(real).parameters)
        assert list(inspect.signature(getattr(FakeNvml, name)).parameters)[1:] == real_params, name
        assert list(inspect.signature(getattr(fake_nvml, name)).parameters) == real_params, name
    assert fake_nvml.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert isinstance(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND), fake_nvml.NVMLError_NotFound)


def test_module_level_api_uses_the_configured_simulator(clock: FakeClock, restore_default: None) -> None:
    sim = fake_nvml.configure(gpus=3, clock=clock, watts=50.0)
    source = NvmlSource(fake_nvml)
    clock.advance(4.0)
    readings = source.read()
    assert [r.energy_joules for r in readings] == pytest.approx([200.0] * 3)
    assert sim.calls["nvmlDeviceGetCount"] == 1


def test_environment_spec_and_processes_file(tmp_path: Path, restore_default: None) -> None:
    procs = tmp_path / "procs.json"
    procs.write_text(json.dumps([{"gpu": 1, "pid": 4242, "sm_util": 90}]))
    spec = {"gpus": 2, "watts": [300, 150], "processes": [{"gpu": 0, "pid": 1, "sm_util": 5}],
            "processes_file": str(procs)}
    sim = configure_from_env({"CARBONWATCH_FAKE_NVML": json.dumps(spec)})
    source = NvmlSource(fake_nvml)
    r = by_index(source.read())
    assert [g._constant for g in sim.gpus] == [300.0, 150.0]
    assert [p.pid for p in r[0].processes] == [1]
    assert [p.pid for p in r[1].processes] == [4242]
    procs.write_text(json.dumps([{"gpu": 1, "pid": 5151, "sm_util": 40}]))
    os.utime(procs, (1, 1))  # a different mtime, whatever the file system's granularity
    r = by_index(source.read())
    assert [p.pid for p in r[1].processes] == [5151]
    assert [p.pid for p in r[0].processes] == [1]


def test_environment_spec_defaults_and_errors(restore_default: None) -> None:
    sim = configure_from_env({"CARBONWATCH_FAKE_NVML": json.dumps({"gpus": 3, "bursty": [50, 400], "period": 4})})
    assert len(sim.gpus) == 3
    profile = sim.gpus[0]._profile
    assert profile is not None and (profile(0.5), profile(3.0)) == (400.0, 50.0)
    assert configure_from_env({"CARBONWATCH_FAKE_NVML": '{"gpus": 2, "watts": 75}'}).gpus[1]._constant == 75.0
    with pytest.raises(ValueError, match="one per GPU"):
        configure_from_env({"CARBONWATCH_FAKE_NVML": '{"gpus": 2, "watts": [1, 2, 3]}'})


def test_default_module_simulator_runs_on_real_time(
    restore_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARBONWATCH_FAKE_NVML", raising=False)
    fake_nvml._default = None
    readings = NvmlSource(fake_nvml).read()
    assert len(readings) == 2 and readings[0].energy_joules is not None

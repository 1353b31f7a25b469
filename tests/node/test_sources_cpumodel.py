"""CpuPowerModel: table matching, load curve, per-vCPU fallback and overrides, on fake /proc/cpuinfo files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from carbonwatch.errors import ConfigError
from carbonwatch.node.sources.cpumodel import (
    CCF_PER_VCPU,
    CpuPowerModel,
    load_fraction,
    load_tdp_table,
    match_tdp,
    normalise,
)

SHARED_TABLE = Path("/work/shared/data/cpu_tdp_watts.csv")
PACKAGED_TABLE = Path(__file__).resolve().parents[2] / "exporter" / "carbonwatch" / "data" / "cpu_tdp_watts.csv"


def fake_proc(tmp_path: Path, model: str | None, cpus: int = 4, sockets: int = 1) -> str:
    """A /proc with a cpuinfo shaped like x86 Linux's: one block per logical CPU."""
    blocks = []
    for i in range(cpus):
        lines = [f"processor\t: {i}", "vendor_id\t: GenuineIntel", "cpu family\t: 6"]
        if model is not None:
            lines.append(f"model name\t: {model}")
        lines += [f"physical id\t: {i % sockets}", f"siblings\t: {cpus // sockets}", "flags\t\t: fpu vme de"]
        blocks.append("\n".join(lines))
    (tmp_path / "cpuinfo").write_text("\n\n".join(blocks) + "\n")
    return str(tmp_path)


def table_watts(name: str) -> float:
    with PACKAGED_TABLE.open() as fh:
        return next(float(r["TDP"]) for r in csv.DictReader(fh) if r["Name"] == name)


@pytest.mark.parametrize(
    ("cpuinfo_name", "table_name"),
    [
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248"),
        ("Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz", "Intel Xeon Gold 6248R"),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763"),
        ("AMD EPYC 9654P 96-Core Processor", "AMD EPYC 9654P"),
        ("Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz", "Intel Core i7-8550U"),
        ("Intel(R) Xeon(R) Platinum 8480+", "Intel Xeon Platinum 8480+"),
        ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "Intel Xeon E5-2686 v4"),
    ],
)
def test_cpuinfo_model_names_match_the_longest_table_name(cpuinfo_name: str, table_name: str) -> None:
    entry = match_tdp(cpuinfo_name)
    assert entry is not None
    assert entry.name == table_name
    assert entry.watts == table_watts(table_name)


@pytest.mark.parametrize(
    "generic", ["AMD EPYC", "Intel Xeon Processor (Cascadelake)", "Intel(R) Xeon(R) CPU @ 2.20GHz"]
)
def test_generic_vm_model_names_match_nothing(generic: str) -> None:
    assert match_tdp(generic) is None


def test_matching_is_token_aligned() -> None:
    assert normalise("Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz") == "intel xeon gold 6248r"
    entry = match_tdp("Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz")
    assert entry is not None and entry.watts != table_watts("Intel Xeon Gold 6248")


def test_packaged_table_is_the_shared_reference_data() -> None:
    if not SHARED_TABLE.exists():
        pytest.skip("shared reference data not present")
    assert PACKAGED_TABLE.read_bytes() == SHARED_TABLE.read_bytes()
    assert len(load_tdp_table()) > 4800


def test_load_curve_points_and_interpolation() -> None:
    assert [load_fraction(u) for u in (0.0, 0.10, 0.50, 1.00)] == pytest.approx([0.12, 0.32, 0.75, 1.02])
    assert load_fraction(0.05) == pytest.approx(0.22)
    assert load_fraction(0.30) == pytest.approx(0.535)
    assert load_fraction(0.75) == pytest.approx(0.885)


def test_tdp_model_scales_with_sockets_and_follows_the_curve(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", cpus=80, sockets=2)
    model = CpuPowerModel(proc)
    assert model.method == "tdp"
    assert model.cpu_model == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    assert model.description == "tdp:Intel Xeon Gold 6248 150W x 2"
    assert model.power_watts(0.0) == pytest.approx(2 * 150 * 0.12)
    assert model.power_watts(0.5) == pytest.approx(2 * 150 * 0.75)
    assert model.power_watts(1.0) == pytest.approx(2 * 150 * 1.02)
    assert model.power_watts(1.7) == model.power_watts(1.0)  # clamped
    assert model.power_watts(-0.1) == model.power_watts(0.0)
    with pytest.raises(ValueError):
        model.power_watts(float("nan"))


def test_unknown_cpu_falls_back_to_ccf_per_vcpu(tmp_path: Path) -> None:
    model = CpuPowerModel(fake_proc(tmp_path, "AMD EPYC", cpus=2))
    assert model.method == "per-vcpu"
    assert model.description == "ccf-per-vcpu:0.74-3.5W x 2"
    assert model.power_watts(0.0) == pytest.approx(2 * 0.74)
    assert model.power_watts(0.5) == pytest.approx(2 * (0.74 + 0.5 * (3.5 - 0.74)))
    assert model.power_watts(1.0) == pytest.approx(2 * 3.5)


def test_ccf_provider_selects_its_coefficients(tmp_path: Path) -> None:
    model = CpuPowerModel(fake_proc(tmp_path, "Intel Xeon Processor (Icelake)", cpus=8), ccf_provider="gcp")
    low, high = CCF_PER_VCPU["gcp"]
    assert model.power_watts(1.0) == pytest.approx(8 * high)
    assert model.power_watts(0.0) == pytest.approx(8 * low)


def test_cpuinfo_without_model_name_uses_per_vcpu(tmp_path: Path) -> None:
    model = CpuPowerModel(fake_proc(tmp_path, None, cpus=16))
    assert model.cpu_model == "unknown"
    assert model.cpus == 16
    assert model.method == "per-vcpu"


def test_tdp_override_wins_over_the_table(tmp_path: Path) -> None:
    model = CpuPowerModel(fake_proc(tmp_path, "AMD EPYC 7763 64-Core Processor", sockets=1), tdp_watts=200)
    assert model.description == "tdp:override 200W"
    assert model.power_watts(0.5) == pytest.approx(150.0)


def test_per_cpu_override(tmp_path: Path) -> None:
    model = CpuPowerModel(
        fake_proc(tmp_path, "AMD EPYC 7763 64-Core Processor", cpus=4), min_watts_per_cpu=1, max_watts_per_cpu=5
    )
    assert model.description == "per-vcpu-override:1-5W x 4"
    assert model.power_watts(0.25) == pytest.approx(4 * 2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tdp_watts": 0}, "cpu.tdp_watts"),
        ({"tdp_watts": float("inf")}, "cpu.tdp_watts"),
        ({"tdp_watts": "150"}, "cpu.tdp_watts"),
        ({"min_watts_per_cpu": 1.0}, "give both"),
        ({"min_watts_per_cpu": 5.0, "max_watts_per_cpu": 1.0}, "is above"),
        ({"tdp_watts": 100, "min_watts_per_cpu": 1.0, "max_watts_per_cpu": 2.0}, "not both"),
        ({"ccf_provider": "oracle"}, "cpu.ccf_provider"),
        ({"sockets": 0}, "cpu.sockets"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CpuPowerModel(fake_proc(tmp_path, "AMD EPYC"), **kwargs)  # type: ignore[arg-type]

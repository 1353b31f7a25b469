"""MemoryPowerModel on fake /proc/meminfo files."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonwatch.errors import ConfigError
from carbonwatch.node.model import SourceError
from carbonwatch.node.sources.memory import MemoryPowerModel


def fake_meminfo(tmp_path: Path, mem_total_kb: int) -> str:
    (tmp_path / "meminfo").write_text(
        f"MemTotal:       {mem_total_kb} kB\nMemFree:        1024 kB\nMemAvailable:   2048 kB\n"
    )
    return str(tmp_path)


def test_power_is_installed_gib_times_ccf_coefficient(tmp_path: Path) -> None:
    model = MemoryPowerModel(proc_root=fake_meminfo(tmp_path, 64 * 1024 * 1024))  # 64 GiB
    assert model.total_bytes == 64 << 30
    assert model.power_watts() == pytest.approx(64 * 0.392)
    assert model.description == "ccf:0.392W/GB x 64.0GB"


def test_watts_per_gb_override(tmp_path: Path) -> None:
    model = MemoryPowerModel(0.5, proc_root=fake_meminfo(tmp_path, 512 * 1024 * 1024))
    assert model.power_watts() == pytest.approx(256.0)
    assert model.description.startswith("override:0.5W/GB")


def test_total_bytes_override_skips_meminfo(tmp_path: Path) -> None:
    model = MemoryPowerModel(proc_root=str(tmp_path / "absent"), total_bytes=8 << 30)
    assert model.power_watts() == pytest.approx(8 * 0.392)


def test_real_proc_meminfo_gives_a_plausible_figure() -> None:
    with open("/proc/meminfo") as fh:
        kb = int(fh.readline().split()[1])
    assert MemoryPowerModel().power_watts() == pytest.approx(kb / (1 << 20) * 0.392)


def test_missing_meminfo_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="meminfo"):
        MemoryPowerModel(proc_root=str(tmp_path))


def test_meminfo_without_memtotal_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemFree: 1 kB\n")
    with pytest.raises(SourceError, match="no MemTotal"):
        MemoryPowerModel(proc_root=str(tmp_path))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "0.4", True])
def test_bad_coefficient_names_the_key(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="memory.watts_per_gb"):
        MemoryPowerModel(bad, proc_root=fake_meminfo(tmp_path, 1024))  # type: ignore[arg-type]

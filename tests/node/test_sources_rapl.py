"""RaplSource against faithful fake powercap trees (tests/fakes/powercap.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.node.model import SourceError
from carbonwatch.node.sources.rapl import RaplReading, RaplSource
from tests.fakes.powercap import FakePowercap

REPO = Path(__file__).resolve().parents[2]


def energies(reading: RaplReading) -> dict[str, float]:
    return {p.key: p.energy_joules or 0.0 for p in reading.packages}


def test_first_read_is_zero_then_package_and_dram_energy_without_subzones_or_mmio(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=1, core=True, uncore=True, dram=True, mmio=True, psys=True)
    tree.advance(3.0, package_watts=50.0, dram_watts=5.0)  # before the source exists: not counted
    source = RaplSource(str(tree.root))
    first = source.read()
    assert energies(first) == {"0": 0.0}
    assert first.dram is not None and first.dram.energy_joules == 0.0

    tree.advance(10.0, package_watts=100.0, dram_watts=8.0)
    reading = source.read()
    # core (60 %), uncore (10 %), the MMIO copy of package 0 and psys all moved too: none may be added.
    assert energies(reading) == pytest.approx({"0": 1000.0})
    assert reading.dram is not None
    assert reading.dram.energy_joules == pytest.approx(80.0)
    assert reading.dram.key == ""
    assert {p.source for p in reading.packages} | {reading.dram.source} == {"rapl"}


def test_two_sockets_report_one_package_each_and_dram_summed(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=2)
    source = RaplSource(str(tree.root))
    source.read()
    tree.advance(5.0, package_watts={0: 120.0, 1: 80.0}, dram_watts={0: 6.0, 1: 4.0})
    reading = source.read()
    assert [p.key for p in reading.packages] == ["0", "1"]
    assert energies(reading) == pytest.approx({"0": 600.0, "1": 400.0})
    assert reading.dram is not None and reading.dram.energy_joules == pytest.approx(50.0)


def test_multi_die_packages_are_summed_per_package(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=2, dies=2)
    source = RaplSource(str(tree.root))
    source.read()
    tree.advance(2.0, package_watts={0: 100.0, 1: 200.0})
    assert energies(source.read()) == pytest.approx({"0": 200.0, "1": 400.0})


def test_without_dram_zones_dram_is_none(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, dram=False)
    source = RaplSource(str(tree.root))
    source.read()
    tree.advance(1.0, package_watts=40.0)
    reading = source.read()
    assert reading.dram is None
    assert energies(reading) == pytest.approx({"0": 40.0})


def test_wrap_around_is_corrected_with_max_energy_range(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=1, dram=True)
    tree.near_wrap("intel-rapl:0", headroom_uj=30_000_000)  # 30 J below the top
    tree.near_wrap(tree.dram_zones[0], headroom_uj=1_000_000)
    source = RaplSource(str(tree.root))
    source.read()
    tree.advance(1.0, package_watts=100.0, dram_watts=10.0)  # 100 J: wraps
    assert tree.energy_uj("intel-rapl:0") == 70_000_000  # the raw counter did wrap
    reading = source.read()
    assert energies(reading) == pytest.approx({"0": 100.0})
    assert reading.dram is not None and reading.dram.energy_joules == pytest.approx(10.0)


def test_energy_is_monotonic_across_many_wraps(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, max_range_uj=1_000_000_000)  # 1 kJ range: wraps every 5 s at 200 W
    source = RaplSource(str(tree.root))
    source.read()
    previous = 0.0
    for _ in range(20):
        tree.advance(3.0, package_watts=200.0)
        now = energies(source.read())["0"]
        assert now > previous
        previous = now
    assert previous == pytest.approx(20 * 3.0 * 200.0)


def test_missing_tree_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        RaplSource(str(tmp_path / "nowhere")).read()
    assert not RaplSource.available(str(tmp_path / "nowhere"))


def test_tree_with_only_psys_and_mmio_has_no_packages(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=1, psys=True, mmio=True)
    shutil.rmtree(tree.devices / "intel-rapl" / "intel-rapl:0")
    os.unlink(tree.root / "intel-rapl:0")
    for sub in ("intel-rapl:0:0", "intel-rapl:0:1", "intel-rapl:0:2"):
        os.unlink(tree.root / sub)
    with pytest.raises(SourceError, match="no intel-rapl package zones"):
        RaplSource(str(tree.root)).read()


def test_available_on_a_readable_tree(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    assert RaplSource.available(str(tree.root))


def test_a_failed_read_loses_no_energy(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    source = RaplSource(str(tree.root))
    source.read()
    tree.advance(1.0, package_watts=100.0)
    assert energies(source.read()) == pytest.approx({"0": 100.0})

    energy_file = tree.devices / "intel-rapl" / "intel-rapl:0" / "energy_uj"
    saved = energy_file.read_text()
    energy_file.unlink()
    energy_file.mkdir()  # not a readable file any more (EISDIR from the real open())
    with pytest.raises(SourceError, match="intel-rapl:0/energy_uj"):
        source.read()
    energy_file.rmdir()
    energy_file.write_text(saved)
    tree.advance(2.0, package_watts=100.0, dram_watts=0.0)  # the energy used while unreadable still counts
    assert energies(source.read()) == pytest.approx({"0": 300.0})


# -- EACCES: the kernel's real permission check on open() --------------------------------------------

READER = """
import sys
from carbonwatch.node.model import SourceError
from carbonwatch.node.sources.rapl import RaplSource
try:
    r = RaplSource(sys.argv[1]).read()
except SourceError as exc:
    print("ERROR", exc)
else:
    print("OK", [p.energy_joules for p in r.packages])
"""

# Root reads any file whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH). Tests usually run as root,
# so the reader runs in a child without those two capabilities: a mode-000 energy_uj then fails with EACCES
# in the real open(), exactly as a root-only (0400) energy_uj does for an unprivileged exporter.
DROP_DAC = "-dac_override,-dac_read_search"


def read_in_child(root: Path) -> str:
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and util-linux setpriv is missing: cannot drop CAP_DAC_OVERRIDE")
        prefix = [setpriv, f"--inh-caps={DROP_DAC}", f"--bounding-set={DROP_DAC}"]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "exporter")}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", READER, str(root)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_unreadable_energy_uj_gives_a_permission_error_naming_the_fix(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=2)
    tree.make_unreadable("intel-rapl:1")
    out = read_in_child(tree.root)
    assert out.startswith("ERROR"), out
    assert "intel-rapl:1/energy_uj: permission denied" in out
    assert "root" in out and "CVE-2020-8694" in out


@pytest.mark.slow
def test_the_same_child_reads_the_tree_when_energy_uj_is_readable(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path, sockets=2)
    tree.advance(1.0, package_watts=10.0)
    assert read_in_child(tree.root) == "OK [0.0, 0.0]"

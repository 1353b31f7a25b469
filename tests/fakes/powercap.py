"""Faithful fake powercap sysfs trees, as the kernel's intel_rapl drivers lay them out.

Layout (under `base`, which stands for `/sys`)::

    devices/virtual/powercap/intel-rapl/                  the control type (enabled)
        intel-rapl:0/  name=package-0  energy_uj  max_energy_range_uj  enabled  constraint_0_*
            intel-rapl:0:0/  name=core        (parts of the package: never to be added to it)
            intel-rapl:0:1/  name=uncore
            intel-rapl:0:2/  name=dram        (memory of socket 0)
        intel-rapl:1/  name=package-1 ...     (second socket)
        intel-rapl:2/  name=psys              (client platforms: the whole SoC)
    devices/virtual/powercap/intel-rapl-mmio/intel-rapl-mmio:0/  name=package-0 (package 0 again, via MMIO)
    class/powercap/<every zone above>  ->  symlinks into devices/ (what RaplSource reads)

File modes are the kernel's: energy_uj 0400 (root only since Linux 5.10, CVE-2020-8694), the others 0444
(enabled 0644). `advance()` moves the counters the way the hardware does: package energy includes core and
uncore, the MMIO zone repeats package 0, psys includes everything; each counter wraps at its
`max_energy_range_uj`.

Unreadable counters: `make_unreadable(zone)` sets mode 000 on energy_uj. A non-root reader then gets
EACCES from the real open(); root ignores file modes (CAP_DAC_OVERRIDE), so tests running as root read
the tree in a child process switched to an unprivileged user (see `read_as_nobody` in the RAPL tests).
That keeps the production code path (a plain open() of energy_uj) exactly as on a real node, rather
than making the reader take an injectable opener.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_RANGE_UJ = 262_143_328_850  # a common value on Xeon servers (2^32 energy units of 61 uJ)
DRAM_MAX_RANGE_UJ = 65_712_999_613


class FakePowercap:
    def __init__(
        self,
        base: Path,
        *,
        sockets: int = 1,
        core: bool = True,
        uncore: bool = True,
        dram: bool = True,
        mmio: bool = True,
        psys: bool = False,
        dies: int = 1,
        max_range_uj: int = MAX_RANGE_UJ,
        dram_max_range_uj: int = DRAM_MAX_RANGE_UJ,
    ) -> None:
        self.base = Path(base)
        self.devices = self.base / "devices" / "virtual" / "powercap"
        self.root = self.base / "class" / "powercap"  # pass str(self.root) to RaplSource
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets = sockets
        self.dies = dies
        self._counters: dict[str, int] = {}  # zone -> energy_uj
        self._ranges: dict[str, int] = {}
        self._dirs: dict[str, Path] = {}
        rapl = self.devices / "intel-rapl"
        self._write(rapl / "enabled", "1", 0o644)
        self._link("intel-rapl", rapl)

        top = 0
        self.package_zones: dict[int, list[str]] = {}  # socket -> its package (or die) zones
        self.dram_zones: dict[int, str] = {}
        for socket in range(sockets):
            for die in range(dies):
                name = f"package-{socket}" if dies == 1 else f"package-{socket}-die-{die}"
                zone = f"intel-rapl:{top}"
                self._zone(rapl / zone, zone, name, max_range_uj)
                self.package_zones.setdefault(socket, []).append(zone)
                sub = 0
                for wanted, subname, rng in (
                    (core, "core", max_range_uj),
                    (uncore, "uncore", max_range_uj),
                    (dram and die == 0, "dram", dram_max_range_uj),
                ):
                    if wanted:
                        subzone = f"{zone}:{sub}"
                        self._zone(rapl / zone / subzone, subzone, subname, rng)
                        if subname == "dram":
                            self.dram_zones[socket] = subzone
                        sub += 1
                top += 1
        self.psys_zone: str | None = None
        if psys:
            self.psys_zone = f"intel-rapl:{top}"
            self._zone(rapl / self.psys_zone, self.psys_zone, "psys", max_range_uj)
        self.mmio_zone: str | None = None
        if mmio:
            mmio_dir = self.devices / "intel-rapl-mmio"
            self._write(mmio_dir / "enabled", "1", 0o644)
            self._link("intel-rapl-mmio", mmio_dir)
            self.mmio_zone = "intel-rapl-mmio:0"
            self._zone(mmio_dir / self.mmio_zone, self.mmio_zone, "package-0", max_range_uj)

    # -- building ------------------------------------------------------------------------------

    @staticmethod
    def _write(path: Path, text: str, mode: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        os.chmod(path, mode)

    def _link(self, name: str, target: Path) -> None:
        os.symlink(os.path.relpath(target, self.root), self.root / name)

    def _zone(self, path: Path, zone: str, name: str, max_range: int) -> None:
        self._dirs[zone] = path
        self._ranges[zone] = max_range
        self._write(path / "name", name, 0o444)
        self._write(path / "enabled", "1", 0o644)
        self._write(path / "max_energy_range_uj", str(max_range), 0o444)
        if name.startswith("package"):
            self._write(path / "constraint_0_name", "long_term", 0o444)
            self._write(path / "constraint_0_power_limit_uw", "150000000", 0o644)
        self.set_energy_uj(zone, 0)
        self._link(zone, path)

    # -- driving ---------------------------------------------------------------------------------

    def energy_uj(self, zone: str) -> int:
        return self._counters[zone]

    def set_energy_uj(self, zone: str, value: int) -> None:
        """Write a raw counter value (modulo the zone's range). Keeps the file's mode."""
        value %= self._ranges[zone]
        self._counters[zone] = value
        path = self._dirs[zone] / "energy_uj"
        mode = path.stat().st_mode & 0o777 if path.exists() and path.is_file() else 0o400
        if path.exists() and path.is_file():
            os.chmod(path, 0o600)
        path.write_text(f"{value}\n")
        os.chmod(path, mode)

    def add_uj(self, zone: str, microjoules: int) -> None:
        self.set_energy_uj(zone, self._counters[zone] + microjoules)

    def advance(
        self,
        seconds: float,
        package_watts: float | dict[int, float] = 0.0,
        dram_watts: float | dict[int, float] = 0.0,
    ) -> None:
        """`seconds` at the given power per socket (a number applies to every socket). Core gets 60 % and
        uncore 10 % of the package energy (parts of it); psys gets everything plus 20 W of platform."""
        total_uj = 0
        for socket in range(self.sockets):
            pkg = package_watts if isinstance(package_watts, float | int) else package_watts.get(socket, 0.0)
            mem = dram_watts if isinstance(dram_watts, float | int) else dram_watts.get(socket, 0.0)
            pkg_uj = round(pkg * seconds * 1e6)
            mem_uj = round(mem * seconds * 1e6)
            per_die = pkg_uj // self.dies
            for zone in self.package_zones[socket]:
                self.add_uj(zone, per_die)
                for sub, share in (("core", 0.6), ("uncore", 0.1)):
                    subzone = self._subzone(zone, sub)
                    if subzone:
                        self.add_uj(subzone, round(per_die * share))
            if socket in self.dram_zones:
                self.add_uj(self.dram_zones[socket], mem_uj)
            if socket == 0 and self.mmio_zone:
                self.add_uj(self.mmio_zone, per_die)
            total_uj += per_die * self.dies + mem_uj
        if self.psys_zone:
            self.add_uj(self.psys_zone, total_uj + round(20 * seconds * 1e6))

    def _subzone(self, zone: str, name: str) -> str | None:
        for sub, path in self._dirs.items():
            if sub.startswith(zone + ":") and (path / "name").read_text().strip() == name:
                return sub
        return None

    def near_wrap(self, zone: str, headroom_uj: int) -> None:
        """Put the counter `headroom_uj` below its range, so the next advance wraps it."""
        self.set_energy_uj(zone, self._ranges[zone] - headroom_uj)

    def make_unreadable(self, zone: str) -> None:
        """Mode 000 on energy_uj: EACCES for any reader without CAP_DAC_OVERRIDE."""
        os.chmod(self._dirs[zone] / "energy_uj", 0)

    def make_world_readable(self) -> None:
        """energy_uj 0444 everywhere (what an admin's udev rule does), so an unprivileged user may read."""
        for path in self._dirs.values():
            os.chmod(path / "energy_uj", 0o444)

    def remove_zone(self, zone: str) -> None:
        """The zone's counter file disappears (module unloaded, CPU hot-removed)."""
        (self._dirs[zone] / "energy_uj").unlink()

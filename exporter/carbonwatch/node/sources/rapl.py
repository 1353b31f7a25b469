"""CPU packages and DRAM energy from RAPL, through the kernel's powercap sysfs (`/sys/class/powercap`).

Which zones count (and why nothing is counted twice):

* `intel-rapl:N` named `package-N` (or `package-N-die-M` on multi-die parts, summed per package): the CPU.
  Their `core` (`intel-rapl:N:0`) and `uncore` subzones are parts of the package: never added.
* `intel-rapl:N:M` named `dram`: the memory attached to socket N, summed over sockets.
* `intel-rapl-mmio:*` repeats package 0 through MMIO registers, and `psys` (client platforms) covers the
  whole SoC including the package: both ignored.

`energy_uj` is a wrapping counter: it restarts at 0 after `max_energy_range_uj` (about 262 kJ on many
servers, a few minutes to tens of minutes at full load), so deltas are wrap-corrected per zone and the
energy reported is cumulative since this source's first read, monotonic. One wrap between two reads is
detected; sampling every few seconds keeps far inside one range.

Since Linux 5.10 (CVE-2020-8694, "Platypus") `energy_uj` is readable by root only.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from carbonwatch.node.model import SOURCE_RAPL, EnergyReading, SourceError

DEFAULT_ROOT = "/sys/class/powercap"

_TOP_ZONE = re.compile(r"^intel-rapl:(\d+)$")
_SUB_ZONE = re.compile(r"^intel-rapl:(\d+):(\d+)$")
_PACKAGE_NAME = re.compile(r"^package-(\d+)(?:-die-(\d+))?$")


@dataclass(frozen=True)
class RaplReading:
    packages: list[EnergyReading]  # key = package number ("0", "1", ...), source "rapl"
    dram: EnergyReading | None  # key "", summed over sockets; None without dram zones


@dataclass
class _Zone:
    path: str  # the zone directory
    kind: str  # "package" or "dram"
    package: str
    max_range_uj: int
    last_uj: int | None = None
    joules: float = 0.0


def _permission_message(path: str) -> str:
    return (
        f"RAPL: cannot read {path}: permission denied. energy_uj is readable by root only since Linux 5.10 "
        "(CVE-2020-8694): run the exporter as root, or grant its user read access to the energy_uj files "
        "(e.g. a udev rule or tmpfiles.d entry running chmod/setfacl on /sys/class/powercap/intel-rapl:*/"
        "energy_uj at boot)"
    )


def _read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except PermissionError as exc:
        raise SourceError(_permission_message(path)) from exc
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SourceError(f"RAPL: cannot read {path}: {reason}") from exc


def _read_int(path: str) -> int:
    text = _read_text(path)
    try:
        return int(text)
    except ValueError as exc:
        raise SourceError(f"RAPL: {path} holds {text!r}, not an integer") from exc


class RaplSource:
    """Reads the RAPL package and dram zones under `root` (a powercap class directory)."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root
        self._zones: list[_Zone] | None = None

    @classmethod
    def available(cls, root: str = DEFAULT_ROOT) -> bool:
        """Whether RAPL package energy can be read under `root` (tree present, package zones, readable)."""
        try:
            cls(root).read()
        except SourceError:
            return False
        return True

    def _discover(self) -> list[_Zone]:
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError as exc:
            raise SourceError(
                f"RAPL not available: {self.root} does not exist (no powercap support in this kernel, "
                "or a container without /sys)"
            ) from exc
        except PermissionError as exc:
            raise SourceError(_permission_message(self.root)) from exc
        except OSError as exc:
            raise SourceError(f"RAPL: cannot list {self.root}: {os.strerror(exc.errno or errno.EIO)}") from exc

        zones: list[_Zone] = []
        for entry in entries:
            path = os.path.join(self.root, entry)
            top = _TOP_ZONE.match(entry)
            sub = _SUB_ZONE.match(entry)
            if not (top or sub):
                continue  # intel-rapl (the control type), intel-rapl-mmio:*, other drivers
            name = _read_text(os.path.join(path, "name"))
            if top:
                package = _PACKAGE_NAME.match(name)
                if package is None:
                    continue  # psys, or something unknown: not a CPU package
                kind, key = "package", package.group(1)
            else:
                if name != "dram":
                    continue  # core, uncore: inside the package already
                assert sub is not None
                kind, key = "dram", sub.group(1)
            max_range = _read_int(os.path.join(path, "max_energy_range_uj"))
            zones.append(_Zone(path, kind, key, max_range))
        if not any(z.kind == "package" for z in zones):
            raise SourceError(
                f"RAPL not available: no intel-rapl package zones under {self.root} (a CPU or VM without "
                "RAPL, or the intel_rapl_common/intel_rapl_msr modules are not loaded)"
            )
        return zones

    def read(self) -> RaplReading:
        if self._zones is None:
            self._zones = self._discover()
        zones = self._zones
        # Read every counter first, so that a failure leaves no zone half-updated.
        raw = [_read_int(os.path.join(z.path, "energy_uj")) for z in zones]
        for zone, now in zip(zones, raw, strict=True):
            if zone.last_uj is not None:
                delta = now - zone.last_uj
                if delta < 0:  # wrapped
                    delta += zone.max_range_uj
                zone.joules += delta / 1e6
            zone.last_uj = now

        packages: dict[str, float] = {}
        dram: float | None = None
        for zone in zones:
            if zone.kind == "package":
                packages[zone.package] = packages.get(zone.package, 0.0) + zone.joules
            else:
                dram = (dram or 0.0) + zone.joules
        return RaplReading(
            packages=[
                EnergyReading(key=key, source=SOURCE_RAPL, energy_joules=packages[key])
                for key in sorted(packages, key=int)
            ],
            dram=None if dram is None else EnergyReading(key="", source=SOURCE_RAPL, energy_joules=dram),
        )

"""CPU power model, for nodes where RAPL is missing or unreadable (`source="model"`).

Two estimates, in this order of preference:

1. TDP x load curve. The CPU's "model name" from /proc/cpuinfo is matched against a table of 4,918 CPU
   models and their thermal design power (data/cpu_tdp_watts.csv: vendor specification pages as compiled in
   CodeCarbon 3.3.2's cpu_power.csv, MIT). Power per socket is TDP times the Teads / Boavizta load curve:
   0.12 x TDP idle, 0.32 at 10 % load, 0.75 at 50 %, 1.02 at 100 %, linear between (Teads Engineering,
   "Building an AWS EC2 carbon emissions dataset", 2021; used by Boavizta's API).
2. Per-vCPU min/max watts, Cloud Carbon Footprint's coefficients (cloudcarbonfootprint.org, methodology:
   average watts = min + utilisation x (max - min), per vCPU): AWS 0.74/3.5 W, GCP 0.71/4.26 W, Azure
   0.78/3.76 W. Used when the model name is not in the table (typical of VMs, whose model name is often
   generic) or when configured.

Either can be overridden by configuration (`tdp_watts`, or `min_watts_per_cpu` and `max_watts_per_cpu`).
`power_watts(utilization)` is pure: the sampler measures utilisation from /proc/stat and passes it in.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from carbonwatch.errors import ConfigError

# Teads / Boavizta: (load, fraction of TDP)
LOAD_CURVE: tuple[tuple[float, float], ...] = ((0.0, 0.12), (0.10, 0.32), (0.50, 0.75), (1.00, 1.02))

# Cloud Carbon Footprint per-vCPU coefficients (min W, max W), average over each provider's CPU families.
CCF_PER_VCPU: dict[str, tuple[float, float]] = {
    "aws": (0.74, 3.5),
    "gcp": (0.71, 4.26),
    "azure": (0.78, 3.76),
}

_GHZ = re.compile(r"@\s*[\d.]+\s*[gm]hz")
_NOISE = re.compile(
    r"\((?:r|tm|c)\)|\b\d+-core\b|\b(?:cpu|processor|apu|with radeon graphics)\b"
)
_SEPARATORS = re.compile(r"[^a-z0-9+\-.]+")


def normalise(name: str) -> str:
    """Lower case, without (R)/(TM), "CPU @ 2.10GHz", "64-Core Processor", punctuation: tokens by single spaces."""
    text = _GHZ.sub(" ", name.lower())
    text = _NOISE.sub(" ", text)
    return " ".join(_SEPARATORS.sub(" ", text).split())


@dataclass(frozen=True)
class TdpEntry:
    name: str  # as in the table
    key: str  # normalised
    watts: float


@lru_cache(maxsize=1)
def load_tdp_table() -> tuple[TdpEntry, ...]:
    """The bundled table, longest names first."""
    text = (resources.files("carbonwatch") / "data" / "cpu_tdp_watts.csv").read_text(encoding="utf-8")
    entries: list[TdpEntry] = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            watts = float(row["TDP"])
        except (TypeError, ValueError):
            continue
        key = normalise(row["Name"])
        if key and watts > 0:
            entries.append(TdpEntry(row["Name"], key, watts))
    entries.sort(key=lambda e: len(e.key), reverse=True)
    return tuple(entries)


def match_tdp(cpu_model: str, table: tuple[TdpEntry, ...] | None = None) -> TdpEntry | None:
    """The longest table name found, token-aligned, inside the normalised model name (so "Gold 6248" does
    not match "Gold 6248R", nor "1280" match "E3-1280")."""
    haystack = f" {normalise(cpu_model)} "
    for entry in load_tdp_table() if table is None else table:
        if f" {entry.key} " in haystack:
            return entry
    return None


@dataclass(frozen=True)
class CpuInfo:
    model_name: str  # "" when /proc/cpuinfo has none (e.g. many ARM kernels)
    cpus: int  # logical CPUs
    sockets: int


def read_cpuinfo(proc_root: str = "/proc") -> CpuInfo:
    path = os.path.join(proc_root, "cpuinfo")
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return CpuInfo("", os.cpu_count() or 1, 1)
    model = ""
    cpus = 0
    sockets: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            cpus += 1
        elif key == "model name" and not model:
            model = value
        elif key == "physical id":
            sockets.add(value)
    return CpuInfo(model, cpus or os.cpu_count() or 1, max(len(sockets), 1))


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"cpu.{name} must be a positive number of watts, got {value!r}")
    return float(value)


class CpuPowerModel:
    """Estimated CPU power of the whole node from its utilisation."""

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        tdp_watts: float | None = None,
        min_watts_per_cpu: float | None = None,
        max_watts_per_cpu: float | None = None,
        ccf_provider: str = "aws",
        sockets: int | None = None,
        cpus: int | None = None,
    ) -> None:
        tdp = _positive("tdp_watts", tdp_watts)
        low = _positive("min_watts_per_cpu", min_watts_per_cpu)
        high = _positive("max_watts_per_cpu", max_watts_per_cpu)
        if (low is None) != (high is None):
            raise ConfigError("cpu.min_watts_per_cpu and cpu.max_watts_per_cpu go together: give both or neither")
        if low is not None and high is not None and low > high:
            raise ConfigError(f"cpu.min_watts_per_cpu ({low}) is above cpu.max_watts_per_cpu ({high})")
        if tdp is not None and low is not None:
            raise ConfigError("give either cpu.tdp_watts or cpu.min/max_watts_per_cpu, not both")
        if ccf_provider not in CCF_PER_VCPU:
            raise ConfigError(f"cpu.ccf_provider must be one of {', '.join(CCF_PER_VCPU)}, got {ccf_provider!r}")
        for name, count in (("sockets", sockets), ("cpus", cpus)):
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                raise ConfigError(f"cpu.{name} must be a whole number >= 1, got {count!r}")

        info = read_cpuinfo(proc_root)
        self.cpu_model = info.model_name or "unknown"
        self.sockets = sockets or info.sockets
        self.cpus = cpus or info.cpus
        self.matched: TdpEntry | None = None
        self.tdp_watts: float | None = None
        self.min_watts_per_cpu: float | None = None
        self.max_watts_per_cpu: float | None = None

        if tdp is not None:
            self.tdp_watts = tdp
            origin = "override"
        elif low is not None and high is not None:
            self.min_watts_per_cpu, self.max_watts_per_cpu = low, high
            origin = "override"
        else:
            self.matched = match_tdp(info.model_name) if info.model_name else None
            if self.matched is not None:
                self.tdp_watts = self.matched.watts
                origin = self.matched.name
            else:
                self.min_watts_per_cpu, self.max_watts_per_cpu = CCF_PER_VCPU[ccf_provider]
                origin = f"ccf-{ccf_provider}"

        if self.tdp_watts is not None:
            self.method = "tdp"
            per_socket = f"{self.tdp_watts:g}W"
            self.description = f"tdp:{origin} {per_socket}" + (f" x {self.sockets}" if self.sockets > 1 else "")
        else:
            self.method = "per-vcpu"
            label = "ccf-per-vcpu" if origin.startswith("ccf-") else "per-vcpu-override"
            self.description = f"{label}:{self.min_watts_per_cpu:g}-{self.max_watts_per_cpu:g}W x {self.cpus}"

    def power_watts(self, utilization: float) -> float:
        """Node CPU power at `utilization` (0..1, of all logical CPUs; clamped to that range)."""
        if not math.isfinite(utilization):
            raise ValueError(f"CPU utilisation must be a number in 0..1, got {utilization!r}")
        u = min(max(utilization, 0.0), 1.0)
        if self.tdp_watts is not None:
            return self.sockets * self.tdp_watts * load_fraction(u)
        assert self.min_watts_per_cpu is not None and self.max_watts_per_cpu is not None
        return self.cpus * (self.min_watts_per_cpu + u * (self.max_watts_per_cpu - self.min_watts_per_cpu))


def load_fraction(utilization: float) -> float:
    """Fraction of TDP drawn at `utilization` (0..1) on the Teads / Boavizta curve, linear between points."""
    u = min(max(utilization, 0.0), 1.0)
    for (x0, y0), (x1, y1) in zip(LOAD_CURVE, LOAD_CURVE[1:], strict=False):
        if u <= x1:
            return y0 + (y1 - y0) * (u - x0) / (x1 - x0)
    return LOAD_CURVE[-1][1]

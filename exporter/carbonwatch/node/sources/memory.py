"""Memory power model, for nodes without a RAPL dram zone (`source="model"`).

Power = installed memory x watts per GB. The default, 0.392 W/GB, is Cloud Carbon Footprint's memory
coefficient (cloudcarbonfootprint.org, methodology, "Memory"; derived from DRAM vendors' figures). It is a
constant: DRAM power depends mostly on capacity (refresh, background power) and only weakly on traffic,
and the model does not pretend otherwise. Installed memory is MemTotal from /proc/meminfo (slightly below
the DIMMs' capacity: the kernel keeps some); GB is taken as GiB, the unit cloud instance sizes are given in.
Where RAPL has a dram zone (most Xeons; not AMD), the sampler uses that measurement instead.
"""

from __future__ import annotations

import math
import os

from carbonwatch.errors import ConfigError
from carbonwatch.node.model import SourceError

CCF_WATTS_PER_GB = 0.392
GIB = 1 << 30


def read_mem_total_bytes(proc_root: str = "/proc") -> int:
    path = os.path.join(proc_root, "meminfo")
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    fields = line.split()
                    value = int(fields[1])
                    unit = fields[2].lower() if len(fields) > 2 else "b"
                    return value * 1024 if unit == "kb" else value
    except OSError as exc:
        raise SourceError(f"memory model: cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, IndexError) as exc:
        raise SourceError(f"memory model: unreadable MemTotal line in {path}") from exc
    raise SourceError(f"memory model: no MemTotal in {path}")


class MemoryPowerModel:
    """Estimated memory power of the node."""

    def __init__(
        self,
        watts_per_gb: float = CCF_WATTS_PER_GB,
        proc_root: str = "/proc",
        *,
        total_bytes: int | None = None,
    ) -> None:
        if (
            isinstance(watts_per_gb, bool)
            or not isinstance(watts_per_gb, int | float)
            or not math.isfinite(watts_per_gb)
            or watts_per_gb <= 0
        ):
            raise ConfigError(f"memory.watts_per_gb must be a positive number, got {watts_per_gb!r}")
        if total_bytes is not None and (isinstance(total_bytes, bool) or not isinstance(total_bytes, int)
                                        or total_bytes <= 0):
            raise ConfigError(f"memory.total_bytes must be a positive whole number, got {total_bytes!r}")
        self.watts_per_gb = float(watts_per_gb)
        self.total_bytes = total_bytes if total_bytes is not None else read_mem_total_bytes(proc_root)
        origin = "ccf" if self.watts_per_gb == CCF_WATTS_PER_GB else "override"
        self.description = f"{origin}:{self.watts_per_gb:g}W/GB x {self.total_bytes / GIB:.1f}GB"

    def power_watts(self) -> float:
        return self.total_bytes / GIB * self.watts_per_gb

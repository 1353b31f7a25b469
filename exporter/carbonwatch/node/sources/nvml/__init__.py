"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py, or any object with the `Nvml` calls).

`source.py` holds the session and the per-GPU loop; `energy.py` the counter and power, `lists.py` the process
lists, `processes.py` the per-process samples, `mig.py` MIG boards; `base.py` the `Nvml` Protocol they share.
"""

from carbonwatch.node.sources.nvml.base import (
    ENERGY_COUNTER,
    MPS_SERVER,
    POWER_AVERAGE,
    POWER_INSTANT,
    Nvml,
    field_number,
)
from carbonwatch.node.sources.nvml.source import NvmlSource

_field_number = field_number  # the name bench and tests knew

__all__ = ["ENERGY_COUNTER", "MPS_SERVER", "POWER_AVERAGE", "POWER_INSTANT", "Nvml", "NvmlSource", "field_number"]

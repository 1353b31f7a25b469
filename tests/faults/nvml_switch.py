"""The env-configured fake NVML (tests/fakes/fake_nvml.py, `CARBONWATCH_FAKE_NVML`) with faults switched on and
off from the test process while the exporter runs.

Start the exporter over it with `python -m tests.fakes.exporter --nvml tests.faults.nvml_switch`.
`CARBONWATCH_FAKE_NVML_FAULTS` names a JSON file, read
again before each NVML call whenever it changed:

    {"lost": [1]}              GPU 1 falls off the bus (every call about it: NVML_ERROR_GPU_IS_LOST); the
                               simulated hardware keeps counting its energy meanwhile
    {"driver": "gone"}         the driver is unloaded: the open session is invalid, every energy counter
                               restarts at 0, and nvmlInit answers NVML_ERROR_DRIVER_NOT_LOADED

Each counter starts at 1 kWh, as on a node whose driver was loaded long before the exporter started (a
counter that restarts at 0 is then below its previous value for as long as it matters).
    {}                         everything back (the driver loaded again)
"""

from __future__ import annotations

import json
import os
from typing import Any

from pynvml import NVML_ERROR_DRIVER_NOT_LOADED

from tests.fakes import fake_nvml

FAULTS_ENV = "CARBONWATCH_FAKE_NVML_FAULTS"
DRIVER_UPTIME_MJ = 3.6e9  # the counters hold 1 kWh when the exporter starts: the driver was loaded long before
_stub = fake_nvml.stub()
for _gpu in _stub.board:
    _gpu.counter_mj += DRIVER_UPTIME_MJ
_stamp: list[float] = [-1.0]
_previous_hook = _stub.before_call


def _apply_faults() -> None:
    if _previous_hook is not None:
        _previous_hook()
    path = os.environ.get(FAULTS_ENV)
    if not path:
        return
    try:
        mtime = os.stat(path).st_mtime
        if mtime == _stamp[0]:
            return
        with open(path) as fh:
            spec = json.load(fh)
    except (OSError, ValueError):
        return  # absent or half-written: keep the current faults
    _stamp[0] = mtime
    lost = set(spec.get("lost", []))
    for gpu in _stub.board:
        if gpu.index in lost and not gpu.lost:
            gpu.lose()
        elif gpu.index not in lost and gpu.lost:
            gpu.recover()
    gone = spec.get("driver") == "gone"
    if gone and _stub.init_error is None:
        _stub.driver_reload()
        _stub.init_error = NVML_ERROR_DRIVER_NOT_LOADED
    elif not gone:
        _stub.init_error = None


_stub.before_call = _apply_faults


def __getattr__(name: str) -> Any:
    return getattr(fake_nvml, name)

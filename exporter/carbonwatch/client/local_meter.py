"""In-process measurement of one process tree, for the run client's local mode (no exporter, no server).

It runs the exporter's own sampler (same sources, same attribution) in a background thread, with the
tree's root registered as the run, and exposes the run's totals.

GPU energy in containers. NVML names GPU processes by their host pids; a training process in a container
has its own PID namespace. The meter looks at its namespace first (`carbonwatch.node.sources.pidns`) and says
which of three ways its GPU energy is attributed (`gpu_attribution`, also logged):

* `host`: same namespace as the host; NVML's pids are the run's pids.
* `nspid`: own namespace, but /proc numbers processes as the host does; the root pid is mapped to that
  numbering through `NSpid` in /proc/PID/status, and NVML's pids then match /proc's.
* `visible_gpus`: own namespace and own /proc, so host pids cannot be mapped. The run is charged the whole
  energy of the GPUs it can see (the container's GPUs, narrowed by CUDA_VISIBLE_DEVICES), or for a MIG
  device its GPU instance's share of the board. Right for a container that holds its GPUs alone; a GPU
  shared with other containers is charged to this run in full.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Mapping

from carbonwatch.intensity.providers import IntensityInUse
from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.meters import GpuSource
from carbonwatch.node.model import GpuProcessUse, GpuReading, RunState
from carbonwatch.node.registration import Registration, process_start_time
from carbonwatch.node.sampler import Sampler
from carbonwatch.node.sources import pidns
from carbonwatch.node.sources.wiring import Sources, build_sources

log = logging.getLogger("carbonwatch.client.local_meter")


def visible_devices(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The GPUs CUDA lets the process use, from CUDA_VISIBLE_DEVICES: indices and GPU-/MIG- UUIDs (or their
    prefixes), in order; None when unset (every GPU). As CUDA does, the list ends at the first entry that
    is neither. Indices follow NVML's PCI order, which is CUDA's on nodes with one GPU model (or with
    CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    out: list[str] = []
    for token in (t.strip() for t in raw.split(",")):
        if token.isdigit() or token.startswith(("GPU-", "MIG-")):
            out.append(token)
        else:
            break
    return tuple(out)


def board_share(g: GpuReading, visible: tuple[str, ...] | None) -> float:
    """The fraction of GPU `g`'s energy a process that sees `visible` is charged: 1 for a whole board, the
    GPU instances' shares for MIG devices, 0 for a GPU it cannot see."""
    whole = visible is None or any(t == str(g.index) or (t.startswith("GPU-") and g.uuid.startswith(t))
                                   for t in visible)
    if not g.mig_shares:
        return 1.0 if whole else 0.0
    if whole:
        return min(sum(share for _, share in g.mig_shares), 1.0)
    assert visible is not None
    picked = [share for uuid, share in g.mig_shares if any(t.startswith("MIG-") and uuid.startswith(t)
                                                            for t in visible)]
    return min(sum(picked), 1.0)


class VisibleGpus:
    """A GpuSource for a process that cannot map NVML's host pids: only the GPUs it can see, each charged
    to `pid` by `board_share`; the rest of a board (other MIG instances) stays unattributed."""

    def __init__(self, inner: GpuSource, pid: int, visible: tuple[str, ...] | None) -> None:
        self.inner = inner
        self.pid = pid
        self.visible = visible
        self.last_errors: list[str] = []
        from carbonwatch.node.sources.nvml import NvmlSource

        if isinstance(inner, NvmlSource):
            inner.read_processes = False  # NVML's host pids mean nothing here: do not pay for the calls

    def read(self) -> list[GpuReading]:
        out: list[GpuReading] = []
        try:
            readings = self.inner.read()
        finally:
            self.last_errors = list(self.inner.last_errors)
        for g in readings:
            share = board_share(g, self.visible)
            if share > 0:
                out.append(dataclasses.replace(g, processes=(GpuProcessUse(self.pid, board_share=share),)))
        return out


class LocalMeter:
    def __init__(
        self,
        run_id: str,
        root_pid: int,
        interval: float = 1.0,
        config: ExporterConfig | None = None,
        sources: Sources | None = None,
        pid_view: pidns.PidView | None = None,
        environ: Mapping[str, str] | None = None,
        intensity: Callable[[], IntensityInUse] | None = None,
    ) -> None:
        cfg = dataclasses.replace(config) if config is not None else ExporterConfig()
        cfg.sample_interval = interval
        cfg.collectors = dict(cfg.collectors, intensity=False, process=True)
        self.run_id = run_id
        if sources is None:
            sources = build_sources(cfg)
            sources.registrations = None  # only this tree: the spool directory is the exporter's business
        proc_root = cfg.process.proc_root
        self.pid_view = pid_view if pid_view is not None else pidns.detect(proc_root, root_pid)
        self.gpu_attribution = self.pid_view.mode  # host, nspid or visible_gpus
        root = self.pid_view.proc_pid if self.pid_view.proc_pid is not None else root_pid
        self.root_proc_pid = root  # the root as the sampler's /proc numbers it
        if self.pid_view.mode == pidns.VISIBLE_GPUS and sources.nvml is not None:
            sources.nvml = VisibleGpus(sources.nvml, root, visible_devices(environ))
        log.info("carbonwatch local meter: GPU attribution %s (%s)", self.gpu_attribution, self.pid_view.reason)
        reg = Registration(run_id, root, process_start_time(root, proc_root))
        # with `intensity`, each sample's energy is priced at the intensity of that sample (sum of dE x I(t))
        self.sampler = Sampler(cfg, sources, static_registrations=[reg], only_runs=True, intensity=intensity)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._final: RunState | None = None

    def start(self) -> LocalMeter:
        self.sampler.sample_once()  # baseline
        self._thread = threading.Thread(
            target=self.sampler.run_forever, args=(self._stop,), name="carbonwatch-local-meter", daemon=True
        )
        self._thread.start()
        return self

    def totals(self) -> RunState:
        if self._final is not None:
            return self._final
        snap = self.sampler.snapshot()
        if snap is not None:
            for r in snap.runs:
                if r.run_id == self.run_id:
                    return r
        return RunState(self.run_id)

    def stop(self) -> RunState:
        if self._final is not None:
            return self._final
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sampler.sample_once()  # energy up to now
        self._final = self.totals()
        return self._final

"""In-process measurement of one process tree, for the run client's local mode (no exporter, no server).

It runs the exporter's own sampler (same sources, same attribution) in a background thread, with the
tree's root registered as the run, and exposes the run's totals.
"""

from __future__ import annotations

import dataclasses
import threading

from carbonwatch.config import ExporterConfig
from carbonwatch.model import RunState
from carbonwatch.registration import Registration, process_start_time
from carbonwatch.sampler import Sampler, Sources, build_sources


class LocalMeter:
    def __init__(
        self,
        run_id: str,
        root_pid: int,
        interval: float = 1.0,
        config: ExporterConfig | None = None,
        sources: Sources | None = None,
    ) -> None:
        cfg = dataclasses.replace(config) if config is not None else ExporterConfig()
        cfg.sample_interval = interval
        cfg.collectors = dict(cfg.collectors, intensity=False, process=True)
        self.run_id = run_id
        if sources is None:
            sources = build_sources(cfg)
            sources.registrations = None  # only this tree: the spool directory is the exporter's business
        reg = Registration(run_id, root_pid, process_start_time(root_pid, cfg.process.proc_root))
        self.sampler = Sampler(cfg, sources, static_registrations=[reg], only_runs=True)
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

"""Who measures a run's energy, and the switch when that changes mid-run.

A live node exporter (its heartbeat file is fresh) attributes the run's processes: no sampler runs here.
Otherwise the local meter samples the run's process tree in-process. When the exporter disappears during
a node-mode run (its heartbeat removed by a clean stop, or stale after a crash), the local meter starts from
that moment, so the rest of the run is measured; the summary says from when.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from carbonwatch.client.node import exporter_alive
from carbonwatch.client.settings import RunSettings
from carbonwatch.client.summary import LOCAL_METER, NODE_EXPORTER, NOT_MEASURED, intensity_for
from carbonwatch.intensity.providers import IntensityInUse
from carbonwatch.node.model import RunState

if TYPE_CHECKING:
    from carbonwatch.client.local_meter import LocalMeter
    from carbonwatch.intensity.feed import IntensityFeed

log = logging.getLogger("carbonwatch.client")


class Measurement:
    """The run's measurement: node exporter, local meter, or none; `fallback_time` is when a node-mode run
    lost its exporter (Unix time; None if it never did)."""

    poll_s = 5.0  # how often a node-mode run looks at the exporter's heartbeat

    def __init__(self, run_id: str, settings: RunSettings, stop: threading.Event) -> None:
        self.run_id = run_id
        self.settings = settings
        self.stop_event = stop
        self.mode = NOT_MEASURED
        self.meter: LocalMeter | None = None
        self.fallback_time: float | None = None
        self.root_pid = 0
        self._feed: IntensityFeed | None = None
        self._intensity: tuple[float, str] | None = None
        self._watch: threading.Thread | None = None

    @property
    def local_allowed(self) -> bool:
        return self.settings.local_meter or self.settings.local_mode

    def start(self, node: bool, root_pid: int) -> None:
        self.root_pid = root_pid
        if node:
            self.mode = NODE_EXPORTER  # measured once, by the exporter: no sampler here
            log.info("carbonwatch: run %s: the node exporter measures it", self.run_id)
            self._watch = threading.Thread(target=self._watch_exporter, name="carbonwatch-node-watch", daemon=True)
            self._watch.start()
        elif self.local_allowed:
            self.start_meter()

    def start_meter(self) -> bool:
        try:
            from carbonwatch.client.local_meter import LocalMeter

            self.meter = LocalMeter(self.run_id, self.root_pid, interval=self.settings.meter_interval,
                                    intensity=self.intensity_in_use)
            self.meter.start()
            self.mode = LOCAL_METER if self.fallback_time is None else self.mode
            return True
        except Exception as exc:
            self.meter = None
            log.warning("carbonwatch: local measurement unavailable (%s); the run is tracked without it", exc)
            return False

    def _watch_exporter(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            if exporter_alive():
                continue
            self.fallback_time = time.time()
            how = "measuring locally from now on" if self.local_allowed else "the local meter is off: not measured"
            log.warning("carbonwatch: run %s: the node exporter stopped measuring this node; %s", self.run_id, how)
            if self.local_allowed:
                self.start_meter()
            return

    def stop(self) -> RunState | None:
        """The local meter's totals (None when it never ran); stops the exporter watch."""
        if self._watch is not None:
            self._watch.join(timeout=0)  # a daemon; the run's stop event ends it
        if self.meter is None:
            return None
        try:
            return self.meter.stop()
        except Exception as exc:
            log.warning("carbonwatch: local measurement failed at the end: %s", exc)
            return None

    def intensity_in_use(self) -> IntensityInUse:
        """What the local meter prices each sample at: the zone's intensity, refreshed in the background (never
        on the training thread) when a live provider is configured."""
        if self._feed is None:
            from carbonwatch.intensity.feed import IntensityFeed
            from carbonwatch.intensity.providers import provider_from_config

            self._feed = IntensityFeed([self.settings.zone], provider_from_config(self.settings.intensity or None))
            self._feed.start(self.stop_event)
        return self._feed.in_use()

    def grid_intensity(self) -> tuple[float, str]:
        """(g/kWh, source): what the local meter last priced at, else the zone's current intensity."""
        if self._feed is not None:
            used = self._feed.in_use()
            return used.grams_per_kwh, used.source
        if self._intensity is None:
            self._intensity = intensity_for(self.settings.zone, self.settings.intensity)
        return self._intensity

"""Run state and its pushes to the Pushgateway, off the training thread.

The training thread only updates `RunProgress` under a lock (about a microsecond). A background thread
pushes the whole state (HTTP PUT, so the group always holds exactly the current state) at most once per
`interval`, with a short timeout and exponential backoff. A dead or slow gateway costs one warning; as
every push carries the full state, nothing is lost while it is away: the next successful push sends it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import SupportsFloat, SupportsIndex

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import delete_from_gateway, push_to_gateway, pushadd_to_gateway
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from carbonwatch.client.auth import PushgatewayAuth, redact_url
from carbonwatch.contracts import ORIGIN_CLIENT, PUSH_JOB, PUSHED_BY_NAME

log = logging.getLogger("carbonwatch.client")

JOB = PUSH_JOB
STATUSES = ("running", "succeeded", "failed", "stopped")


@dataclass(frozen=True)
class RunLabels:
    run_id: str
    user: str = ""
    model: str = ""
    project: str = ""
    team: str = ""
    host: str = ""


@dataclass
class ProgressState:
    labels: RunLabels
    status: str = "running"
    start_time: float = 0.0  # of the first segment
    end_time: float | None = None
    segment: int = 1  # 1 for a run never resumed
    segment_start_time: float | None = None  # of the current segment (None: start_time)
    budget_grams: float | None = None
    retention_seconds: float | None = None  # how long the finished group stays on the gateway (the sweeps read it)
    expected_end_time: float | None = None
    epoch: int | None = None
    samples: float = 0.0
    phase: str = "train"
    metrics: dict[str, object] = field(default_factory=dict)  # raw values (floats, 0-d tensors), read at push time


class RunProgress:
    """Thread-safe run state; every setter is cheap and never raises for a number it cannot use."""

    def __init__(self, labels: RunLabels, start_time: float | None = None) -> None:
        self._lock = threading.Lock()
        self._state = ProgressState(labels=labels, start_time=time.time() if start_time is None else start_time)
        self.version = 0  # bumped on every change; the pusher compares it

    def snapshot(self) -> ProgressState:
        with self._lock:
            return replace(self._state, metrics=dict(self._state.metrics))

    def update(self, fn: Callable[[ProgressState], None]) -> None:
        with self._lock:
            fn(self._state)
            self.version += 1


def _as_float(raw: object) -> float | None:
    """A user's metric value as a float, off the training thread (a GPU tensor syncs here, not there)."""
    try:
        if hasattr(raw, "item"):  # a 0-d tensor or array
            raw = raw.item()
        if not isinstance(raw, (SupportsFloat, SupportsIndex, str)):
            return None
        value = float(raw)
    except Exception:
        return None
    return value if math.isfinite(value) else None


# Families are in two parts. A standalone client pushes both with PUT (the group is exactly its state).
# Under `carbonwatch run`, the wrapper owns OWNER and the script's in-code client owns PROGRESS; both push
# with POST, which replaces only the families pushed, so neither overwrites the other.
OWNER = "owner"  # run_info (status), start/end time, budget, heartbeat
PROGRESS = "progress"  # epoch, samples, phase, user metrics, expected end
BOTH = frozenset({OWNER, PROGRESS})


class RunCollector(Collector):
    """Builds the run's families from the current state on every push."""

    def __init__(self, progress: RunProgress, parts: frozenset[str] = BOTH) -> None:
        self.progress = progress
        self.parts = parts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.progress.snapshot()
        rid = s.labels.run_id

        def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
            return PUSHED_BY_NAME[name].family()  # names, help and labels are the contract's

        def gauge(name: str, value: float | None) -> Iterator[Metric]:
            if value is not None and math.isfinite(value):
                g = family(name)
                g.add_metric([rid], float(value))
                yield g

        if OWNER in self.parts:
            info = family("carbonwatch_run_info")
            lab = s.labels
            info.add_metric([rid, ORIGIN_CLIENT, lab.user, lab.project, lab.model, lab.team, lab.host, s.status], 1.0)
            yield info
            yield from gauge("carbonwatch_run_start_time_seconds", s.start_time)
            yield from gauge("carbonwatch_run_end_time_seconds", s.end_time)
            yield from gauge("carbonwatch_run_segment", float(s.segment))
            seg_start = s.start_time if s.segment_start_time is None else s.segment_start_time
            yield from gauge("carbonwatch_run_segment_start_time_seconds", seg_start)
            yield from gauge("carbonwatch_run_budget_grams", s.budget_grams)
            yield from gauge("carbonwatch_run_last_push_time_seconds", time.time())
            yield from gauge("carbonwatch_run_retention_seconds", s.retention_seconds)
        if PROGRESS in self.parts:
            yield from gauge("carbonwatch_run_expected_end_time_seconds", s.expected_end_time)
            yield from gauge("carbonwatch_run_epoch", None if s.epoch is None else float(s.epoch))
            samples = family("carbonwatch_run_samples")
            samples.add_metric([rid], s.samples)
            yield samples
            phase = family("carbonwatch_run_phase_info")
            phase.add_metric([rid, s.phase], 1.0)
            yield phase
            if s.metrics:
                m = family("carbonwatch_run_metric")
                for name, raw in sorted(s.metrics.items()):
                    value = _as_float(raw)
                    if value is not None:
                        m.add_metric([rid, name], value)
                yield m


class Pusher:
    """Pushes a run's state to a Pushgateway from a daemon thread."""

    def __init__(
        self,
        gateway: str,
        progress: RunProgress,
        interval: float = 1.0,
        heartbeat: float = 10.0,
        timeout: float = 2.0,
        max_backoff: float = 30.0,
        job: str = JOB,
        parts: frozenset[str] = BOTH,
        auth: PushgatewayAuth | None = None,
    ) -> None:
        self.gateway = gateway
        self.auth = auth or PushgatewayAuth()  # credentials and TLS; never in a log line or the error text
        self.progress = progress
        self.interval = interval
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.job = job
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RunCollector(progress, parts))
        self.replace_group = parts == BOTH  # PUT the whole group, else POST only our families
        self.pushes = 0
        self.failures = 0  # consecutive
        self.last_error = ""
        self._pushed_version = -1
        self._last_ok = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    @property
    def grouping_key(self) -> dict[str, str]:
        return {"run_id": self.progress.snapshot().labels.run_id}

    def push_once(self) -> bool:
        version = self.progress.version
        try:
            push = push_to_gateway if self.replace_group else pushadd_to_gateway
            push(
                self.gateway, job=self.job, registry=self.registry, grouping_key=self.grouping_key,
                timeout=self.timeout, handler=self.auth.handler(),
            )
        except Exception as exc:  # network, HTTP 4xx/5xx: never raised into training
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if not self._warned:
                log.warning(
                    "carbonwatch: cannot push to the Pushgateway at %s (%s); the run goes on, the state is kept "
                    "and sent when it answers again", redact_url(self.gateway), self.last_error,
                )
                self._warned = True
            return False
        if self._warned:
            log.warning("carbonwatch: Pushgateway at %s answers again; run state sent", redact_url(self.gateway))
            self._warned = False
        self.failures = 0
        self.pushes += 1
        self._pushed_version = version
        self._last_ok = time.monotonic()
        return True

    def _loop(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            now = time.monotonic()
            if self.progress.version != self._pushed_version or now - self._last_ok >= self.heartbeat:
                if self.push_once():
                    delay = self.interval
                else:
                    delay = min(self.max_backoff, self.interval * 2 ** min(self.failures, 16))
            else:
                delay = self.interval

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="carbonwatch-pusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1.0)

    def finish(self, deadline_s: float = 5.0) -> bool:
        """Stop the thread and push the final state, retrying for up to `deadline_s`. True once pushed."""
        self.stop()
        end = time.monotonic() + deadline_s
        while True:
            if self.push_once():
                return True
            if time.monotonic() + 0.5 >= end:
                return False
            time.sleep(0.5)

    def delete(self) -> bool:
        try:
            delete_from_gateway(self.gateway, job=self.job, grouping_key=self.grouping_key, timeout=self.timeout,
                                handler=self.auth.handler())  # fmt: skip
            return True
        except Exception as exc:
            log.warning("carbonwatch: could not delete the run's group from %s: %s", redact_url(self.gateway), exc)
            return False

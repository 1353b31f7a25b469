"""The in-code run API: `carbonwatch.run(...)` (a context manager), `carbonwatch.track` (a decorator).

    import carbonwatch
    with carbonwatch.run(user="alice", model="resnet18", project="vision", budget_grams=500) as run:
        for epoch in range(10):
            run.epoch(epoch)
            ...
            run.progress(samples=len(batch), loss=loss, accuracy=acc)
        run.phase("eval")

Nothing here raises into training code once the run has started: every call only updates in-memory state
under a lock (microseconds); pushes, measurement and budget checks run on daemon threads. Bad labels are
refused when the run is created (ConfigError naming the label), before training starts.

Measurement: when a node exporter serves this node (its heartbeat file in the spool directory is fresh), it
attributes the run's processes and no sampler runs in the training process; otherwise (local mode) the
local meter samples the run's process tree here.
"""

from __future__ import annotations

import _thread
import atexit
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from carbonwatch.client import reaper, runsfile
from carbonwatch.client.labels import validate_label, validate_metric_name, validate_run_id
from carbonwatch.client.node import exporter_alive
from carbonwatch.client.pusher import BOTH, OWNER, PROGRESS, ProgressState, Pusher, RunLabels, RunProgress
from carbonwatch.client.settings import RunSettings, default_runs_file, hostname, resolve
from carbonwatch.client.summary import (
    LOCAL_METER,
    NODE_EXPORTER,
    NOT_MEASURED,
    budget_exceeded_message,
    build_record,
    format_summary,
    intensity_for,
)
from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.errors import ConfigError
from carbonwatch.intensity.providers import IntensityInUse, check_zone

if TYPE_CHECKING:
    from carbonwatch.intensity.feed import IntensityFeed
from carbonwatch.promql import Prometheus

log = logging.getLogger("carbonwatch.client")
OWNER_ONLY = frozenset({OWNER})
PROGRESS_ONLY = frozenset({PROGRESS})

F = TypeVar("F", bound=Callable[..., Any])
# on_budget: "warn" (default: log once), "stop" (KeyboardInterrupt in the main thread, as Ctrl-C would),
# or a callable(run, grams) run on the budget thread.
BudgetHandler = Callable[["Run", float], None]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def query_prometheus_emissions(prometheus: str, run_id: str, timeout: float = 2.0) -> float | None:
    """The run's recorded emissions (run_id:carbonwatch_emissions_grams:total), or None if absent."""
    q = f'sum(run_id:carbonwatch_emissions_grams:total{{run_id="{validate_run_id(run_id)}"}})'
    return Prometheus(prometheus, timeout=timeout, what="prometheus").scalar(q)


def query_prometheus_energy(prometheus: str, run_id: str, timeout: float = 2.0) -> dict[str, float]:
    """The run's recorded energy per component (run_id_component:carbonwatch_energy_joules:total), J."""
    q = f'sum by (component) (run_id_component:carbonwatch_energy_joules:total{{run_id="{validate_run_id(run_id)}"}})'
    out: dict[str, float] = {}
    for r in Prometheus(prometheus, timeout=timeout, what="prometheus").query(q):
        value = float(r["value"][1])
        if math.isfinite(value):
            out[str(r["metric"].get("component", "other"))] = value
    return out


class Run:
    """One tracked training run. Use as a context manager, or call start() and finish()."""

    def __init__(
        self,
        *,
        run_id: str | None = None,
        user: str | None = None,
        model: str = "",
        project: str | None = None,
        team: str | None = None,
        budget_grams: float | None = None,
        on_budget: str | BudgetHandler | None = None,
        pushgateway: str | None = None,
        prometheus: str | None = None,
        zone: str | None = None,
        runs_file: str | os.PathLike[str] | None = None,
        config_file: str | None = None,
        expected_end_time: float | None = None,
        total_epochs: int | None = None,
        first_epoch: int | None = None,
        summary: bool = True,
        root_pid: int | None = None,
        register: bool = True,
        settings: RunSettings | None = None,
        wrapper: bool = False,
        **overrides: Any,
    ) -> None:
        handler = on_budget if callable(on_budget) else None
        mode = on_budget if isinstance(on_budget, str) else None
        self.settings = settings or resolve(
            dict(
                user=user, project=project, team=team, pushgateway=pushgateway, prometheus=prometheus,
                zone=zone, runs_file=None if runs_file is None else str(runs_file), on_budget=mode, **overrides,
            ),
            config_file=config_file,
        )
        s = self.settings
        env_id = os.environ.get("CARBONWATCH_RUN_ID")
        # Inside `carbonwatch run` the wrapper owns the run: this client only adds the script's progress.
        self.wrapped = not wrapper and bool(env_id) and os.environ.get("CARBONWATCH_RUN_WRAPPED") == "1"
        self.wrapper = wrapper
        if self.wrapped and run_id and run_id != env_id:
            log.warning("carbonwatch: run_id %r ignored: this process belongs to run %s", run_id, env_id)
            run_id = None
        self.run_id = validate_run_id(run_id or env_id or new_run_id())
        self.labels = RunLabels(
            run_id=self.run_id,
            user=validate_label("user", s.user),
            model=validate_label("model", model),
            project=validate_label("project", s.project),
            team=validate_label("team", s.team),
            host=validate_label("host", hostname()),
        )
        if budget_grams is not None and (
            isinstance(budget_grams, bool) or not isinstance(budget_grams, (int, float))
            or not math.isfinite(budget_grams) or budget_grams <= 0
        ):
            raise ConfigError(f"budget-grams: expected a number > 0, got {budget_grams!r}")
        if total_epochs is not None and (not isinstance(total_epochs, int) or total_epochs <= 0):
            raise ConfigError(f"total_epochs: expected a whole number > 0, got {total_epochs!r}")
        if first_epoch not in (None, 0, 1) or isinstance(first_epoch, bool):
            raise ConfigError(
                f"first_epoch: expected 0 or 1 (how the script numbers its first epoch), got {first_epoch!r}"
            )
        if not self.wrapped:  # inside `carbonwatch run` the wrapper checked it
            check_zone(s.zone, s.intensity or None)
        self.budget_grams = None if budget_grams is None else float(budget_grams)
        self.budget_handler = handler
        self.total_epochs = total_epochs
        self.first_epoch = first_epoch  # None: 0 if the script's first epoch() call says 0, else 1
        self._seen_first_epoch: int | None = None
        self.summary = summary and not self.wrapped
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.register = register and root_pid is None and not self.wrapped
        self.progress_state = RunProgress(self.labels, start_time=time.time())
        retention = s.retention
        self.progress_state.update(lambda st: setattr(st, "retention_seconds", retention))
        if expected_end_time is not None:
            self.progress_state.update(lambda st: setattr(st, "expected_end_time", float(expected_end_time)))
        if self.budget_grams is not None:
            b = self.budget_grams
            self.progress_state.update(lambda st: setattr(st, "budget_grams", b))
        self.pusher: Pusher | None = None
        self.meter: Any = None
        self.measurement = NOT_MEASURED  # who measures the energy: LOCAL_METER, NODE_EXPORTER or NOT_MEASURED
        self.on_budget_note = ""  # what happens on top of the warning, said in it (set by `carbonwatch run`)
        self.swept: reaper.SweepResult | None = None  # the finish's clean-up of expired gateway groups
        self.over_budget = False  # True once the budget is exceeded; a loop may poll it to stop cleanly
        self.record: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self._started = False
        self._finished = False
        self._lock = threading.Lock()
        self._stop_budget = threading.Event()
        self._stop_status: str | None = None
        self._budget_thread: threading.Thread | None = None
        self._registration: Path | None = None
        self._feed: IntensityFeed | None = None  # started with the local meter
        self._old_env: str | None = None
        self._old_sigterm: Any = None
        self._intensity: tuple[float, str] | None = None
        self._metric_names: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Run:
        if self._started:
            return self
        self._started = True
        s = self.settings
        try:
            node = not self.wrapped and exporter_alive()
            if self.register:  # first: the node exporter counts the run from here, the client's own start-up included
                # Subprocesses started from here on (data loader workers, launchers) carry the run id.
                self._old_env = os.environ.get("CARBONWATCH_RUN_ID")
                os.environ["CARBONWATCH_RUN_ID"] = self.run_id
                if s.pushgateway or node:
                    self._register()
            if s.pushgateway:
                parts = PROGRESS_ONLY if self.wrapped else (OWNER_ONLY if self.wrapper else BOTH)
                self.pusher = Pusher(
                    s.pushgateway, self.progress_state, interval=s.push_interval, heartbeat=s.heartbeat,
                    timeout=s.push_timeout, parts=parts, auth=s.pushgateway_auth,
                    # a long outage is retried at least every 3 heartbeats (30 s by default)
                    max_backoff=max(s.push_interval, min(30.0, 3 * s.heartbeat)),
                )
                self.pusher.start()
                if not self.wrapped:
                    threading.Thread(target=self._sweep, name="carbonwatch-sweep", daemon=True).start()
            if node:
                self.measurement = NODE_EXPORTER  # measured once, by the exporter: no sampler here
                log.info("carbonwatch: run %s: the node exporter measures it", self.run_id)
                if self.budget_grams is not None and not s.prometheus:
                    log.warning(
                        "carbonwatch: run %s: the budget is not checked: the node exporter measures the run, and "
                        "reading its emissions needs --prometheus / CARBONWATCH_PROMETHEUS", self.run_id,
                    )
            elif (s.local_meter or s.local_mode) and not self.wrapped:
                self._start_meter()
            if self.budget_grams is not None and not self.wrapped:
                self._budget_thread = threading.Thread(
                    target=self._budget_loop, name="carbonwatch-budget", daemon=True
                )
                self._budget_thread.start()
            self._install_sigterm()
            atexit.register(self._atexit)
        except Exception as exc:  # a failing part never stops the training
            log.warning("carbonwatch: run %s: could not start every part: %s", self.run_id, exc)
        log.info("carbonwatch: run %s started", self.run_id)
        return self

    def _register(self) -> None:
        try:
            from carbonwatch.registration import register

            self._registration = register(self.run_id, pid=os.getpid())
        except Exception as exc:
            log.warning("carbonwatch: could not register the run with the node exporter: %s", exc)

    def _start_meter(self) -> None:
        try:
            from carbonwatch.client.local_meter import LocalMeter

            self.meter = LocalMeter(self.run_id, self.root_pid, interval=self.settings.meter_interval,
                                    intensity=self._intensity_in_use)
            self.meter.start()
            self.measurement = LOCAL_METER
        except Exception as exc:
            self.meter = None
            log.warning("carbonwatch: local measurement unavailable (%s); the run is tracked without it", exc)

    def _sweep(self, deadline_s: float | None = None) -> reaper.SweepResult | None:
        """Delete finished runs' groups past their retention from the gateway (never this run's)."""
        s = self.settings
        if not s.pushgateway:
            return None
        auth = s.pushgateway_auth
        res = reaper.sweep(s.pushgateway, s.retention, timeout=s.push_timeout, deadline_s=deadline_s,
                           keep=(self.run_id,), fetch=auth.fetch, handler=auth.handler())
        if res.deleted:
            log.debug("carbonwatch: deleted the finished runs %s from %s", ", ".join(res.deleted), s.pushgateway)
        return res

    def _install_sigterm(self) -> None:
        # SIGTERM (batch schedulers, `kill`) becomes SystemExit in the main thread, so `with` blocks exit
        # and the run ends as "stopped" with its final state pushed. Only when nobody else handles it.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            self._stop_status = "stopped"
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_term)

    def _restore(self) -> None:
        atexit.unregister(self._atexit)
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            try:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            except Exception:
                pass
            self._old_sigterm = None
        if self.register:
            if self._old_env is None:
                os.environ.pop("CARBONWATCH_RUN_ID", None)
            else:
                os.environ["CARBONWATCH_RUN_ID"] = self._old_env
        self._end_registration()

    def _end_registration(self) -> None:
        if self._registration is not None:
            path, self._registration = self._registration, None
            try:
                from carbonwatch.registration import end

                end(path)  # the exporter counts the run up to now, then the process leaves it
            except Exception:
                pass

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            status = "succeeded"
        elif issubclass(exc_type, KeyboardInterrupt) or getattr(self, "_stop_status", None):
            status = "stopped"
        elif isinstance(exc, SystemExit) and exc.code in (0, None):
            status = "succeeded"
        else:
            status = "failed"
        self.finish(status)

    def _atexit(self) -> None:
        if not self._finished:
            self.finish("succeeded" if self.exit_code in (None, 0) else "failed")

    def finish(self, status: str = "succeeded", exit_code: int | None = None) -> dict[str, Any] | None:
        """End the run: final push (end time, status), group deletion after the retention, runs-file line,
        summary. Idempotent; returns the run's record."""
        with self._lock:
            if self._finished:
                return self.record
            self._finished = True
        if exit_code is not None:
            self.exit_code = exit_code
        try:
            return self._finish(status)
        except Exception as exc:
            log.warning("carbonwatch: run %s: could not finish cleanly: %s", self.run_id, exc)
            return self.record
        finally:
            self._restore()

    def _finish(self, status: str) -> dict[str, Any] | None:
        s = self.settings
        end = time.time()
        self._end_registration()  # the node exporter's count ends here, where the local meter's would
        self._stop_budget.set()
        if self.wrapped:  # the wrapper pushes the status, measures, records and cleans up
            if self.pusher is not None:
                self.pusher.finish(deadline_s=max(2.0, 2 * s.push_timeout))
            return None
        totals = None
        if self.meter is not None:
            try:
                totals = self.meter.stop()
            except Exception as exc:
                log.warning("carbonwatch: local measurement failed at the end: %s", exc)
        def final(st: ProgressState) -> None:
            st.status = status
            st.end_time = end

        self.progress_state.update(final)
        pushed: bool | None = None
        if self.pusher is not None:
            pushed = self.pusher.finish(deadline_s=max(2.0, 2 * s.push_timeout))
            if pushed:
                # The final state stays for the retention so Prometheus scrapes it; later sweeps delete it.
                if s.retention <= 0:
                    self.pusher.delete()
                self.swept = self._sweep(deadline_s=s.push_timeout)
            else:
                log.warning(
                    "carbonwatch: the final state of run %s could not be pushed (%s); it is in the runs file",
                    self.run_id, self.pusher.last_error,
                )
        grams_per_kwh, source = self._grid_intensity()
        if self._feed is not None:  # what the local meter priced the samples at (the last one)
            used = self._feed.in_use()
            grams_per_kwh, source = used.grams_per_kwh, used.source
        snap = self.progress_state.snapshot()
        prom = None
        energy = dict(totals.energy_joules) if totals is not None else {}
        sources = dict(totals.sources) if totals is not None else {}
        if s.prometheus:
            try:
                prom = query_prometheus_emissions(s.prometheus, self.run_id, timeout=s.push_timeout)
                if self.measurement == NODE_EXPORTER:
                    energy = query_prometheus_energy(s.prometheus, self.run_id, timeout=s.push_timeout)
                    sources = dict.fromkeys(energy, "node exporter")
            except Exception as exc:
                log.warning("carbonwatch: could not read the run's figures from Prometheus: %s", exc)
        labels = {k: getattr(self.labels, k) for k in ("run_id", "user", "model", "project", "team", "host")}
        node = self.measurement == NODE_EXPORTER
        rec = build_record(
            labels=labels, status=status, exit_code=self.exit_code, start_time=snap.start_time, end_time=end,
            energy_joules=energy, sources=sources,
            zone=s.zone, grams_per_kwh=grams_per_kwh, intensity_source=source,
            price_per_kwh=s.price_per_kwh, currency=s.currency, budget_grams=self.budget_grams,
            measurement=self.measurement,
            emissions_grams=prom if node else (sum(totals.emissions_grams.values())
                                               if totals is not None and totals.emissions_grams else None),
            extra={
                "mode": "node" if node else ("local" if s.local_mode else "pushgateway"),
                "pushgateway": s.pushgateway or "",
                "pushed": pushed,
                "pushes": self.pusher.pushes if self.pusher is not None else 0,
                "push_error": self.pusher.last_error if self.pusher is not None and not pushed else "",
                "labels_via": "environment" if node and self.wrapper and not s.pushgateway else "",
                "prometheus_emissions_grams": prom,
                "samples": snap.samples,
                "epoch": snap.epoch,
                "over_budget": self.over_budget,
            },
        )
        self.record = rec
        path = Path(s.runs_file) if s.runs_file else default_runs_file()
        try:
            runsfile.append(path, rec)
        except OSError as exc:
            log.warning("carbonwatch: could not write the runs file %s: %s", path, exc)
        if self.summary:
            print(format_summary(rec), file=sys.stderr, flush=True)
        return rec

    # ---- budget ----------------------------------------------------------------------------------
    def _intensity_in_use(self) -> IntensityInUse:
        """What the local meter prices each sample at: the zone's intensity, refreshed in the background (never
        on the training thread) when a live provider is configured."""
        if self._feed is None:
            from carbonwatch.intensity.feed import IntensityFeed
            from carbonwatch.intensity.providers import provider_from_config

            self._feed = IntensityFeed([self.settings.zone], provider_from_config(self.settings.intensity or None))
            self._feed.start(self._stop_budget)
        return self._feed.in_use()

    def _grid_intensity(self) -> tuple[float, str]:
        if self._intensity is None:
            self._intensity = intensity_for(self.settings.zone, self.settings.intensity)
        return self._intensity

    def emissions_grams(self) -> float | None:
        """The run's emissions so far: recorded by Prometheus with --prometheus, else measured here."""
        if self.settings.prometheus:
            try:
                v = query_prometheus_emissions(self.settings.prometheus, self.run_id, self.settings.push_timeout)
                if v is not None:
                    return v
            except Exception as exc:
                log.debug("carbonwatch: Prometheus query failed: %s", exc)
        if self.meter is None:
            return None
        totals = self.meter.totals()
        if totals.emissions_grams:  # priced sample by sample
            return float(sum(totals.emissions_grams.values()))
        return float(sum(totals.energy_joules.values())) / JOULES_PER_KWH * self._grid_intensity()[0]

    def _budget_loop(self) -> None:
        assert self.budget_grams is not None
        while not self._stop_budget.wait(self.settings.budget_interval):
            try:
                grams = self.emissions_grams()
            except Exception as exc:
                log.debug("carbonwatch: budget check failed: %s", exc)
                continue
            if grams is not None and grams >= self.budget_grams:
                self._budget_exceeded(grams)
                return

    def _budget_exceeded(self, grams: float) -> None:
        """Said once, with the figures and what happens next; then the configured action."""
        assert self.budget_grams is not None
        self.over_budget = True
        note = self.on_budget_note
        if not note and self.budget_handler is None and self.settings.on_budget == "stop":
            note = "stopping the run (KeyboardInterrupt in the main thread, as Ctrl-C)"
        log.warning(
            "carbonwatch: %s%s", budget_exceeded_message(self.run_id, grams, self.budget_grams),
            f"; {note}" if note else "",
        )
        try:
            if self.budget_handler is not None:
                self.budget_handler(self, grams)
            elif self.settings.on_budget == "stop":
                _thread.interrupt_main()  # KeyboardInterrupt in the main thread, as Ctrl-C would
        except Exception as exc:
            log.warning("carbonwatch: the on_budget callback failed: %s", exc)

    # ---- training-thread API (cheap, never raises) -----------------------------------------------
    def epoch(self, epoch: int, first_epoch: int | None = None) -> None:
        """The epoch starting now, numbered as the script numbers them: from 0 (`for epoch in range(n)`) or
        from 1. Pushed as `carbonwatch_run_epoch` = epochs started, counted from 1, so an 8-epoch run ends at 8
        either way and g/epoch divides by 8. The numbering is `first_epoch` (here or on the Run), else 0 once
        the script has passed 0, else 1; a 0-based run resumed past epoch 0 passes first_epoch=0."""
        try:
            e = int(epoch)
            if e < 0:
                raise ValueError("a negative epoch")
            if first_epoch in (0, 1) and self.first_epoch is None:
                self.first_epoch = first_epoch
            base = self.first_epoch
            if base is None:
                if self._seen_first_epoch is None or e == 0:
                    self._seen_first_epoch = min(e, 1)
                base = self._seen_first_epoch
            count = e - min(base, e) + 1  # epochs started, this one included
            expected = None
            if self.total_epochs and count > 1:
                start = self.progress_state.snapshot().start_time
                expected = start + (time.time() - start) / (count - 1) * self.total_epochs

            def upd(st: Any) -> None:
                st.epoch = count
                if expected is not None:
                    st.expected_end_time = expected

            self.progress_state.update(upd)
        except Exception as exc:
            log.debug("carbonwatch: epoch(%r) ignored: %s", epoch, exc)

    def progress(self, samples: float = 0, **metrics: Any) -> None:
        """Add `samples` processed and set training metrics (loss=..., accuracy=...). Tensors are read on the
        push thread, so a GPU tensor does not force a sync here."""
        try:
            n = float(samples) if samples else 0.0
            clean: dict[str, Any] = {}
            for name, value in metrics.items():
                if name not in self._metric_names:
                    try:
                        validate_metric_name(name)
                    except ConfigError as exc:
                        log.warning("carbonwatch: metric ignored: %s", exc)
                        continue
                    self._metric_names.add(name)
                clean[name] = value.detach() if hasattr(value, "detach") else value

            def upd(st: Any) -> None:
                st.samples += n
                st.metrics.update(clean)

            self.progress_state.update(upd)
        except Exception as exc:
            log.debug("carbonwatch: progress() ignored: %s", exc)

    def log(self, **metrics: Any) -> None:
        """Set training metrics without counting samples."""
        self.progress(0, **metrics)

    def phase(self, name: str) -> None:
        try:
            validate_metric_name(name, "phase")
            self.progress_state.update(lambda st: setattr(st, "phase", name))
        except Exception as exc:
            log.warning("carbonwatch: phase ignored: %s", exc)

    def set_expected_end(self, unix_time: float) -> None:
        try:
            t = float(unix_time)
            self.progress_state.update(lambda st: setattr(st, "expected_end_time", t))
        except Exception as exc:
            log.debug("carbonwatch: set_expected_end ignored: %s", exc)


def run(**kwargs: Any) -> Run:
    """A new run (not started until `with` or .start()). Keyword arguments as Run."""
    return Run(**kwargs)


def track(fn: F | None = None, /, **kwargs: Any) -> Any:
    """Decorator: `@carbonwatch.track` or `@carbonwatch.track(user=..., model=...)`. The function may take a
    keyword argument `carbonwatch_run` to receive the Run."""

    def deco(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*a: Any, **kw: Any) -> Any:
            with Run(**kwargs) as r:
                import inspect

                if "carbonwatch_run" in inspect.signature(f).parameters:
                    kw["carbonwatch_run"] = r
                return f(*a, **kw)

        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return deco(fn)
    return deco


def wait_below(
    grams_per_kwh: float,
    zone: str | None = None,
    max_wait: float = 6 * 3600.0,
    poll: float = 300.0,
    intensity_cfg: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    announce: Callable[[str], None] | None = None,
) -> tuple[bool, float, str]:
    """Wait until the zone's grid intensity is below `grams_per_kwh`, at most `max_wait` seconds.
    Returns (below, last intensity, its source); never raises for an unreachable provider."""
    from carbonwatch.client.settings import resolve as _resolve
    from carbonwatch.intensity.providers import provider_from_config

    s = _resolve({"zone": zone})
    cfg = intensity_cfg if intensity_cfg is not None else s.intensity
    provider = provider_from_config(cfg or None)  # a bad intensity config is a ConfigError, raised here
    check_zone(s.zone, cfg or None)  # never wait on the world average standing in for a mistyped zone
    deadline = time.monotonic() + max_wait
    while True:
        try:
            reading = provider.current(s.zone)
            value, source = float(reading.grams_per_kwh), str(reading.source)
        except Exception as exc:  # an unreachable provider: keep waiting, the deadline still holds
            value, source = math.inf, f"unavailable: {exc}"
        if value < grams_per_kwh:
            return True, value, source
        left = deadline - time.monotonic()
        if left <= 0:
            return False, value, source
        if announce:
            announce(
                f"carbonwatch: grid intensity in {s.zone} is {value:g} g/kWh ({source}), waiting for < "
                f"{grams_per_kwh:g} (up to {left:.0f}s more)"
            )
        sleep(min(poll, left))

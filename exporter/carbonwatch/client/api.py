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
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, ParamSpec, TypeVar, Unpack, overload

from carbonwatch.client import reaper, runsfile
from carbonwatch.client.ending import end_figures
from carbonwatch.client.final_figures import query_prometheus_emissions, query_prometheus_energy
from carbonwatch.client.intensity_wait import wait_below
from carbonwatch.client.measurement import Measurement
from carbonwatch.client.node import exporter_alive
from carbonwatch.client.pusher import BOTH, OWNER, PROGRESS, ProgressState, Pusher, RunProgress
from carbonwatch.client.run_options import RunOptions
from carbonwatch.client.run_setup import RunSetup, configure, new_run_id, runs_file_path
from carbonwatch.client.settings import RunSettings, resolve
from carbonwatch.client.summary import NODE_EXPORTER, budget_exceeded_message, build_record, format_summary
from carbonwatch.client.training_calls import TrainingCalls
from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.node.model import RunState

if TYPE_CHECKING:
    from carbonwatch.client.local_meter import LocalMeter

__all__ = ["Run", "new_run_id", "query_prometheus_emissions", "query_prometheus_energy", "run", "track",
           "wait_below"]

log = logging.getLogger("carbonwatch.client")
OWNER_ONLY = frozenset({OWNER})
PROGRESS_ONLY = frozenset({PROGRESS})

P = ParamSpec("P")
R = TypeVar("R")
# on_budget: "warn" (default: log once), "stop" (KeyboardInterrupt in the main thread, as Ctrl-C would),
# or a callable(run, grams) run on the budget thread.
BudgetHandler = Callable[["Run", float], None]


class Run(TrainingCalls):
    """One tracked training run. Use as a context manager, or call start() and finish().

    `resume=True` continues a run id that already finished (its next segment); without it such a run id is
    refused (ConfigError). Construction (settings, labels, validation) is carbonwatch.client.run_setup;
    measurement is carbonwatch.client.measurement; the end figures carbonwatch.client.ending."""

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
        resume: bool = False,
        **overrides: object,
    ) -> None:
        mode = on_budget if isinstance(on_budget, str) else None
        s = settings or resolve(
            dict(user=user, project=project, team=team, pushgateway=pushgateway, prometheus=prometheus, zone=zone,
                 runs_file=None if runs_file is None else str(runs_file), on_budget=mode, **overrides),
            config_file=config_file,
        )
        setup = configure(s, run_id=run_id, model=model, budget_grams=budget_grams, total_epochs=total_epochs,
                          first_epoch=first_epoch, wrapper=wrapper, resume=resume)
        self._init_identity(setup, on_budget if callable(on_budget) else None)
        self.summary = summary and not self.wrapped
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.register = register and root_pid is None and not self.wrapped
        self._init_progress(expected_end_time)
        self._init_state()

    def _init_identity(self, setup: RunSetup, handler: BudgetHandler | None) -> None:
        self.setup = setup
        self.settings = setup.settings
        self.run_id = setup.run_id
        self.labels = setup.labels
        self.wrapped = setup.wrapped
        self.wrapper = setup.wrapper
        self.segment = setup.segment
        self.budget_grams = setup.budget_grams
        self.budget_handler = handler
        self.total_epochs = setup.total_epochs
        self.first_epoch = setup.first_epoch  # None: 0 if the script's first epoch() call says 0, else 1
        self._seen_first_epoch: int | None = None

    def _init_progress(self, expected_end_time: float | None) -> None:
        now = time.time()
        seg = self.segment
        self.progress_state = RunProgress(self.labels, start_time=seg.first_start_time or now)
        retention, budget = self.settings.retention, self.budget_grams

        def init(st: ProgressState) -> None:
            st.retention_seconds = retention
            st.segment, st.segment_start_time = seg.number, now
            if expected_end_time is not None:
                st.expected_end_time = float(expected_end_time)
            if budget is not None:
                st.budget_grams = budget

        self.progress_state.update(init)

    def _init_state(self) -> None:
        self._stop_budget = threading.Event()
        self.measured = Measurement(self.run_id, self.settings, self._stop_budget)
        self.pusher: Pusher | None = None
        self.on_budget_note = ""  # what happens on top of the warning, said in it (set by `carbonwatch run`)
        self.swept: reaper.SweepResult | None = None  # the finish's clean-up of expired gateway groups
        self.over_budget = False  # True once the budget is exceeded; a loop may poll it to stop cleanly
        self.record: dict[str, object] | None = None  # the run's record, as written to the runs file
        self.exit_code: int | None = None
        self._started = False
        self._finished = False
        self._lock = threading.Lock()
        self._stop_status: str | None = None
        self._budget_thread: threading.Thread | None = None
        self._registration: Path | None = None
        self._old_env: str | None = None
        self._old_sigterm: signal.Handlers | None = None  # SIG_DFL while our SIGTERM handler is installed
        self._metric_names: set[str] = set()

    @property
    def meter(self) -> LocalMeter | None:
        """The local meter, when one runs (local mode, or since the node exporter stopped)."""
        return self.measured.meter

    @property
    def measurement(self) -> str:
        """Who measures the energy: LOCAL_METER, NODE_EXPORTER or NOT_MEASURED."""
        return self.measured.mode

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Run:
        if self._started:
            return self
        self._started = True
        try:
            node = not self.wrapped and exporter_alive()
            if self.register:  # first: the node exporter counts the run from here, the client's own start-up included
                # Subprocesses started from here on (data loader workers, launchers) carry the run id.
                self._old_env = os.environ.get("CARBONWATCH_RUN_ID")
                os.environ["CARBONWATCH_RUN_ID"] = self.run_id
                if self.settings.pushgateway or node:
                    self._register()
            self._start_pusher()
            if not self.wrapped:
                self._start_measurement(node)
            if self.budget_grams is not None and not self.wrapped:
                self._budget_thread = threading.Thread(
                    target=self._budget_loop, name="carbonwatch-budget", daemon=True
                )
                self._budget_thread.start()
            self._install_sigterm()
            atexit.register(self._atexit)
        except Exception as exc:  # a failing part never stops the training
            log.warning("carbonwatch: run %s: could not start every part: %s", self.run_id, exc)
        log.info("carbonwatch: run %s started%s", self.run_id,
                 f" (segment {self.segment.number})" if self.segment.number > 1 else "")
        return self

    def _start_pusher(self) -> None:
        s = self.settings
        if not s.pushgateway:
            return
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

    def _start_measurement(self, node: bool) -> None:
        self.measured.start(node, self.root_pid)
        if node and self.budget_grams is not None and not self.settings.prometheus:
            log.warning(
                "carbonwatch: run %s: the budget is not checked: the node exporter measures the run, and "
                "reading its emissions needs --prometheus / CARBONWATCH_PROMETHEUS", self.run_id,
            )

    def _register(self) -> None:
        try:
            from carbonwatch.registration import register

            self._registration = register(self.run_id, pid=os.getpid())
        except Exception as exc:
            log.warning("carbonwatch: could not register the run with the node exporter: %s", exc)

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

        signal.signal(signal.SIGTERM, on_term)
        self._old_sigterm = signal.SIG_DFL  # the only handler replaced (checked above)

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

    def finish(self, status: str = "succeeded", exit_code: int | None = None) -> dict[str, object] | None:
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

    def _finish(self, status: str) -> dict[str, object] | None:
        s = self.settings
        end = time.time()
        self._end_registration()  # the node exporter's count ends here, where the local meter's would
        self._stop_budget.set()
        if self.wrapped:  # the wrapper pushes the status, measures, records and cleans up
            if self.pusher is not None:
                self.pusher.finish(deadline_s=max(2.0, 2 * s.push_timeout))
            return None
        totals = self.measured.stop()

        def final(st: ProgressState) -> None:
            st.status = status
            st.end_time = end

        self.progress_state.update(final)
        pushed = self._final_push()
        rec = self._record(status, end, totals, pushed)
        self.record = rec
        path = runs_file_path(s)
        try:
            runsfile.append(path, rec)
        except OSError as exc:
            log.warning("carbonwatch: could not write the runs file %s: %s", path, exc)
        if self.summary:
            print(format_summary(rec), file=sys.stderr, flush=True)
        return rec

    def _final_push(self) -> bool | None:
        """The final state (end time, status) to the gateway; None without one."""
        s = self.settings
        if self.pusher is None:
            return None
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
        return pushed

    def _record(self, status: str, end: float, totals: RunState | None, pushed: bool | None) -> dict[str, object]:
        s = self.settings
        figures = end_figures(s, self.run_id, self.measurement, end, totals, self.measured.fallback_time)
        grams_per_kwh, source = self.measured.grid_intensity()
        snap = self.progress_state.snapshot()
        node = self.measurement == NODE_EXPORTER
        seg = self.segment
        return build_record(
            labels={k: getattr(self.labels, k) for k in ("run_id", "user", "model", "project", "team", "host")},
            status=status, exit_code=self.exit_code, start_time=snap.segment_start_time or snap.start_time,
            end_time=end, energy_joules=figures.energy_joules, sources=figures.sources,
            zone=s.zone, grams_per_kwh=grams_per_kwh, intensity_source=source,
            price_per_kwh=s.price_per_kwh, currency=s.currency, budget_grams=self.budget_grams,
            measurement=self.measurement, emissions_grams=figures.emissions_grams,
            extra={
                "mode": "node" if node else ("local" if s.local_mode else "pushgateway"),
                "pushgateway": s.pushgateway or "",
                "prometheus": s.prometheus or "",
                "pushed": pushed,
                "pushes": self.pusher.pushes if self.pusher is not None else 0,
                "push_error": self.pusher.last_error if self.pusher is not None and not pushed else "",
                "labels_via": "environment" if node and self.wrapper and not s.pushgateway else "",
                "prometheus_emissions_grams": figures.prometheus_grams,
                "samples": snap.samples,
                "epoch": snap.epoch,
                "over_budget": self.over_budget,
                "segment": seg.number,
                "first_start_time": round(seg.first_start_time, 3) if seg.first_start_time else None,
                **figures.extra,
            },
        )

    # ---- budget ----------------------------------------------------------------------------------
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
        return float(sum(totals.energy_joules.values())) / JOULES_PER_KWH * self.measured.grid_intensity()[0]

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

def run(**kwargs: Unpack[RunOptions]) -> Run:
    """A new run (not started until `with` or .start()). Keyword arguments as Run."""
    return Run(**kwargs)


@overload
def track(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def track(fn: None = None, /, **kwargs: Unpack[RunOptions]) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def track(
    fn: Callable[P, R] | None = None, /, **kwargs: Unpack[RunOptions]
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: `@carbonwatch.track` or `@carbonwatch.track(user=..., model=...)`. The function may take a
    keyword argument `carbonwatch_run` to receive the Run."""

    def deco(f: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(f)
        def wrapper(*a: P.args, **kw: P.kwargs) -> R:
            with Run(**kwargs) as r:
                import inspect

                if "carbonwatch_run" in inspect.signature(f).parameters:
                    kw["carbonwatch_run"] = r
                return f(*a, **kw)

        return wrapper

    if fn is not None:
        return deco(fn)
    return deco

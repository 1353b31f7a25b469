"""A run's construction, before anything starts: settings, labels, validation and, for a run id that was used
before, whether this run may continue it (its segment).

Everything here may raise ConfigError naming what is wrong: it runs when the run is created, before training.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonwatch.client import runsfile
from carbonwatch.client.labels import validate_label, validate_run_id
from carbonwatch.client.pusher import RunLabels
from carbonwatch.client.settings import RunSettings, default_runs_file, hostname
from carbonwatch.errors import ConfigError
from carbonwatch.intensity.providers import check_zone
from carbonwatch.promql import Prometheus

log = logging.getLogger("carbonwatch.client")
# How far back Prometheus is asked whether a run id already finished (its default retention is 15 days).
FINISHED_LOOKBACK = "30d"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Segment:
    """Where this run stands among the segments of its run id: 1 for a new run; resumed runs count on from
    the last finished segment and keep the first segment's start."""

    number: int = 1
    first_start_time: float | None = None  # of segment 1 when resumed; None for a new run
    found_in: str = ""  # "runs file", "Prometheus" or both, for a resumed run


@dataclass(frozen=True)
class RunSetup:
    settings: RunSettings
    run_id: str
    labels: RunLabels
    wrapped: bool  # inside `carbonwatch run`: the wrapper owns the run, this client adds progress only
    wrapper: bool  # this is `carbonwatch run` itself
    budget_grams: float | None
    total_epochs: int | None
    first_epoch: int | None
    segment: Segment


def check_budget(budget_grams: object) -> float | None:
    if budget_grams is None:
        return None
    if (isinstance(budget_grams, bool) or not isinstance(budget_grams, (int, float))
            or not math.isfinite(budget_grams) or budget_grams <= 0):
        raise ConfigError(f"budget-grams: expected a number > 0, got {budget_grams!r}")
    return float(budget_grams)


def check_epochs(total_epochs: object, first_epoch: object) -> None:
    if total_epochs is not None and (not isinstance(total_epochs, int) or total_epochs <= 0):
        raise ConfigError(f"total_epochs: expected a whole number > 0, got {total_epochs!r}")
    if first_epoch not in (None, 0, 1) or isinstance(first_epoch, bool):
        raise ConfigError(f"first_epoch: expected 0 or 1 (how the script numbers its first epoch), got {first_epoch!r}")


def choose_run_id(run_id: str | None, wrapper: bool) -> tuple[str, bool]:
    """(run id, wrapped): inside `carbonwatch run` the wrapper's id wins over the script's own."""
    env_id = os.environ.get("CARBONWATCH_RUN_ID")
    wrapped = not wrapper and bool(env_id) and os.environ.get("CARBONWATCH_RUN_WRAPPED") == "1"
    if wrapped and run_id and run_id != env_id:
        log.warning("carbonwatch: run_id %r ignored: this process belongs to run %s", run_id, env_id)
        run_id = None
    return validate_run_id(run_id or env_id or new_run_id()), wrapped


def configure(settings: RunSettings, *, run_id: str | None, model: str, budget_grams: float | None,
              total_epochs: int | None, first_epoch: int | None, wrapper: bool, resume: bool) -> RunSetup:
    """The run's identity and limits, validated; refuses a finished run id unless `resume`."""
    s = settings
    rid, wrapped = choose_run_id(run_id, wrapper)
    labels = RunLabels(
        run_id=rid,
        user=validate_label("user", s.user),
        model=validate_label("model", model or os.environ.get("CARBONWATCH_MODEL", "")),
        project=validate_label("project", s.project),
        team=validate_label("team", s.team),
        host=validate_label("host", hostname()),
    )
    budget = check_budget(budget_grams)
    check_epochs(total_epochs, first_epoch)
    if not wrapped:  # inside `carbonwatch run` the wrapper checked the zone and the run id
        check_zone(s.zone, s.intensity or None)
    segment = Segment() if wrapped else segment_for(s, rid, resume)
    return RunSetup(s, rid, labels, wrapped, wrapper, budget, total_epochs, first_epoch, segment)


def runs_file_path(settings: RunSettings) -> Path:
    return Path(settings.runs_file) if settings.runs_file else default_runs_file()


def finished_in_runs_file(path: Path, run_id: str) -> list[dict[str, Any]]:
    """The finished segments of `run_id` recorded in the local runs file, oldest first."""
    return sorted((r for r in runsfile.read(path) if r.get("run_id") == run_id and r.get("end_time")),
                  key=lambda r: float(r.get("start_time") or 0.0))


def finished_in_prometheus(url: str, run_id: str, timeout: float) -> tuple[int, float | None] | None:
    """(segments, first start) when Prometheus saw `run_id` end in the last FINISHED_LOOKBACK, else None.
    An unreachable Prometheus answers None (the runs file still counts) with a warning."""
    sel = f'{{run_id="{run_id}"}}'
    prom = Prometheus(url, timeout=timeout, what="prometheus")
    try:
        if prom.scalar(f"max(max_over_time(carbonwatch_run_end_time_seconds{sel}[{FINISHED_LOOKBACK}]))") is None:
            return None
        seg = prom.scalar(f"max(max_over_time(carbonwatch_run_segment{sel}[{FINISHED_LOOKBACK}]))")
        start = prom.scalar(f"min(min_over_time(carbonwatch_run_start_time_seconds{sel}[{FINISHED_LOOKBACK}]))")
    except Exception as exc:
        log.warning("carbonwatch: could not ask Prometheus whether run %s already finished: %s", run_id, exc)
        return None
    return (int(seg) if seg else 1), start


def segment_for(s: RunSettings, run_id: str, resume: bool) -> Segment:
    """Segment 1 for an unused run id; the next one for a finished run id with `resume`; a ConfigError for a
    finished run id without it. "Finished" is a record in the local runs file, or an end time Prometheus
    holds for the run id (when --prometheus is configured)."""
    local = finished_in_runs_file(runs_file_path(s), run_id)
    remote = finished_in_prometheus(s.prometheus, run_id, s.push_timeout) if s.prometheus else None
    if not local and remote is None:
        return Segment()
    where = " and ".join(w for w, hit in (("the runs file", local), ("Prometheus", remote)) if hit)
    if not resume:
        raise ConfigError(
            f"run-id: run {run_id} already finished (found in {where}); pick a new run id, or continue that run "
            "with --resume (carbonwatch.run(..., resume=True))"
        )
    numbers = [int(r.get("segment") or 1) for r in local] + ([remote[0]] if remote else [])
    starts = [float(r.get("first_start_time") or r["start_time"]) for r in local if r.get("start_time")]
    if remote and remote[1] is not None:
        starts.append(remote[1])
    return Segment(max(numbers) + 1, min(starts) if starts else None, where)

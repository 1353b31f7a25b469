"""The keyword arguments of a Run, as one type, for the functions that pass them on unchanged
(`carbonwatch.run`, `carbonwatch.track`, the framework callbacks)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from carbonwatch.client.auth import PushgatewayAuth
from carbonwatch.client.settings import RunSettings

if TYPE_CHECKING:
    from carbonwatch.client.api import Run


class RunOptions(TypedDict, total=False):
    """Run's keyword parameters, then the settings it passes on to client.settings.resolve (durations as
    seconds or a duration string such as "2s")."""

    run_id: str | None
    user: str | None
    model: str
    project: str | None
    team: str | None
    budget_grams: float | None
    on_budget: str | Callable[[Run, float], None] | None
    pushgateway: str | None
    prometheus: str | None
    zone: str | None
    runs_file: str | os.PathLike[str] | None
    config_file: str | None
    expected_end_time: float | None
    total_epochs: int | None
    first_epoch: int | None
    summary: bool
    root_pid: int | None
    register: bool
    settings: RunSettings | None
    wrapper: bool
    resume: bool
    # settings overrides
    push_interval: float | str
    heartbeat: float | str
    push_timeout: float | str
    retention: float | str
    meter_interval: float | str
    budget_interval: float | str
    local_meter: bool
    price_per_kwh: float
    currency: str
    pushgateway_auth: PushgatewayAuth

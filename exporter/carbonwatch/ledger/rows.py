"""The shapes the ledger answers with (its HTTP API's JSON, its /metrics snapshot): one TypedDict each, so the
readers (`queries`), the API and the snapshot agree on every key."""

from __future__ import annotations

from typing import TypedDict


class Totals(TypedDict):
    energy_joules: float
    emissions_grams: float
    cost: float
    estimated_joules: float


class RunRow(TypedDict):
    """One run with its totals: a row of /api/v1/runs and of the export."""

    run_id: str
    user: str
    project: str
    model: str
    team: str
    status: str
    start: float | None
    end: float | None
    energy_joules: float
    emissions_grams: float
    cost: float
    currency: str
    budget_grams: float | None
    samples: float | None
    epochs: float | None
    estimated: float  # the share of the energy estimated over scrape gaps, 0..1


class NodeRow(TypedDict):
    instance: str
    component: str
    zone: str
    energy_joules: float
    emissions_grams: float
    estimated_joules: float
    first_sample: float | None
    last_sample: float | None


class ComponentRow(TypedDict):
    component: str
    energy_joules: float
    emissions_grams: float
    estimated_joules: float


class SegmentRow(TypedDict):
    instance: str
    start: float
    end: float | None


class ResetRow(TypedDict):
    instance: str
    component: str
    metric: str
    time: float
    value_before: float
    value_after: float


class Quality(TypedDict):
    estimated_joules: float
    estimated_hours: list[int]
    counter_resets: list[ResetRow]
    notes: list[str]


class RunDetail(RunRow):
    """/api/v1/runs/{run_id}: the run row with its breakdown and data-quality notes."""

    labels: dict[str, str]
    nodes: list[NodeRow]
    components: list[ComponentRow]
    segments: list[SegmentRow]
    quality: Quality


class RunPage(TypedDict):
    runs: list[RunRow]
    total: int
    next_offset: int | None

"""The state file's schema, shared by the writer (carbonwatch.node.counters.Counters.export) and the reader
(carbonwatch.node.state.parse), so the two cannot drift apart. JSON: tuples are written as lists."""

from __future__ import annotations

from typing import TypedDict


class RunRecord(TypedDict):
    energy_joules: dict[str, float]  # component -> J
    emissions_grams: dict[str, float]  # component -> g CO2e
    sources: dict[str, str]  # component -> the weakest energy source of its samples
    origin: str
    labels: dict[str, str]
    last_seen_wall: float  # Unix time its last process was seen


class ContainerRecord(TypedDict):
    namespace: str
    pod: str
    container: str
    energy_joules: dict[str, float]
    emissions_grams: dict[str, float]
    last_seen_wall: float


DeviceRecord = tuple[str, str, str, float]  # (component, key, source, joules)


class CountersRecord(TypedDict):
    """Every counter that survives a restart (what `Counters.export` gives and `Counters.restore` takes)."""

    devices: list[DeviceRecord]
    node_energy_joules: dict[str, float]
    node_emissions_grams: dict[str, float]
    unattributed_energy_joules: dict[str, float]
    runs: dict[str, RunRecord]
    containers: list[ContainerRecord]


class StateRecord(CountersRecord):
    """A state file as read back: the counters and when they were written."""

    saved_at: float

"""The exporter's monotonic counters: device, node, unattributed, run and container energy and emissions.

They only ever grow while the exporter serves; `export()` and `restore()` carry them across restarts through
carbonwatch.node.state. Emissions are added per sample as dE x I(t) / 3.6e6 with the intensity of that sample, so
no later intensity change re-prices what was already emitted.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable

from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.node.identity import ContainerRef, RunIdentity
from carbonwatch.node.model import ContainerState, RunState
from carbonwatch.node.stateschema import CountersRecord

# An ended run nobody scrapes (no Prometheus, or one that is down) is kept at most this long past its linger.
UNSCRAPED_MAX_SECONDS = 86400.0


def grams_per_joule(grams_per_kwh: float) -> float:
    return grams_per_kwh / JOULES_PER_KWH


class Counters:
    def __init__(self) -> None:
        self.devices: dict[tuple[str, str, str], float] = {}  # (component, key, source) -> J
        self.node_energy: dict[str, float] = {}  # component -> J, all energy of the node
        self.node_emissions: dict[str, float] = {}  # component -> g
        self.unattributed: dict[str, float] = {}  # component -> J no process took
        self.other: dict[str, float] = {}  # component -> J of pid="other" (not durable: a process counter)
        self.runs: dict[str, RunState] = {}
        self.containers: dict[tuple[str, str, str], ContainerState] = {}
        # run id -> last_seen of the newest copy of the ended run that a scrape served (its final values)
        self._served: dict[str, float] = {}
        self._served_lock = threading.Lock()  # note_served runs in the HTTP threads, expire in the sampler's

    # -- adding ------------------------------------------------------------------------------------

    def add_device(self, component: str, key: str, source: str, joules: float) -> float:
        total = self.devices.get((component, key, source), 0.0) + joules
        self.devices[(component, key, source)] = total
        return total

    def add_node(self, component: str, joules: float, unattributed: float, factor: float | None) -> None:
        _add(self.node_energy, component, joules)
        _add(self.unattributed, component, unattributed)
        if factor is not None:
            _add(self.node_emissions, component, joules * factor)

    def run(self, run_id: str, identity: RunIdentity | None) -> RunState:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = RunState(run_id)
        if identity is not None and identity.run_id == run_id:
            if not run.origin:  # the first origin that found a run names it
                run.origin = identity.origin
            for k, v in identity.labels.items():  # labels are filled in as they become known
                if v and not run.labels.get(k):
                    run.labels[k] = v
        return run

    def container(self, ref: ContainerRef, now: float) -> ContainerState:
        key = (ref.namespace, ref.pod, ref.container)
        box = self.containers.get(key)
        if box is None:
            box = self.containers[key] = ContainerState(ref.namespace, ref.pod, ref.container)
        box.last_seen = now
        return box

    @staticmethod
    def add_energy(target: RunState | ContainerState, component: str, joules: float, factor: float | None) -> None:
        _add(target.energy_joules, component, joules)
        if factor is not None:
            _add(target.emissions_grams, component, joules * factor)

    def note_served(self, runs: Iterable[RunState]) -> None:
        """A scrape served these run copies (the collector calls this): an ended run's copy (no live process)
        holds its final values, so from now on the run may be forgotten once its linger is over."""
        with self._served_lock:
            for r in runs:
                if not r.live_processes:
                    self._served[r.run_id] = max(self._served.get(r.run_id, r.last_seen), r.last_seen)

    def expire(self, now: float, linger: float) -> None:
        """Forget runs whose last process ended more than `linger` seconds ago and whose final values a scrape
        has served (so no run's last part vanishes unseen; unscraped, at most UNSCRAPED_MAX_SECONDS more), and
        containers `linger` seconds after their last process."""
        with self._served_lock:
            served = dict(self._served)

        def keep(run_id: str, r: RunState) -> bool:
            if r.live_processes or now - r.last_seen <= linger:
                return True
            seen_final = served.get(run_id, float("-inf")) >= r.last_seen
            return not seen_final and now - r.last_seen <= linger + UNSCRAPED_MAX_SECONDS

        self.runs = {k: r for k, r in self.runs.items() if keep(k, r)}
        self.containers = {k: c for k, c in self.containers.items() if now - c.last_seen <= linger}
        with self._served_lock:
            self._served = {k: v for k, v in self._served.items() if k in self.runs}

    # -- reading -----------------------------------------------------------------------------------

    def runs_copy(self) -> list[RunState]:
        return [dataclasses.replace(r, power_watts=dict(r.power_watts), energy_joules=dict(r.energy_joules),
                                    sources=dict(r.sources), emissions_grams=dict(r.emissions_grams),
                                    labels=dict(r.labels)) for r in self.runs.values()]

    def containers_copy(self) -> list[ContainerState]:
        return [dataclasses.replace(c, energy_joules=dict(c.energy_joules), emissions_grams=dict(c.emissions_grams))
                for c in self.containers.values()]

    # -- across restarts ---------------------------------------------------------------------------

    def export(self, now: float, wall: float) -> CountersRecord:
        """Plain JSON-able data; times are stored as wall clock (the monotonic clock restarts with us)."""
        return {
            "devices": [(c, k, s, v) for (c, k, s), v in sorted(self.devices.items())],
            "node_energy_joules": dict(self.node_energy),
            "node_emissions_grams": dict(self.node_emissions),
            "unattributed_energy_joules": dict(self.unattributed),
            "runs": {
                rid: {
                    "energy_joules": dict(r.energy_joules),
                    "emissions_grams": dict(r.emissions_grams),
                    "sources": dict(r.sources),
                    "origin": r.origin,
                    "labels": dict(r.labels),
                    "last_seen_wall": wall - (now - r.last_seen),
                }
                for rid, r in sorted(self.runs.items())
            },
            "containers": [
                {"namespace": c.namespace, "pod": c.pod, "container": c.container,
                 "energy_joules": dict(c.energy_joules), "emissions_grams": dict(c.emissions_grams),
                 "last_seen_wall": wall - (now - c.last_seen)}
                for c in self.containers.values()
            ],
        }

    def restore(self, state: CountersRecord, now: float, wall: float, linger: float) -> set[str]:
        """Continue from `state` (validated by carbonwatch.node.state.parse). Runs and containers whose linger ran
        out while the exporter was down are not brought back. Returns the components restored."""
        components: set[str] = set()
        for comp, key, source, value in state["devices"]:
            self.devices[(comp, key, source)] = float(value)
            components.add(comp)
        self.node_energy = dict(state["node_energy_joules"])
        self.node_emissions = dict(state["node_emissions_grams"])
        self.unattributed = dict(state["unattributed_energy_joules"])
        for rid, r in state["runs"].items():
            age = max(0.0, wall - r["last_seen_wall"])
            if age > linger:
                continue
            self.runs[rid] = RunState(rid, energy_joules=dict(r["energy_joules"]), sources=dict(r["sources"]),
                                      last_seen=now - age, emissions_grams=dict(r["emissions_grams"]),
                                      origin=r["origin"], labels=dict(r["labels"]))  # fmt: skip
        for c in state["containers"]:
            age = max(0.0, wall - c["last_seen_wall"])
            if age > linger:
                continue
            box = ContainerState(c["namespace"], c["pod"], c["container"], dict(c["energy_joules"]),
                                 dict(c["emissions_grams"]), now - age)
            self.containers[(box.namespace, box.pod, box.container)] = box
        return components


def _add(acc: dict[str, float], key: str, value: float) -> None:
    acc[key] = acc.get(key, 0.0) + value

"""prometheus-client collector: fresh families from the sampler's latest snapshot on every scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from carbonwatch.contracts import BY_NAME, COMPONENTS, RUN_LABELS
from carbonwatch.node.identity import IdentityStats
from carbonwatch.node.model import CollectorStatus, RunState, Snapshot


class SnapshotCollector(Collector):
    def __init__(
        self,
        snapshot: Callable[[], Snapshot | None],
        node_labels: Callable[[], dict[str, str]],
        sample_interval: float,
        environ_unreadable: Callable[[], int] = lambda: 0,
        state: Callable[[], tuple[str, int, float | None]] | None = None,
        devices: Callable[[], dict[str, int]] = dict,
        disabled: Iterable[str] = (),
        identity: Callable[[], IdentityStats] | None = None,
        served: Callable[[list[RunState]], None] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._node_labels = node_labels
        self._interval = sample_interval
        self._environ_unreadable = environ_unreadable
        self._state = state  # () -> (restore status, write failures, last write time)
        self._devices = devices
        self._disabled = tuple(disabled)
        self._identity = identity
        self._served = served  # told which run copies each scrape served (Counters.note_served: linger)

    def describe(self) -> list[Metric]:
        return []  # registering never touches the hardware

    def collect(self) -> Iterator[Metric]:
        f = {name: spec.family() for name, spec in BY_NAME.items()}
        labels = self._node_labels()
        f["carbonwatch_node_info"].add_metric([labels.get(k, "") for k in BY_NAME["carbonwatch_node_info"].labels], 1)
        f["carbonwatch_sample_interval_seconds"].add_metric([], self._interval)
        f["carbonwatch_process_environ_unreadable"].add_metric([], self._environ_unreadable())
        if self._state is not None:
            restore, failures, last_write = self._state()
            f["carbonwatch_state_restore_status"].add_metric([restore], 1)
            f["carbonwatch_state_write_failures"].add_metric([], failures)
            if last_write is not None:
                f["carbonwatch_state_last_write_timestamp_seconds"].add_metric([], last_write)
        for name, count in sorted(self._devices().items()):
            f["carbonwatch_collector_devices"].add_metric([name], count)
        if self._identity is not None:
            self._fill_identity(f, self._identity())
        for name in self._disabled:
            f["carbonwatch_collector_info"].add_metric([name, "disabled", "turned off in the configuration"], 1)
        snap = self._snapshot()
        if snap is not None:
            self._fill(f, snap)
            if self._served is not None:
                self._served(snap.runs)
        for fam in f.values():
            if fam.samples:
                yield fam

    @staticmethod
    def _fill_identity(f: dict[str, GaugeMetricFamily | CounterMetricFamily], st: IdentityStats) -> None:
        for (source, label, reason), n in sorted(st.label_rejections.items()):
            f["carbonwatch_label_rejections"].add_metric([source, label, reason], n)
        if st.kubelet is not None:
            f["carbonwatch_kubelet_pods"].add_metric([], st.kubelet.pods)
            f["carbonwatch_kubelet_refresh_errors"].add_metric([], st.kubelet.errors)
            if st.kubelet.last_success is not None:
                f["carbonwatch_kubelet_last_success_timestamp_seconds"].add_metric([], st.kubelet.last_success)

    @staticmethod
    def _fill(f: dict[str, GaugeMetricFamily | CounterMetricFamily], snap: Snapshot) -> None:
        f["carbonwatch_sample_timestamp_seconds"].add_metric([], snap.timestamp)
        for g in snap.gpus:
            gl = [str(g.index), g.uuid]
            f["carbonwatch_gpu_info"].add_metric([str(g.index), g.uuid, g.name], 1)
            if g.power_watts is not None:
                f["carbonwatch_gpu_power_watts"].add_metric(gl, g.power_watts)
            if g.utilization_ratio is not None:
                f["carbonwatch_gpu_utilization_ratio"].add_metric(gl, g.utilization_ratio)
        uuids = {str(g.index): g.uuid for g in snap.gpus}
        for d in snap.devices:
            if d.component == "gpu":
                f["carbonwatch_gpu_energy_joules"].add_metric([d.key, uuids.get(d.key, ""), d.source], d.energy_joules)
            elif d.component == "cpu":
                f["carbonwatch_cpu_power_watts"].add_metric([d.key, d.source], d.power_watts)
                f["carbonwatch_cpu_energy_joules"].add_metric([d.key, d.source], d.energy_joules)
            elif d.component == "memory":
                f["carbonwatch_memory_power_watts"].add_metric([d.source], d.power_watts)
                f["carbonwatch_memory_energy_joules"].add_metric([d.source], d.energy_joules)
        SnapshotCollector._fill_accounts(f, snap)

    @staticmethod
    def _fill_accounts(f: dict[str, GaugeMetricFamily | CounterMetricFamily], snap: Snapshot) -> None:
        """Processes, runs and containers."""
        present = {d.component for d in snap.devices}
        for p in snap.processes:
            pid = "other" if p.pid < 0 else str(p.pid)
            for comp in COMPONENTS:
                if comp not in present:
                    continue
                lv = [pid, p.comm, p.run_id, comp]
                f["carbonwatch_process_power_watts"].add_metric(lv, p.power_watts.get(comp, 0.0))
                f["carbonwatch_process_energy_joules"].add_metric(lv, p.energy_joules.get(comp, 0.0))
        for r in snap.runs:
            labels = [r.labels.get(k, "") for k in RUN_LABELS]
            f["carbonwatch_run_info"].add_metric([r.run_id, r.origin, *labels, "", ""], 1)  # host, status: the client's
            for comp, source in sorted(r.sources.items()):
                f["carbonwatch_run_source_info"].add_metric([r.run_id, comp, source], 1)
            for comp in COMPONENTS:
                if comp not in r.energy_joules:
                    continue
                f["carbonwatch_run_power_watts"].add_metric([r.run_id, comp], r.power_watts.get(comp, 0.0))
                f["carbonwatch_run_energy_joules"].add_metric([r.run_id, comp], r.energy_joules.get(comp, 0.0))
                if comp in r.emissions_grams:
                    f["carbonwatch_run_emissions_grams"].add_metric([r.run_id, comp], r.emissions_grams[comp])
        for c in snap.containers:
            for comp in COMPONENTS:
                if comp in c.energy_joules:
                    lv = [c.namespace, c.pod, c.container, comp]
                    f["carbonwatch_container_energy_joules"].add_metric(lv, c.energy_joules[comp])
                    if comp in c.emissions_grams:
                        f["carbonwatch_container_emissions_grams"].add_metric(lv, c.emissions_grams[comp])
        SnapshotCollector._fill_node(f, snap)

    @staticmethod
    def _fill_node(f: dict[str, GaugeMetricFamily | CounterMetricFamily], snap: Snapshot) -> None:
        """The node's totals, intensity, unattributed rest and collectors."""
        present = {d.component for d in snap.devices}
        for comp in COMPONENTS:
            if comp in snap.node_energy_joules:
                f["carbonwatch_energy_joules"].add_metric([comp], snap.node_energy_joules[comp])
            if comp in snap.node_emissions_grams:
                f["carbonwatch_emissions_grams"].add_metric([comp], snap.node_emissions_grams[comp])
        if snap.intensity is not None:
            f["carbonwatch_node_intensity_grams_per_kwh"].add_metric(
                [snap.intensity.zone, snap.intensity.source], snap.intensity.grams_per_kwh
            )
        for comp in COMPONENTS:
            if comp in present:
                f["carbonwatch_unattributed_power_watts"].add_metric(
                    [comp], snap.unattributed_power_watts.get(comp, 0.0)
                )
                f["carbonwatch_unattributed_energy_joules"].add_metric(
                    [comp], snap.unattributed_energy_joules.get(comp, 0.0)
                )
        for name, st in sorted(snap.collectors.items()):
            f["carbonwatch_collector_success"].add_metric([name], 1.0 if st.success else 0.0)
            f["carbonwatch_collector_duration_seconds"].add_metric([name], st.duration_seconds)
            f["carbonwatch_collector_info"].add_metric([name, _status(st), st.error[:500]], 1)


def _status(st: CollectorStatus) -> str:
    if st.absent:
        return "absent"
    return "ok" if st.success else "failed"

"""The identity chain: env > registration > parent's named run > kubernetes > slurm > parent's run (see the
package docstring)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from carbonwatch.contracts import ORIGINS
from carbonwatch.node.config import ExporterConfig, KubernetesConfig
from carbonwatch.node.identity import slurm
from carbonwatch.node.identity.cgroups import CgroupInfo, parse_cgroup
from carbonwatch.node.identity.cleaning import LabelCleaner
from carbonwatch.node.identity.kubelet import KubeletClient, PodCache, PodInfo, k8s_run_id, kubelet_settings
from carbonwatch.node.identity.model import (
    ENV_LABELS,
    LABELS,
    SANDBOX,
    ContainerRef,
    IdentityStats,
    ProcessIdentity,
    RunIdentity,
)
from carbonwatch.node.model import ProcessReading
from carbonwatch.node.registration import Registration


@dataclass
class _Facts:
    """What a process's lifetime-fixed environment and cgroup say; computed once per (pid, start)."""

    env_labels: dict[str, str]
    cgroup: CgroupInfo
    slurm_job: str  # "" outside any job
    slurm_uid: int | None
    slurm_raw: dict[str, str]  # SLURM labels from its environment, cleaned
    last_seen: float


@dataclass(frozen=True)
class _PodView:
    pod: PodInfo
    run: RunIdentity | None
    containers: Mapping[str, ContainerRef]
    sandbox: ContainerRef


class Resolver:
    """The identity chain env > registration > parent > kubernetes > slurm (see the package docstring)."""

    def __init__(
        self,
        pods: PodCache | None = None,
        kubernetes: KubernetesConfig | None = None,
        slurm_cluster: str | None = None,  # None: SLURM off
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        fact_ttl: float = 600.0,
        user_name: Callable[[int], str] = slurm.user_name,
    ) -> None:
        self.pods = pods
        self.k8s = kubernetes or KubernetesConfig()
        self.slurm_cluster = slurm_cluster
        self.proc_root = proc_root
        self.clock = clock
        self.fact_ttl = fact_ttl
        self.user_name = user_name
        self.cleaner = LabelCleaner(clock)
        self._facts: dict[tuple[int, float], _Facts] = {}
        self._jobs: dict[str, tuple[dict[str, str], float]] = {}  # SLURM job -> (labels learnt, last seen)
        self._users: dict[int, str] = {}
        self._view: dict[str, _PodView] = {}
        self._last_prune = clock()
        if pods is not None:
            pods.on_refresh = self._pods_refreshed

    # -- lifecycle (the kubelet's background refresh) --

    def start(self) -> None:
        if self.pods is not None:
            self.pods.start()

    def close(self) -> None:
        if self.pods is not None:
            self.pods.close()

    def stats(self) -> IdentityStats:
        return IdentityStats(
            label_rejections=dict(self.cleaner.rejected),
            kubelet=self.pods.stats if self.pods is not None else None,
            cached_processes=len(self._facts),
            cached_jobs=len(self._jobs),
            pods=len(self._view),
        )

    # -- pods (runs in the refresh thread) --

    def _pods_refreshed(self, old: dict[str, PodInfo], new: dict[str, PodInfo]) -> None:
        prev = self._view
        view: dict[str, _PodView] = {}
        for uid, pod in new.items():
            before = prev.get(uid)
            view[uid] = before if before is not None and before.pod == pod else self._pod_view(pod)
        self._view = view  # one reference swap: assign() sees the old or the new view, whole

    def _pod_view(self, pod: PodInfo) -> _PodView:
        src = ("pod", f"pod {pod.namespace}/{pod.name}")
        keys = self.k8s.pod_labels
        raw: dict[str, str] = {}
        for label in LABELS:
            for key in keys.get(label, ()):
                if pod.labels.get(key):
                    raw[label] = pod.labels[key]
                    break
        labels = self.cleaner.labels(*src, raw)
        run_id = None
        for key in keys.get("run_id", ()):
            if pod.labels.get(key):
                run_id = self.cleaner.run_id(*src, pod.labels[key])
                if run_id:
                    break
        if run_id is None and pod.namespace not in self.k8s.exclude_namespaces and pod.owner_kind != "DaemonSet":
            if pod.job:
                run_id = k8s_run_id(pod.namespace, pod.job)
            elif self.k8s.pod_runs:
                run_id = k8s_run_id(pod.namespace, pod.name)
        run = RunIdentity(run_id, "kubernetes", labels) if run_id else None
        containers = {cid: ContainerRef(pod.namespace, pod.name, name, pod.uid) for cid, name in pod.containers.items()}
        return _PodView(pod, run, containers, ContainerRef(pod.namespace, pod.name, SANDBOX, pod.uid))

    # -- per process --

    def _facts_of(self, p: ProcessReading, now: float) -> _Facts:
        key = (p.pid, p.start_time)
        f = self._facts.get(key)
        if f is not None:
            f.last_seen = now
            return f
        env = dict(p.environ)
        where = f"process {p.pid} ({p.comm[:32]})"
        env_labels = self.cleaner.labels("environment", where, {k: env[v] for k, v in ENV_LABELS.items() if v in env})
        if p.run_id is None and env.get("CARBONWATCH_RUN_ID"):  # set, but not a run id: refused, counted, logged
            self.cleaner.run_id("environment", where, env["CARBONWATCH_RUN_ID"])
        cg = parse_cgroup(p.cgroup)
        job, uid, raw = "", None, {}
        if self.slurm_cluster is not None:
            found = slurm.job_of(env, cg)
            if found is not None:
                job, uid = found
                raw = self.cleaner.labels("slurm", f"SLURM job {job} (process {p.pid})", slurm.raw_labels(env))
                if uid is None and "user" not in raw:  # no SLURM_JOB_USER (or an unreadable environment)
                    uid = slurm.process_uid(self.proc_root, p.pid)
        f = _Facts(env_labels, cg, job, uid, raw, now)
        self._facts[key] = f
        return f

    def _slurm_run(self, f: _Facts, now: float) -> RunIdentity:
        """The job's run. What one process's environment tells about the job (account, name, user), its other
        processes share: a worker whose environment was cleared keeps the job's account."""
        assert self.slurm_cluster is not None
        learnt = self._learn(f, now)
        labels = dict(f.slurm_raw)
        for k, v in learnt.items():
            labels.setdefault(k, v)
        if "user" not in labels and f.slurm_uid is not None:  # the job owner's login name, else the uid
            name = self._users.get(f.slurm_uid)
            if name is None:
                name = self._users[f.slurm_uid] = self.user_name(f.slurm_uid)
            cleaned = self.cleaner.label("slurm", f"SLURM job {f.slurm_job}", "user", name)
            if cleaned:
                labels["user"] = cleaned
        return RunIdentity(slurm.run_id(self.slurm_cluster, f.slurm_job), "slurm", labels)

    def _learn(self, f: _Facts, now: float) -> dict[str, str]:
        learnt = self._jobs[f.slurm_job][0] if f.slurm_job in self._jobs else {}
        if any(k not in learnt for k in f.slurm_raw):
            learnt = dict(learnt)
            for k, v in f.slurm_raw.items():
                learnt.setdefault(k, v)
        self._jobs[f.slurm_job] = (learnt, now)
        return learnt

    def _context_labels(self, f: _Facts, view: _PodView | None, now: float) -> dict[str, str]:
        """Labels the process's pod or job gives it (under those of its own environment)."""
        if view is not None and view.run is not None:
            return dict(view.run.labels)
        if view is not None:
            return {}
        if f.slurm_job and self.slurm_cluster is not None:
            return dict(self._slurm_run(f, now).labels)
        return {}

    def assign(
        self, readings: Sequence[ProcessReading], registrations: Sequence[Registration]
    ) -> dict[int, ProcessIdentity]:
        """Identity of each reading that has a run or a container (others are left out)."""
        now = self.clock()
        by_pid = {p.pid: p for p in readings}
        registered: dict[int, str] = {}
        for r in registrations:
            p = by_pid.get(r.pid)
            if p is not None and (r.start_time is None or abs(p.start_time - r.start_time) < 0.05):
                registered[r.pid] = r.run_id
        facts = {p.pid: self._facts_of(p, now) for p in readings}
        views = self._views_of(facts, now)
        chain = _Chain(self, by_pid, registered, facts, views, now)
        out: dict[int, ProcessIdentity] = {}
        for p in readings:
            run = chain.run_of(p.pid)
            container: ContainerRef | None = None
            v = views.get(p.pid)
            if v is not None:
                cid = facts[p.pid].cgroup.container_id
                container = v.containers.get(cid, v.sandbox) if cid else v.sandbox
            if run is not None or container is not None:
                out[p.pid] = ProcessIdentity(run, container)
        self._prune(now)
        return out

    def _views_of(self, facts: Mapping[int, _Facts], now: float) -> dict[int, _PodView | None]:
        """Each pod process's pod view (None: a pod not listed yet, and the kubelet is asked again); SLURM jobs'
        labels learnt first, so every process of a job sees them in this sample."""
        view_all = self._view
        wake = False
        views: dict[int, _PodView | None] = {}
        for pid, f in facts.items():
            if f.slurm_job and f.slurm_raw:
                self._learn(f, now)
            if f.cgroup.pod_uid:
                v = view_all.get(f.cgroup.pod_uid)
                if v is None or (f.cgroup.container_id and f.cgroup.container_id not in v.containers):
                    wake = True
                views[pid] = v
        if wake and self.pods is not None:
            self.pods.request_refresh()
        return views

    def _prune(self, now: float) -> None:
        if 0.0 <= now - self._last_prune < min(60.0, self.fact_ttl / 4):
            return  # (a clock that went back, e.g. a replaced one, prunes now and restarts the period)
        self._last_prune = now
        cutoff = now - self.fact_ttl
        self._facts = {k: f for k, f in self._facts.items() if f.last_seen >= cutoff}
        self._jobs = {j: v for j, v in self._jobs.items() if v[1] >= cutoff}
        if len(self._users) > 4096:
            self._users.clear()


def run_infos(identities: Iterable[ProcessIdentity]) -> dict[str, RunIdentity]:
    """One identity per run for its info series: the strongest origin any of its processes carries (in the
    order of ORIGINS), and every label any of them knows, that origin's first."""
    rank = {o: i for i, o in enumerate(ORIGINS)}
    best: dict[str, RunIdentity] = {}
    extra: dict[str, dict[str, str]] = {}
    for ident in identities:
        run = ident.run
        if run is None:
            continue
        cur = best.get(run.run_id)
        if cur is None or rank.get(run.origin, 9) < rank.get(cur.origin, 9):
            best[run.run_id] = run
        more = extra.setdefault(run.run_id, {})
        for k, v in run.labels.items():
            more.setdefault(k, v)
    out: dict[str, RunIdentity] = {}
    for rid, run in best.items():
        labels = dict(extra[rid])
        labels.update(run.labels)
        out[rid] = RunIdentity(rid, run.origin, labels)
    return out


def build_resolver(cfg: ExporterConfig, environ: Mapping[str, str] | None = None) -> Resolver:
    """The resolver for an exporter config. Raises ConfigError (naming the key) for an unusable setting; does
    not contact the kubelet (`start()` does, in the background)."""
    env = os.environ if environ is None else environ
    pods: PodCache | None = None
    settings = kubelet_settings(cfg.kubernetes, env)
    if settings is not None:
        pods = PodCache(KubeletClient(settings), settings.refresh_interval)
    cluster = slurm.cluster_name(cfg.slurm, env) if cfg.slurm.enabled else None
    ttl = max(600.0, 3 * cfg.process.scan_interval)
    return Resolver(pods, cfg.kubernetes, cluster, cfg.process.proc_root, fact_ttl=ttl)


@dataclass
class _Chain:
    """The run of each process of one sample, memoised along parent links."""

    resolver: Resolver
    by_pid: Mapping[int, ProcessReading]
    registered: Mapping[int, str]
    facts: Mapping[int, _Facts]
    views: Mapping[int, _PodView | None]
    now: float
    _runs: dict[int, RunIdentity | None] = field(default_factory=dict)
    _contexts: dict[int, dict[str, str]] = field(default_factory=dict)

    def context(self, pid: int) -> dict[str, str]:
        if pid not in self._contexts:
            self._contexts[pid] = self.resolver._context_labels(self.facts[pid], self.views.get(pid), self.now)
        return self._contexts[pid]

    def with_env(self, pid: int, base: Mapping[str, str]) -> dict[str, str]:
        labels = dict(base)
        labels.update(self.facts[pid].env_labels)
        return labels

    def run_of(self, pid: int, depth: int = 0) -> RunIdentity | None:
        if pid in self._runs:
            return self._runs[pid]
        p = self.by_pid.get(pid)
        if p is None or depth > 256:
            return None
        self._runs[pid] = None  # a cycle (pid reuse mid-scan) ends here
        parent = self.run_of(p.ppid, depth + 1) if p.ppid not in (0, pid) else None
        own = p.run_id or self.registered.get(pid)
        run: RunIdentity | None
        if own:
            run = RunIdentity(own, "env" if p.run_id else "registration", self.with_env(pid, self.context(pid)))
        elif parent is not None and parent.origin in ("env", "registration"):
            run = parent  # the child is in its parent's run, named the way the parent's was
        else:
            run = self._context_run(pid, parent)
        self._runs[pid] = run
        return run

    def _context_run(self, pid: int, parent: RunIdentity | None) -> RunIdentity | None:
        """A process without a run of its own or of a named parent: its pod's, its SLURM job's, else its
        parent's (outside pods)."""
        v = self.views.get(pid)
        f = self.facts[pid]
        if v is not None and v.run is not None:
            if not f.env_labels:
                return v.run
            return RunIdentity(v.run.run_id, "kubernetes", self.with_env(pid, v.run.labels))
        if f.slurm_job and self.resolver.slurm_cluster is not None and not f.cgroup.pod_uid:
            srun = self.resolver._slurm_run(f, self.now)
            return srun if not f.env_labels else RunIdentity(srun.run_id, "slurm", self.with_env(pid, srun.labels))
        if parent is not None and not f.cgroup.pod_uid:
            return parent
        return None

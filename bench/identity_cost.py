"""What the fleet identity resolver (Kubernetes pods, SLURM jobs) costs per sample next to the sampler's built-in
one (own run id, registration, parent), side by side on the same readings.

A node with `--procs` processes (default 3,000): a third in 100 pods (Kubeflow jobs, cgroup v2, containerd), a
third in 50 SLURM jobs (cgroup v1, SLURM_* environment), a third plain, a tenth of all with CARBONWATCH_RUN_ID.
Both resolvers assign the same list of readings in turns; the figures are CPU milliseconds per `assign` call,
warm (per-process facts cached, as between full scans) and cold (every process new: the first full scan, or
a node whose processes all changed). The pod list comes from memory here: the kubelet is read in a background
thread, never in `assign`. Run: `.venv/bin/python -m bench.identity_cost [--procs 3000 --rounds 50]`.
Results go to bench/results/identity_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "exporter"))

from carbonwatch.node.identity import Resolver  # noqa: E402
from carbonwatch.node.identity.kubelet import PodCache, PodInfo  # noqa: E402
from carbonwatch.node.model import ProcessReading  # noqa: E402
from carbonwatch.node.sampler import BasicResolver  # noqa: E402


class Pods:
    def __init__(self, pods: dict[str, PodInfo]) -> None:
        self.pods = pods

    def fetch(self) -> dict[str, PodInfo]:
        return self.pods


def node(n: int, start: float) -> tuple[list[ProcessReading], dict[str, PodInfo]]:
    readings: list[ProcessReading] = []
    pods: dict[str, PodInfo] = {}
    for i in range(n):
        pid = 1000 + i
        kind = i % 3
        env: tuple[tuple[str, str], ...] = ()
        cgroup = "0::/user.slice/user-1000.slice/session-1.scope\n"
        if kind == 0:
            p = i // 3 % 100
            uid = f"{p:08x}-0000-4000-8000-000000000000"
            cid = f"{p:064x}"
            cgroup = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}"
                      f".slice/cri-containerd-{cid}.scope\n")
            pods[uid] = PodInfo(uid, "ml", f"job{p // 4}-worker-{p % 4}", {"training.kubeflow.org/job-name":
                                f"job{p // 4}", "carbonwatch.dev/user": "ada"}, {cid: "pytorch"}, f"job{p // 4}",
                                "PyTorchJob")
        elif kind == 1:
            j = i // 3 % 50
            env = (("SLURM_JOB_ID", str(1000 + j)), ("SLURM_JOB_USER", "alice"), ("SLURM_JOB_ACCOUNT", "physics"),
                   ("SLURM_JOB_NAME", "train"))
            cgroup = "".join(f"{k}:{c}:/slurm/uid_1000/job_{1000 + j}/step_0/task_0\n"
                             for k, c in ((4, "memory"), (3, "cpu,cpuacct"), (1, "name=systemd")))
        run_id = f"r{i // 10}" if i % 10 == 0 else None
        readings.append(ProcessReading(pid, 1, "python", 1.0, 1 << 20, start + i * 1e-3, run_id, env, cgroup))
    return readings, pods


def timed(fn: object, rounds: int) -> float:
    t0 = time.process_time()
    for _ in range(rounds):
        fn()  # type: ignore[operator]
    return (time.process_time() - t0) / rounds * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    readings, pods = node(args.procs, 100.0)
    cache = PodCache(Pods(pods), 30.0)
    fleet = Resolver(cache, slurm_cluster="hpc1", user_name=lambda uid: "alice")
    cache.refresh()
    basic = BasicResolver()
    fleet.assign(readings, [])
    warm_basic = warm_fleet = 0.0
    for _ in range(5):  # in turns, so both see the same machine
        warm_basic += timed(lambda: basic.assign(readings, []), args.rounds) / 5
        warm_fleet += timed(lambda: fleet.assign(readings, []), args.rounds) / 5
    cold = 0.0
    for k in range(5):
        fresh, _ = node(args.procs, 10_000.0 * (k + 1))  # every process new: facts computed again
        t0 = time.process_time()
        fleet.assign(fresh, [])
        cold += (time.process_time() - t0) * 1000.0 / 5
    ids = fleet.assign(readings, [])
    origins: dict[str, int] = {}
    for ident in ids.values():
        if ident.run is not None:
            origins[ident.run.origin] = origins.get(ident.run.origin, 0) + 1
    result = {
        "procs": args.procs,
        "basic_warm_ms": round(warm_basic, 3),
        "fleet_warm_ms": round(warm_fleet, 3),
        "fleet_cold_ms": round(cold, 3),
        "warm_ratio": round(warm_fleet / warm_basic, 2) if warm_basic else None,
        "fleet_warm_share_of_core_at_1hz": round(warm_fleet / 1000.0, 5),
        "processes_by_origin": origins,
    }
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results" / "identity_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end: a fake pod and a fake SLURM job whose processes really burn CPU, under the real exporter (Kubernetes
through a kubelet on 127.0.0.1 answering /pods, SLURM on) and a real Prometheus with the project's rules.

The processes are real: their CPU time is the kernel's. Where they run is faked with a mirror /proc root: each
process's `stat` and `task/PID/children` are links to the real /proc files, while its `cgroup` (the pod's
container, or the job's /slurm/uid_N/job_M) and `environ` (SLURM_JOB_*) are written by the test, since the
test cannot put real processes into a pod or a job. Checked: the run info series the exporter publishes
(run id, origin, user, project, model), the per-container counters, the recorded per-run energy and labels in
Prometheus, the split between the two runs, and `carbonwatch job` on the recorded job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from carbonwatch import cli
from tests.exporter_proc import start_exporter
from tests.fleetfakes import FakeKubelet, k8s_path, pod, v1, v2
from tests.support import Prometheus, eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]
REPO = Path(__file__).resolve().parent.parent
POD_UID = "5f2b6e8a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
CID = "3f9c2a1b" * 8
BURN = "import time\nt = time.time()\nwhile time.time() - t < 90: pass\n"
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_USER": "alice", "SLURM_JOB_ACCOUNT": "physics",
             "SLURM_JOB_NAME": "train-gpt", "SLURM_CLUSTER_NAME": "hpc1"}






class MirrorProc:
    """A /proc root mirroring the real system-wide files and chosen real processes, with their cgroup and
    environment as the test says."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        for name in ("stat", "meminfo", "cpuinfo", "loadavg", "uptime"):
            if os.path.exists(f"/proc/{name}"):
                (root / name).symlink_to(f"/proc/{name}")

    def add(self, pid: int, cgroup: str, env: dict[str, str] | None = None) -> None:
        d = self.root / str(pid)
        d.mkdir()
        (d / "stat").symlink_to(f"/proc/{pid}/stat")
        (d / "task" / str(pid)).mkdir(parents=True)
        (d / "task" / str(pid) / "children").symlink_to(f"/proc/{pid}/task/{pid}/children")
        (d / "environ").write_bytes(b"PATH=/usr/bin\0" + b"".join(f"{k}={v}\0".encode() for k, v in
                                                                   (env or {}).items()))
        (d / "cgroup").write_text(cgroup)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    procs: list[subprocess.Popen[bytes]] = []
    kubelet = FakeKubelet(tmp_path, tls=True)
    token = tmp_path / "token"
    token.write_text(kubelet.token)
    prom: Prometheus | None = None
    exp = None
    try:
        mirror = MirrorProc(tmp_path / "proc")
        pod_p = subprocess.Popen([sys.executable, "-c", BURN])
        job_p = subprocess.Popen([sys.executable, "-c", BURN])
        job_child = subprocess.Popen([sys.executable, "-c", BURN])  # a second task of the job
        procs += [pod_p, job_p, job_child]
        mirror.add(pod_p.pid, v2(k8s_path(POD_UID, CID, "containerd", "systemd")))
        mirror.add(job_p.pid, v1("/slurm/uid_1000/job_4242/step_0/task_0"), SLURM_ENV)
        mirror.add(job_child.pid, v1("/slurm/uid_1000/job_4242/step_0/task_1"))  # environment cleared
        kubelet.items = [pod(POD_UID, "vision", "ddp-worker-0", {"pytorch": CID},
                             labels={"training.kubeflow.org/job-name": "ddp", "carbonwatch.dev/user": "ada",
                                     "carbonwatch.dev/project": "nlp", "carbonwatch.dev/model": "bert"},
                             owner=("kubeflow.org/v1", "PyTorchJob", "ddp"))]
        exp = start_exporter(tmp_path, {
            "zone": "DE", "sample_interval": "250ms",
            "collectors": {"gpu": False, "intensity": True},
            "cpu": {"source": "model", "tdp_watts": 100},
            "process": {"proc_root": str(mirror.root), "spool_dir": str(tmp_path / "spool"), "top_n": 5},
            "storage": {"path": str(tmp_path / "state")},
            "kubernetes": {"enabled": True, "kubelet_url": kubelet.url, "token_file": str(token),
                           "ca_file": kubelet.ca_file, "refresh_interval": "1s"},
            "slurm": {"enabled": True, "cluster": "hpc1"},
        })
        target = exp.url.split("//", 1)[1].split("/", 1)[0]
        prom = Prometheus(tmp_path, {"carbonwatch": [target]})
        url = prom.url
        yield {"exporter": exp, "prometheus": url, "pod": pod_p.pid, "job": job_p.pid, "kubelet": kubelet}
    finally:
        if prom is not None:
            prom.stop()
        if exp is not None:
            exp.stop()
        for p in procs:
            p.kill()
            p.wait()
        kubelet.close()


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out.append((s.labels, s.value))
    return out


def query(url: str, expr: str) -> list[dict[str, Any]]:
    body = requests.post(f"{url}/api/v1/query", data={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_pod_and_slurm_job_are_attributed_labelled_and_recorded(fleet, capsys):
    exp, url = fleet["exporter"], fleet["prometheus"]

    def both_runs() -> list[tuple[dict[str, str], float]] | None:
        info = series(exp.scrape(), "carbonwatch_run_info")
        return info if {lab["run_id"] for lab, _ in info} >= {"k8s:vision:ddp", "slurm-hpc1-4242"} else None

    info = {lab["run_id"]: lab for lab, _ in eventually(both_runs, 30, "run info of both runs")}
    assert info["k8s:vision:ddp"] == {"run_id": "k8s:vision:ddp", "origin": "kubernetes", "user": "ada",
                                      "project": "nlp", "model": "bert", "team": "", "host": "", "status": ""}
    assert info["slurm-hpc1-4242"] == {"run_id": "slurm-hpc1-4242", "origin": "slurm", "user": "alice",
                                       "project": "physics", "model": "train-gpt", "team": "", "host": "",
                                       "status": ""}
    time.sleep(6)  # a few seconds of burning, scraped and recorded every second
    text = exp.scrape()
    cont = {(lab["namespace"], lab["pod"], lab["container"], lab["component"]): v
            for lab, v in series(text, "carbonwatch_container_energy_joules_total")}
    assert cont[("vision", "ddp-worker-0", "pytorch", "cpu")] > 0
    assert all(k[:3] == ("vision", "ddp-worker-0", "pytorch") for k in cont)  # the only container on the node
    assert any(lab["pod"] == "ddp-worker-0" for lab, _ in series(text, "carbonwatch_container_emissions_grams_total"))
    runs = {(lab["run_id"], lab["component"]): v for lab, v in series(text, "carbonwatch_run_energy_joules_total")}
    pod_cpu, job_cpu = runs[("k8s:vision:ddp", "cpu")], runs[("slurm-hpc1-4242", "cpu")]
    # one busy process in the pod, two in the job (its second task found through the job's cgroup)
    assert job_cpu / pod_cpu == pytest.approx(2.0, rel=0.35)
    assert cont[("vision", "ddp-worker-0", "pytorch", "cpu")] == pytest.approx(pod_cpu, rel=0.05)

    def recorded() -> dict[str, dict[str, Any]] | None:
        got = {r["metric"]["run_id"]: r for r in query(url, "run_id:carbonwatch_energy_joules:total")}
        return got if {"k8s:vision:ddp", "slurm-hpc1-4242"} <= set(got) else None

    rec = eventually(recorded, 30, "recorded run energy")
    assert float(rec["k8s:vision:ddp"]["value"][1]) > 0 and float(rec["slurm-hpc1-4242"]["value"][1]) > 0
    def run_labels() -> dict[str, dict[str, str]] | None:
        got = {r["metric"]["run_id"]: r["metric"] for r in query(url, "run_id:carbonwatch_run_info:last")}
        return got if {"k8s:vision:ddp", "slurm-hpc1-4242"} <= set(got) else None

    labels = eventually(run_labels, 30, "recorded run labels")  # its group may evaluate at another moment
    assert (labels["slurm-hpc1-4242"]["user"], labels["slurm-hpc1-4242"]["project"]) == ("alice", "physics")
    assert (labels["k8s:vision:ddp"]["user"], labels["k8s:vision:ddp"]["model"]) == ("ada", "bert")

    assert cli.main(["job", "4242", "-M", "hpc1", "-P", "-n", "-o", "JobID,User,Account,JobName,Origin",
                     "--prometheus", url]) == 0
    assert capsys.readouterr().out.strip() == "4242|alice|physics|train-gpt|slurm"

"""Where a process runs, from its /proc/PID/cgroup: a Kubernetes pod and container, or a SLURM job.

Pure functions of the file's text, which is world-readable (no privilege needed). Handled:

- cgroup v1 (one line per hierarchy, `N:controllers:/path`) and v2 (`0::/path`);
- the kubelet's systemd driver (`kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`) and
  cgroupfs driver (`/kubepods/burstable/pod<uid>/<id>`), with any prefix (kind's `kubelet.slice/...`, or the
  `/../..` a private cgroup namespace puts in front);
- container naming of containerd (`cri-containerd-<id>.scope`, or the bare id), CRI-O (`crio-<id>.scope`,
  `crio-<id>`; `crio-conmon-<id>` is CRI-O's monitor, counted to the pod), Docker / cri-dockerd (`docker-<id>.scope`);
- static pods, whose uid is 32 hex digits without dashes;
- SLURM's task/cgroup plugin: v1 `/slurm/uid_<uid>/job_<id>/step_<s>/...` (also `/slurm_<node>/...` with
  several slurmd on one host) and v2 `/system.slice/slurmstepd.scope/job_<id>/step_<s>/...`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# `pod<uid>` as a whole component (cgroupfs) or as the last dash-separated part of a slice (systemd)
_POD_RE = re.compile(rf"^(?:.*-)?pod({_UUID}|[0-9a-f]{{32}})(?:\.slice)?$")
_CONTAINER_RE = re.compile(r"^(?:(cri-containerd|crio|docker|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")
_RUNTIMES = {"cri-containerd": "containerd", "containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_SLURM_V1_RE = re.compile(r"(?:^|/)slurm(?:_[^/]+)?/uid_(\d{1,10})/job_(\d{1,20})(?:/|$)")
_SLURM_V2_RE = re.compile(r"(?:^|/)(?:[^/]*_)?slurmstepd\.scope/job_(\d{1,20})(?:/|$)")


@dataclass(frozen=True)
class CgroupInfo:
    pod_uid: str = ""  # with dashes, as in the pod's metadata.uid
    container_id: str = ""  # 64 hex digits, as after "containerd://" in the pod's containerStatuses
    runtime: str = ""  # containerd | cri-o | docker, where the naming tells ("" for a bare id)
    slurm_job: str = ""  # job id (digits)
    slurm_uid: int | None = None  # the job owner's uid (cgroup v1 paths only)

    @property
    def empty(self) -> bool:
        return not (self.pod_uid or self.slurm_job)


NOTHING = CgroupInfo()


def cgroup_paths(text: str) -> list[str]:
    """The paths of a /proc/PID/cgroup text, the v2 (unified) one first."""
    unified: list[str] = []
    legacy: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        (unified if parts[0] == "0" and parts[1] == "" else legacy).append(parts[2])
    return unified + legacy


def _pod_in(path: str) -> tuple[str, str, str] | None:
    """(pod uid, container id, runtime) from one cgroup path, or None outside any pod."""
    comps = path.split("/")
    for i, comp in enumerate(comps):
        m = _POD_RE.match(comp)
        if not m:
            continue
        uid = m.group(1).replace("_", "-")
        for rest in comps[i + 1 :]:
            c = _CONTAINER_RE.match(rest)
            if c:
                return uid, c.group(2), _RUNTIMES.get(c.group(1) or "", "")
        return uid, "", ""  # the pod's own cgroup, a sandbox or a runtime monitor (crio-conmon-<id>)
    return None


def parse_cgroup(text: str) -> CgroupInfo:
    """Pod and container, or SLURM job, of the process whose /proc/PID/cgroup is `text`."""
    if not text:
        return NOTHING
    paths = cgroup_paths(text)
    best: tuple[str, str, str] | None = None
    for path in paths:
        found = _pod_in(path)
        if found is not None and (best is None or (found[1] and not best[1])):
            best = found
            if found[1]:
                break
    if best is not None:
        return CgroupInfo(pod_uid=best[0], container_id=best[1], runtime=best[2])
    for path in paths:
        m = _SLURM_V1_RE.search(path)
        if m:
            return CgroupInfo(slurm_job=m.group(2), slurm_uid=int(m.group(1)))
        m2 = _SLURM_V2_RE.search(path)
        if m2:
            return CgroupInfo(slurm_job=m2.group(1))
    return NOTHING

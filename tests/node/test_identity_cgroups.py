"""Pod, container and SLURM job from /proc/PID/cgroup, for every runtime, driver and cgroup version we name."""

from __future__ import annotations

import pytest

from carbonwatch.node.identity.cgroups import CgroupInfo, parse_cgroup
from tests.fleetfakes import k8s_path, v1, v2

UID = "5f2b6e8a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
CID = "3f9c2a1b" * 8


@pytest.mark.parametrize("runtime", ["containerd", "cri-o", "docker"])
@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("qos", ["burstable", "besteffort", "guaranteed"])
def test_pod_and_container_for_each_runtime_driver_version_and_qos(runtime, driver, version, qos):
    if runtime == "docker" and driver == "cgroupfs":
        path = k8s_path(UID, CID, "containerd", "cgroupfs", qos)  # Docker on cgroupfs names it by the bare id
    else:
        path = k8s_path(UID, CID, runtime, driver, qos)
    text = v1(path) if version == "v1" else v2(path)
    info = parse_cgroup(text)
    assert info.pod_uid == UID
    assert info.container_id == CID
    expected_runtime = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}[runtime]
    if driver == "systemd":
        assert info.runtime == expected_runtime
    assert info.slurm_job == ""


def test_systemd_v1_where_name_systemd_differs_from_the_controllers():
    path = k8s_path(UID, CID, "containerd", "systemd")
    text = v1(path, systemd_path="/system.slice/containerd.service")
    assert parse_cgroup(text) == CgroupInfo(UID, CID, "containerd")


@pytest.mark.parametrize("prefix", [
    "/../..",  # a private cgroup namespace: paths relative to the reader's own cgroup
    "/kubelet.slice/kubelet-kubepods.slice",  # kind and kubelet-in-a-slice set-ups
])
def test_prefixes_before_the_pod_are_ignored(prefix):
    uid_ = UID.replace("-", "_")
    path = f"{prefix}/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CID}.scope"
    if "kubelet.slice" in prefix:
        path = (f"{prefix}/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/"
                f"cri-containerd-{CID}.scope")
    assert parse_cgroup(v2(path)) == CgroupInfo(UID, CID, "containerd")


def test_nested_cgroup_inside_a_container_still_names_the_container():
    path = k8s_path(UID, CID, "containerd", "systemd") + "/init.scope"
    assert parse_cgroup(v2(path)).container_id == CID


def test_cri_o_monitor_and_pod_cgroup_give_the_pod_without_a_container():
    uid_ = UID.replace("-", "_")
    conmon = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{CID}.scope"
    assert parse_cgroup(v2(conmon)) == CgroupInfo(pod_uid=UID)
    assert parse_cgroup(v2(f"/kubepods/burstable/pod{UID}")) == CgroupInfo(pod_uid=UID)


def test_static_pod_uid_without_dashes():
    uid = "0123456789abcdef0123456789abcdef"
    assert parse_cgroup(v2(f"/kubepods/burstable/pod{uid}/{CID}")) == CgroupInfo(uid, CID, "")


@pytest.mark.parametrize("text", [
    v2("/system.slice/docker-" + CID + ".scope"),  # a plain Docker container: no pod
    v2("/user.slice/user-1000.slice/session-3.scope"),
    v1("/user.slice/user-1000.slice/session-3.scope"),
    v2("/"),
    "",
    "garbage without colons\n",
    v2("/kubepods/burstable/podnot-a-uid/" + CID),
])
def test_processes_outside_pods_and_jobs_get_nothing(text):
    assert parse_cgroup(text).empty


@pytest.mark.parametrize("text,job,uid", [
    (v1("/slurm/uid_1000/job_4242/step_0/task_0", systemd_path="/system.slice/slurmd.service"), "4242", 1000),
    (v1("/slurm/uid_1000/job_4242/step_batch/task_0"), "4242", 1000),
    (v1("/slurm_node07/uid_2001/job_17/step_extern"), "17", 2001),  # several slurmd on one host
    (v2("/system.slice/slurmstepd.scope/job_4242/step_batch/user/task_0"), "4242", None),
    (v2("/system.slice/slurmstepd.scope/job_4242/step_0/slurm"), "4242", None),  # the step's slurmstepd
    (v2("/system.slice/node07_slurmstepd.scope/job_99/step_0/user/task_1"), "99", None),
])
def test_slurm_job_from_its_cgroup_v1_and_v2(text, job, uid):
    info = parse_cgroup(text)
    assert (info.slurm_job, info.slurm_uid, info.pod_uid) == (job, uid, "")


def test_slurmd_itself_is_not_a_job():
    assert parse_cgroup(v2("/system.slice/slurmstepd.scope/system")).empty
    assert parse_cgroup(v2("/system.slice/slurmd.service")).empty

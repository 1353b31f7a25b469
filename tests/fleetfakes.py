"""Fakes for the fleet tests: a kubelet answering GET /pods with a v1 PodList, processes in pods and SLURM jobs
under a fake /proc, and the /proc/PID/cgroup texts each container runtime, cgroup driver and version writes.

The PodList has the shape the kubelet's /pods handler writes (pkg/kubelet/server: `encodePods` encodes a
`v1.PodList` with the legacy v1 codec: `kind`/`apiVersion` on the list, items without them, full metadata, spec
and status, `containerID` as `<runtime>://<64 hex>`).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fakeproc import FakeProc

# -- cgroup texts ---------------------------------------------------------------------------------------------

V1_CONTROLLERS = ("12:hugetlb", "11:memory", "10:cpu,cpuacct", "9:pids", "8:devices", "7:freezer",
                  "6:net_cls,net_prio", "5:blkio", "4:perf_event", "3:cpuset", "2:rdma", "1:name=systemd")


def v1(path: str, hybrid: bool = True, systemd_path: str | None = None) -> str:
    """A cgroup v1 /proc/PID/cgroup: every controller at `path` (name=systemd may differ), plus systemd's
    hybrid-mode `0::` line."""
    lines = [f"{c}:{systemd_path if (systemd_path and 'systemd' in c) else path}" for c in V1_CONTROLLERS]
    if hybrid:
        lines.append("0::/")
    return "\n".join(lines) + "\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


def slice_uid(uid: str) -> str:
    return uid.replace("-", "_")


def k8s_path(uid: str, cid: str, runtime: str = "containerd", driver: str = "systemd", qos: str = "burstable") -> str:
    """The cgroup path of container `cid` of pod `uid`, as the kubelet and runtime name it."""
    if driver == "systemd":
        prefix = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}[runtime]
        if qos == "guaranteed":
            return f"/kubepods.slice/kubepods-pod{slice_uid(uid)}.slice/{prefix}-{cid}.scope"
        return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{slice_uid(uid)}.slice/"
                f"{prefix}-{cid}.scope")
    name = f"crio-{cid}" if runtime == "cri-o" else cid
    if qos == "guaranteed":
        return f"/kubepods/pod{uid}/{name}"
    return f"/kubepods/{qos}/pod{uid}/{name}"


# -- a fake /proc with environments and cgroups ---------------------------------------------------------------


class FleetProc(FakeProc):
    """FakeProc whose processes also have an arbitrary environment and a cgroup file."""

    def spawn_in(self, pid: int, *, ppid: int = 1, comm: str = "python", env: Mapping[str, str] | bytes = b"",
                 cgroup: str = "", start: float = 1.0, cpu: float = 0.0, rss: int = 100 << 20) -> None:
        self.spawn(pid, ppid=ppid, comm=comm, start=start, cpu=cpu, rss=rss)
        d = self.root / str(pid)
        raw = env if isinstance(env, bytes) else b"".join(
            f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in env.items())
        (d / "environ").write_bytes(b"PATH=/usr/bin\0" + raw)
        (d / "cgroup").write_text(cgroup)


# -- the kubelet's pod list -----------------------------------------------------------------------------------


def container_status(name: str, cid: str, runtime: str = "containerd", image: str = "ghcr.io/acme/train:1.4") -> dict:
    scheme = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}[runtime]
    return {
        "name": name,
        "state": {"running": {"startedAt": "2026-11-20T10:00:05Z"}},
        "lastState": {},
        "ready": True,
        "restartCount": 0,
        "image": image,
        "imageID": "ghcr.io/acme/train@sha256:" + "ab" * 32,
        "containerID": f"{scheme}://{cid}",
        "started": True,
    }


def pod(uid: str, namespace: str, name: str, containers: Mapping[str, str], labels: Mapping[str, str] | None = None,
        owner: tuple[str, str, str] | None = None, runtime: str = "containerd", node: str = "gpu-node-1",
        init_containers: Mapping[str, str] | None = None) -> dict:
    """One item of the kubelet's PodList. `containers`: name -> container id; `owner`: (apiVersion, kind, name)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "resourceVersion": "48213",
        "creationTimestamp": "2026-11-20T10:00:00Z",
        "labels": dict(labels or {}),
        "annotations": {"kubernetes.io/config.seen": "2026-11-20T10:00:00.123456789Z",
                        "kubernetes.io/config.source": "api"},
    }
    if owner is not None:
        meta["generateName"] = name.rsplit("-", 1)[0] + "-"
        meta["ownerReferences"] = [{"apiVersion": owner[0], "kind": owner[1], "name": owner[2],
                                    "uid": "0c7a1b2e-9d4f-4e61-8b3a-5f6e7d8c9b0a", "controller": True,
                                    "blockOwnerDeletion": True}]
    spec_containers = [
        {"name": c, "image": "ghcr.io/acme/train:1.4", "command": ["python", "train.py"],
         "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "4", "nvidia.com/gpu": "1"}},
         "volumeMounts": [{"name": "kube-api-access-x2x4z", "readOnly": True,
                           "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
         "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
         "imagePullPolicy": "IfNotPresent"}
        for c in containers
    ]
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-20T10:00:01Z"},
            {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": "2026-11-20T10:00:06Z"},
            {"type": "ContainersReady", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-20T10:00:06Z"},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-20T10:00:00Z"},
        ],
        "hostIP": "10.0.3.17",
        "hostIPs": [{"ip": "10.0.3.17"}],
        "podIP": "10.244.3.41",
        "podIPs": [{"ip": "10.244.3.41"}],
        "startTime": "2026-11-20T10:00:00Z",
        "containerStatuses": [container_status(c, cid, runtime) for c, cid in containers.items()],
        "qosClass": "Burstable",
    }
    if init_containers:
        status["initContainerStatuses"] = [
            dict(container_status(c, cid, runtime), state={"terminated": {"exitCode": 0, "reason": "Completed"}})
            for c, cid in init_containers.items()]
    return {
        "metadata": meta,
        "spec": {
            "volumes": [{"name": "kube-api-access-x2x4z", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": spec_containers,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": node,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": status,
    }


def pod_list(items: Iterable[dict]) -> dict:
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": list(items)}


class FakeKubelet:
    """Serves GET /pods on 127.0.0.1 (HTTP, or HTTPS with a self-signed certificate), checking the bearer token
    like a kubelet with webhook authentication: 401 without one, 403 for another."""

    def __init__(self, tmp: Path, token: str = "sa-token-1", tls: bool = False) -> None:
        self.token = token
        self.items: list[dict] = []
        self.requests: list[dict[str, str]] = []
        self.status = 200
        self.raw: bytes | None = None  # served instead of the pod list when set
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
                auth = self.headers.get("Authorization", "")
                if self.path != "/pods":
                    code, body = 404, b"404 page not found\n"
                elif not auth:
                    code, body = 401, b"Unauthorized"
                elif auth != f"Bearer {fake.token}":
                    code, body = 403, b"Forbidden (user=system:serviceaccount:x:y, verb=get, resource=nodes, " \
                                      b"subresource=pods)"
                elif fake.status != 200:
                    code, body = fake.status, b"error"
                else:
                    code = 200
                    body = fake.raw if fake.raw is not None else json.dumps(pod_list(fake.items)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        self.ca_file = ""
        if tls:
            cert, key = tmp / "kubelet.crt", tmp / "kubelet.key"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True, timeout=60)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
            self.ca_file = str(cert)
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

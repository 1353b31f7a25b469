"""Pods on this node from the kubelet's pod list (`GET https://NODE:10250/pods`, a v1 PodList), refreshed in
a background thread; the sampler only ever reads the cached result.

The request is read-only and authenticated with the pod's service-account token (re-read on every refresh,
as projected tokens rotate). The kubelet authorises it as `get` on `nodes/pods` (Kubernetes 1.33+, fine-grained
kubelet authorisation) or else on `nodes/proxy`: see deploy/kubernetes/ and docs/kubernetes.md.
A failed refresh keeps the last good list, counts the error and says why; it never reaches the scrape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import requests
from urllib3.exceptions import InsecureRequestWarning

from carbonwatch.errors import ConfigError
from carbonwatch.labels import RUN_ID_RE
from carbonwatch.node.config import KubernetesConfig

log = logging.getLogger("carbonwatch.node.identity.kubelet")

MAX_BODY_BYTES = 64 << 20  # a node's pod list: about 10 kB a pod, 110 pods by default
MIN_WAKE_GAP = 2.0  # seconds between refreshes asked for by processes of pods not in the list yet
# Labels that name the training job a pod belongs to, most specific first.
JOB_LABELS = (
    "trainer.kubeflow.org/trainjob-name",  # Kubeflow Trainer v2 (TrainJob)
    "training.kubeflow.org/job-name",  # Kubeflow training-operator (PyTorchJob, TFJob, MPIJob, ...)
    "jobset.sigs.k8s.io/jobset-name",  # JobSet
    "volcano.sh/job-name",  # Volcano
    "leaderworkerset.sigs.k8s.io/name",  # LeaderWorkerSet
    "batch.kubernetes.io/job-name",  # batch/v1 Job (1.27+)
    "job-name",  # batch/v1 Job (older)
)


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    containers: Mapping[str, str] = field(default_factory=dict)  # container id (hex) -> container name
    job: str = ""  # the training job it belongs to ("" if none)
    owner_kind: str = ""  # kind of its controller (Job, ReplicaSet, DaemonSet, ...)


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _owner(meta: Mapping[str, object]) -> tuple[str, str]:
    refs = meta.get("ownerReferences")
    if not isinstance(refs, list):
        return "", ""
    for ref in refs:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return _str(ref.get("kind")), _str(ref.get("name"))
    return "", ""


def parse_pod(item: object) -> PodInfo | None:
    """One item of a PodList, or None when it lacks a uid, namespace or name."""
    if not isinstance(item, dict):
        return None
    meta = item.get("metadata")
    if not isinstance(meta, dict):
        return None
    uid, ns, name = _str(meta.get("uid")), _str(meta.get("namespace")), _str(meta.get("name"))
    if not (uid and ns and name):
        return None
    raw_labels = meta.get("labels")
    labels = (
        {k: v for k, v in raw_labels.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(raw_labels, dict) else {}
    )
    containers: dict[str, str] = {}
    status = item.get("status")
    if isinstance(status, dict):
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            statuses = status.get(key)
            if not isinstance(statuses, list):
                continue
            for cs in statuses:
                if not isinstance(cs, dict):
                    continue
                cid, cname = _str(cs.get("containerID")), _str(cs.get("name"))
                if cid and cname:  # "containerd://<id>", "cri-o://<id>", "docker://<id>"
                    containers[cid.rpartition("://")[2]] = cname
    owner_kind, owner_name = _owner(meta)
    job = next((labels[k] for k in JOB_LABELS if labels.get(k)), "")
    if not job and owner_kind == "Job":
        job = owner_name
    return PodInfo(uid, ns, name, labels, containers, job, owner_kind)


def parse_pod_list(body: object) -> dict[str, PodInfo]:
    """pod uid -> PodInfo from the kubelet's /pods answer (a v1 PodList). ValueError if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise ValueError("not a PodList (no items)")
    kind = body.get("kind")
    if kind not in (None, "PodList"):
        raise ValueError(f"not a PodList (kind {kind!r})")
    out: dict[str, PodInfo] = {}
    for item in body["items"]:
        pod = parse_pod(item)
        if pod is not None:
            out[pod.uid] = pod
    return out


def k8s_run_id(namespace: str, name: str) -> str:
    """`k8s:<namespace>:<name>`, a valid run id (names too long for one keep a hash of the whole)."""
    rid = f"k8s:{namespace}:{name}"
    if len(rid) > 128:
        digest = hashlib.sha256(rid.encode()).hexdigest()[:12]
        rid = f"{rid[:115]}+{digest}"
    if not RUN_ID_RE.match(rid):  # cannot happen with names the API server accepted; a hostile kubelet may
        digest = hashlib.sha256(rid.encode()).hexdigest()[:16]
        rid = f"k8s:{digest}"
    return rid


class PodListSource(Protocol):
    def fetch(self) -> dict[str, PodInfo]: ...


@dataclass
class KubeletSettings:
    url: str
    token_file: str
    verify: bool | str  # a CA bundle path, True (system CAs) or False (insecure_skip_verify)
    timeout: float
    refresh_interval: float


def in_cluster(environ: Mapping[str, str], token_file: str) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) or os.path.exists(token_file)


def kubelet_settings(cfg: KubernetesConfig, environ: Mapping[str, str]) -> KubeletSettings | None:
    """What to connect to, or None when Kubernetes is off (`enabled: false`, or `auto` outside a cluster)."""
    if cfg.enabled == "false" or (cfg.enabled == "auto" and not in_cluster(environ, cfg.token_file)):
        return None
    url = cfg.kubelet_url or environ.get("CARBONWATCH_KUBELET_URL", "")
    if not url:
        node_ip = environ.get("NODE_IP", "")
        if not node_ip:
            raise ConfigError(
                "kubernetes.kubelet_url: not set, and neither CARBONWATCH_KUBELET_URL nor NODE_IP is in the "
                "environment (the DaemonSet sets NODE_IP from status.hostIP; or set kubernetes.enabled: false)"
            )
        host = f"[{node_ip}]" if ":" in node_ip else node_ip
        url = f"https://{host}:10250"
    verify: bool | str = True
    if cfg.insecure_skip_verify:
        verify = False
    elif cfg.ca_file and os.path.exists(cfg.ca_file):
        verify = cfg.ca_file
    return KubeletSettings(url.rstrip("/"), cfg.token_file, verify, cfg.timeout, cfg.refresh_interval)


class KubeletClient:
    """`GET <url>/pods` with the service-account token. Errors are KubeletError with a readable reason."""

    def __init__(self, settings: KubeletSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        if settings.verify is False:
            log.warning("kubernetes.insecure_skip_verify: the kubelet's TLS certificate at %s is not verified",
                        settings.url)

    def _token(self) -> str:
        try:
            with open(self.settings.token_file, encoding="utf-8") as f:
                return f.read(65536).strip()
        except OSError:
            return ""

    def fetch(self) -> dict[str, PodInfo]:
        s = self.settings
        headers = {"Accept": "application/json"}
        token = self._token()
        if token and s.url.startswith("https://"):  # never send the token in clear text
            headers["Authorization"] = f"Bearer {token}"
        try:
            with warnings.catch_warnings():  # insecure_skip_verify was asked for, and logged once at start
                warnings.simplefilter("ignore", InsecureRequestWarning)
                r = self.session.get(f"{s.url}/pods", headers=headers, timeout=s.timeout, verify=s.verify,
                                     stream=True)
        except requests.exceptions.SSLError as exc:
            raise KubeletError(
                f"TLS to {s.url} failed ({exc.__class__.__name__}); kubelets often serve self-signed certificates: "
                "set kubernetes.ca_file or kubernetes.insecure_skip_verify"
            ) from None
        except requests.RequestException as exc:
            raise KubeletError(f"cannot reach the kubelet at {s.url}: {exc.__class__.__name__}") from None
        with r:
            if r.status_code == 401:
                why = "no token was sent (http:// URL, or no readable token file)" if "Authorization" not in \
                    headers else "the token was not accepted (kubelet --authentication-token-webhook?)"
                raise KubeletError(f"the kubelet at {s.url} answered HTTP 401, not authenticated: {why}")
            if r.status_code == 403:
                raise KubeletError(
                    f"the kubelet at {s.url} answered HTTP 403: the service account needs `get` on nodes/pods "
                    "(Kubernetes 1.33+) or nodes/proxy (see deploy/kubernetes/)"
                )
            if r.status_code != 200:
                raise KubeletError(f"the kubelet at {s.url} answered HTTP {r.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in r.iter_content(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise KubeletError(f"the pod list from {s.url} is larger than {MAX_BODY_BYTES} bytes")
        try:
            return parse_pod_list(json.loads(b"".join(chunks)))
        except ValueError as exc:
            raise KubeletError(f"the kubelet at {s.url} did not answer a PodList: {exc}") from None


class KubeletError(Exception):
    pass


@dataclass
class PodCacheStats:
    pods: int = 0
    refreshes: int = 0
    errors: int = 0
    last_success: float | None = None  # wall clock of the last good refresh
    last_error: str = ""


class PodCache:
    """The node's pods, refreshed every `interval` seconds (sooner, at most every MIN_WAKE_GAP, when a process
    of a pod not in the list appears) in a daemon thread. `get` only reads a dict: safe on the sample path."""

    def __init__(
        self,
        source: PodListSource,
        interval: float,
        on_refresh: Callable[[dict[str, PodInfo], dict[str, PodInfo]], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.interval = interval
        self.on_refresh = on_refresh
        self.wall = wall
        self._pods: dict[str, PodInfo] = {}
        self.stats = PodCacheStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_attempt = 0.0
        self._lock = threading.Lock()

    def get(self, uid: str) -> PodInfo | None:
        return self._pods.get(uid)

    def pods(self) -> dict[str, PodInfo]:
        return self._pods

    def request_refresh(self) -> None:
        """A process of an unknown pod: refresh soon (never more often than every MIN_WAKE_GAP seconds)."""
        self._wake.set()

    def refresh(self) -> bool:
        """One refresh now, in the caller's thread. True if the list was replaced."""
        with self._lock:
            self._last_attempt = time.monotonic()
            try:
                pods = self.source.fetch()
            except KubeletError as exc:
                self._failed(str(exc))
                return False
            except Exception as exc:  # never let the thread die
                log.exception("pod list refresh failed")
                self._failed(f"{type(exc).__name__}: {exc}")
                return False
            old, self._pods = self._pods, pods
            self.stats.pods = len(pods)
            self.stats.refreshes += 1
            self.stats.last_success = self.wall()
            if self.stats.last_error:
                log.info("kubelet pod list readable again (%d pods)", len(pods))
            self.stats.last_error = ""
            if self.on_refresh is not None:
                self.on_refresh(old, pods)
            return True

    def _failed(self, why: str) -> None:
        if why != self.stats.last_error:
            log.warning("kubelet pod list: %s (keeping the last good list of %d pods)", why, len(self._pods))
        self.stats.errors += 1
        self.stats.last_error = why

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="carbonwatch-kubelet", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 15)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._wake.wait(self.interval)
            if self._stop.is_set():
                break
            if self._wake.is_set():
                self._wake.clear()
                gap = MIN_WAKE_GAP - (time.monotonic() - self._last_attempt)
                if gap > 0 and self._stop.wait(gap):
                    break

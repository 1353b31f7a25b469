"""The kubelet client and pod cache against a local kubelet on 127.0.0.1 answering /pods in its real format."""

from __future__ import annotations

import json
import time

import pytest

from carbonwatch.errors import ConfigError
from carbonwatch.node.config import ExporterConfig, KubernetesConfig, apply_mapping
from carbonwatch.node.identity.kubelet import (
    KubeletClient,
    KubeletSettings,
    PodCache,
    k8s_run_id,
    kubelet_settings,
    parse_pod_list,
)
from carbonwatch.runid import RUN_ID_RE
from tests.fleetfakes import FakeKubelet, pod, pod_list

U1, U2 = "11111111-2222-4333-8444-555555555555", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
C1, C2, C3 = "c1" * 32, "c2" * 32, "c3" * 32


@pytest.fixture
def tls_kubelet(tmp_path):
    k = FakeKubelet(tmp_path, tls=True)
    yield k
    k.close()


def client(k: FakeKubelet, tmp_path, token: str | None = None, verify: bool | str | None = None) -> KubeletClient:
    tf = tmp_path / "token"
    tf.write_text((k.token if token is None else token) + "\n")
    v = k.ca_file if verify is None else verify
    return KubeletClient(KubeletSettings(k.url, str(tf), v, 5.0, 30.0))


def test_pods_from_the_kubelets_pod_list_with_the_service_account_token(tls_kubelet, tmp_path):
    tls_kubelet.items = [
        pod(U1, "vision", "ddp-worker-0", {"pytorch": C1, "sidecar": C2}, init_containers={"fetch": C3},
            labels={"training.kubeflow.org/job-name": "ddp", "team": "ml"},
            owner=("kubeflow.org/v1", "PyTorchJob", "ddp")),
        pod(U2, "batch", "etl-x7", {"etl": "d4" * 32}, runtime="cri-o", owner=("batch/v1", "Job", "etl")),
    ]
    pods = client(tls_kubelet, tmp_path).fetch()
    assert set(pods) == {U1, U2}
    p = pods[U1]
    assert (p.namespace, p.name, p.job, p.owner_kind) == ("vision", "ddp-worker-0", "ddp", "PyTorchJob")
    assert p.containers == {C1: "pytorch", C2: "sidecar", C3: "fetch"}
    assert p.labels["team"] == "ml"
    assert pods[U2].job == "etl" and pods[U2].containers == {"d4" * 32: "etl"}
    req = tls_kubelet.requests[-1]
    assert req["path"] == "/pods" and req["authorization"] == f"Bearer {tls_kubelet.token}"


def test_errors_say_what_to_fix(tls_kubelet, tmp_path):
    with pytest.raises(Exception, match="HTTP 403.*nodes/pods.*nodes/proxy"):
        client(tls_kubelet, tmp_path, token="someone-else").fetch()
    with pytest.raises(Exception, match="self-signed.*ca_file or kubernetes.insecure_skip_verify"):
        client(tls_kubelet, tmp_path, verify=True).fetch()  # the system CAs do not know the kubelet's
    assert client(tls_kubelet, tmp_path, verify=False).fetch() == {}  # insecure_skip_verify
    tls_kubelet.status = 500
    with pytest.raises(Exception, match="HTTP 500"):
        client(tls_kubelet, tmp_path).fetch()


def test_no_token_over_plain_http(tmp_path):
    k = FakeKubelet(tmp_path)  # http://, e.g. a read-only port
    try:
        with pytest.raises(Exception, match="401.*no token was sent"):
            client(k, tmp_path).fetch()
        assert "authorization" not in k.requests[-1]
    finally:
        k.close()


def test_a_failed_refresh_keeps_the_last_good_list_and_counts(tls_kubelet, tmp_path):
    tls_kubelet.items = [pod(U1, "ns", "a", {"main": C1})]
    cache = PodCache(client(tls_kubelet, tmp_path), 30.0)
    assert cache.refresh() and cache.get(U1).name == "a"
    for raw, why in [(b"<html>oops</html>", "did not answer a PodList"),
                     (json.dumps({"kind": "Status", "items": []}).encode(), "kind 'Status'"),
                     (json.dumps({"kind": "PodList"}).encode(), "no items")]:
        tls_kubelet.raw = raw
        assert not cache.refresh()
        assert why in cache.stats.last_error
        assert cache.get(U1).name == "a"
    assert (cache.stats.refreshes, cache.stats.errors, cache.stats.pods) == (1, 3, 1)
    tls_kubelet.raw = None
    tls_kubelet.items = []
    assert cache.refresh() and cache.get(U1) is None and cache.stats.last_error == ""


def test_oversized_answers_are_refused(tls_kubelet, tmp_path, monkeypatch):
    import carbonwatch.node.identity.kubelet as kubelet_mod

    monkeypatch.setattr(kubelet_mod, "MAX_BODY_BYTES", 10_000)
    tls_kubelet.items = [pod(f"{i:08x}-0000-4000-8000-000000000000", "ns", f"p{i}", {"c": C1}) for i in range(20)]
    with pytest.raises(Exception, match="larger than 10000 bytes"):
        client(tls_kubelet, tmp_path).fetch()


def test_a_rotated_token_is_used_at_the_next_refresh(tls_kubelet, tmp_path):
    c = client(tls_kubelet, tmp_path)
    c.fetch()
    tls_kubelet.token = "rotated-token"
    (tmp_path / "token").write_text("rotated-token")
    c.fetch()
    assert tls_kubelet.requests[-1]["authorization"] == "Bearer rotated-token"


def test_background_refresh_starts_and_stops(tls_kubelet, tmp_path):
    tls_kubelet.items = [pod(U1, "ns", "a", {"main": C1})]
    seen = []
    cache = PodCache(client(tls_kubelet, tmp_path), 0.1, on_refresh=lambda old, new: seen.append(len(new)))
    cache.start()
    deadline = time.monotonic() + 10
    while cache.stats.refreshes < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    cache.close()
    n = cache.stats.refreshes
    assert n >= 3 and seen[:3] == [1, 1, 1]
    time.sleep(0.3)
    assert cache.stats.refreshes == n  # stopped


def test_pod_list_parsing_skips_malformed_items():
    body = pod_list([pod(U1, "ns", "ok", {"main": C1}), {"metadata": {"name": "no-uid"}}, "junk",
                     {"metadata": {"uid": U2, "namespace": "ns", "name": "no-status"}}])
    pods = parse_pod_list(body)
    assert set(pods) == {U1, U2} and pods[U2].containers == {}
    with pytest.raises(ValueError):
        parse_pod_list([])


def test_run_ids_of_pods_and_jobs_are_valid_and_bounded():
    assert k8s_run_id("vision", "llama-sft") == "k8s:vision:llama-sft"
    long = k8s_run_id("n" * 63, "j" * 253)
    assert len(long) <= 128 and RUN_ID_RE.match(long)
    assert long != k8s_run_id("n" * 63, "j" * 252 + "k")  # the hash keeps long names apart
    assert RUN_ID_RE.match(k8s_run_id("ns", 'bad"name'))


# -- settings and configuration -------------------------------------------------------------------------------


def test_enabled_auto_follows_the_cluster_and_the_url_the_node_ip(tmp_path):
    cfg = KubernetesConfig(token_file=str(tmp_path / "absent"))
    assert kubelet_settings(cfg, {}) is None
    s = kubelet_settings(cfg, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "NODE_IP": "10.0.3.17"})
    assert s is not None and s.url == "https://10.0.3.17:10250" and s.verify is True
    s = kubelet_settings(cfg, {"KUBERNETES_SERVICE_HOST": "x", "NODE_IP": "fd00::17"})
    assert s is not None and s.url == "https://[fd00::17]:10250"
    s = kubelet_settings(cfg, {"KUBERNETES_SERVICE_HOST": "x", "CARBONWATCH_KUBELET_URL": "https://node:10250/"})
    assert s is not None and s.url == "https://node:10250"
    (tmp_path / "token").write_text("t")
    on = KubernetesConfig(token_file=str(tmp_path / "token"), insecure_skip_verify=True)
    s = kubelet_settings(on, {"NODE_IP": "10.0.0.1"})  # a token file alone means in a cluster
    assert s is not None and s.verify is False
    assert kubelet_settings(KubernetesConfig(enabled="false"), {"KUBERNETES_SERVICE_HOST": "x"}) is None
    with pytest.raises(ConfigError, match=r"kubernetes\.kubelet_url: not set.*NODE_IP"):
        kubelet_settings(KubernetesConfig(enabled="true"), {})


def test_kubernetes_config_section():
    cfg = apply_mapping(ExporterConfig(), {"kubernetes": {
        "enabled": True, "kubelet_url": "https://10.0.0.1:10250", "insecure_skip_verify": True,
        "refresh_interval": "15s", "pod_labels": {"user": ["example.com/owner", "owner"], "run_id": "run"},
        "pod_runs": False, "exclude_namespaces": ["kube-system", "monitoring"]}})
    k = cfg.kubernetes
    assert (k.enabled, k.kubelet_url, k.insecure_skip_verify, k.refresh_interval) == (
        "true", "https://10.0.0.1:10250", True, 15.0)
    assert k.pod_labels["user"] == ("example.com/owner", "owner") and k.pod_labels["run_id"] == ("run",)
    assert k.pod_labels["project"] == ("carbonwatch.dev/project",)
    assert k.pod_runs is False and k.exclude_namespaces == ("kube-system", "monitoring")


@pytest.mark.parametrize("section,message", [
    ({"enabled": "maybe"}, r"kubernetes\.enabled: must be one of auto, true, false"),
    ({"kubelet_url": "10.0.0.1:10250"}, r"kubernetes\.kubelet_url: .* is not http\(s\)://HOST:PORT"),
    ({"refresh_interval": "0s"}, r"kubernetes\.refresh_interval"),
    ({"refresh_interval": "2h"}, r"kubernetes\.refresh_interval: must be between"),
    ({"pod_labels": {"user": "not a key!"}}, r"kubernetes\.pod_labels\.user: 'not a key!' is not a Kubernetes"),
    ({"pod_labels": {"user": []}}, r"kubernetes\.pod_labels\.user: expected a pod label key"),
    ({"pod_labels": {"owner": "x"}}, r"kubernetes\.pod_labels\.owner: unknown key"),
    ({"pod_labels": ["x"]}, r"kubernetes\.pod_labels: expected a mapping"),
    ({"exclude_namespaces": ["Kube_System"]}, r"kubernetes\.exclude_namespaces: 'Kube_System'"),
    ({"insecure_skip_verify": "yes"}, r"kubernetes\.insecure_skip_verify: expected bool"),
    ({"token": "x"}, r"kubernetes\.token: unknown key"),
])
def test_kubernetes_config_errors_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        apply_mapping(ExporterConfig(), {"kubernetes": section})

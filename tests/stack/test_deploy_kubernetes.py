"""deploy/kubernetes/ rendered with `kubectl kustomize`, every object validated against the Kubernetes schemas
(kubernetes-validate, strict) and the prometheus-operator CRDs' schemas (tests/fixtures/prometheus-operator-crds/),
and what each object is for checked against the rest of the repository (rules, dashboards, exporter config)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from carbonwatch.node.config import ExporterConfig, apply_mapping
from carbonwatch.node.identity.kubelet import kubelet_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
CRDS = Path(__file__).parents[1] / "fixtures" / "prometheus-operator-crds"
KUBE_VERSION = "1.33.0"

pytestmark = [pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed"), pytest.mark.slow]
kubernetes_validate = pytest.importorskip("kubernetes_validate")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_kubernetes", REPO / "scripts" / "gen_kubernetes.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_with(tmp_path: Path, overlay: str, components: list[str]) -> list[dict[str, Any]]:
    """An overlay plus components, the way a user's own kustomization would combine them."""
    d = tmp_path / "site"
    d.mkdir()
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "carbonwatch",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, d)],  # kustomize takes relative paths only
        "components": [os.path.relpath(K8S / "components" / c, d) for c in components],
    }))
    return render(d)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(hits) == 1, (kind, name, [o["metadata"]["name"] for o in by_kind(objs, kind)])
    return hits[0]


# -- schemas --------------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema that rejects unknown fields, as the API server's Strict field validation
    (kubectl's default) does, except where the CRD preserves unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern[1:]:  # Go allows inline flags anywhere, Python first
            out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = _strict(v["schema"]["openAPIV3Schema"])
    return out


CRD_SCHEMAS = crd_schemas()


def validate(obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        body = copy.deepcopy(obj)
        jsonschema.validate(body, CRD_SCHEMAS[key], cls=jsonschema.Draft7Validator)
        return
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_crd_schemas_are_strict_and_catch_a_wrong_field():
    assert set(CRD_SCHEMAS) >= {("monitoring.coreos.com/v1", k) for k in ("ServiceMonitor", "PodMonitor",
                                                                          "PrometheusRule")}
    bad = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
           "spec": {"selector": {}, "endpoints": [{"port": "metrics", "honourLabels": True}]}}
    with pytest.raises(jsonschema.ValidationError, match="honourLabels"):
        validate(bad)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}})


OVERLAYS = {
    "plain": ("plain", []),
    "prometheus-operator": ("prometheus-operator", []),
    "operator+pushgateway+nodes-proxy": ("prometheus-operator", ["pushgateway", "pushgateway-servicemonitor",
                                                                 "kubelet-nodes-proxy"]),
    "plain+non-root+pushgateway": ("plain", ["non-root", "pushgateway"]),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, (overlay, comps) in OVERLAYS.items():
        out[name] = (render(K8S / "overlays" / overlay) if not comps
                     else render_with(tmp_path_factory.mktemp(name.replace("+", "_")), overlay, comps))
    return out


@pytest.mark.parametrize("name", list(OVERLAYS))
def test_every_object_of_every_overlay_is_valid(rendered, name):
    objs = rendered[name]
    assert len(objs) >= 8
    for obj in objs:
        validate(obj)
    for obj in objs:  # every namespaced object lands in the carbonwatch namespace
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace") == "carbonwatch", obj["metadata"]["name"]


# -- the exporter DaemonSet -----------------------------------------------------------------------------------


def test_daemonset_has_host_pid_read_only_host_paths_named_capabilities_probes_and_requests(rendered):
    objs = rendered["prometheus-operator"]
    ds = one(objs, "DaemonSet", "carbonwatch")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["serviceAccountName"] == "carbonwatch"
    assert {"operator": "Exists"} in spec["tolerations"]
    (c,) = spec["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    for path, host in (("/host/proc", "/proc"), ("/host/sys", "/sys")):
        assert mounts[path]["readOnly"] is True and vols[mounts[path]["name"]]["hostPath"]["path"] == host
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    assert c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert c["readinessProbe"]["httpGet"]["path"] == "/metrics"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})  # sees every GPU without taking one
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    ns = one(objs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_exporter_config_in_the_configmap_is_valid_and_reaches_the_nodes_kubelet(rendered):
    for name in ("prometheus-operator", "plain+non-root+pushgateway"):
        objs = rendered[name]
        cm = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("carbonwatch-exporter"))
        ds = one(objs, "DaemonSet", "carbonwatch")
        spec = ds["spec"]["template"]["spec"]
        assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in spec["volumes"])
        cfg = apply_mapping(ExporterConfig(), yaml.safe_load(cm["data"]["exporter.yml"]))
        assert cfg.process.proc_root == "/host/proc"
        settings = kubelet_settings(cfg.kubernetes, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "NODE_IP": "10.0.3.17"})
        assert settings is not None and settings.url == "https://10.0.3.17:10250"


def test_non_root_drops_every_privilege_but_the_host_pid_view(rendered):
    objs = rendered["plain+non-root+pushgateway"]
    spec = one(objs, "DaemonSet", "carbonwatch")["spec"]["template"]["spec"]
    sc = spec["containers"][0]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["capabilities"] == {"drop": ["ALL"]}
    assert not any("hostPath" in v and v["name"] == "state" for v in spec["volumes"])
    cm = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("carbonwatch-exporter"))
    cfg = apply_mapping(ExporterConfig(), yaml.safe_load(cm["data"]["exporter.yml"]))
    assert (cfg.cpu.source, cfg.memory.source) == ("model", "model")  # RAPL is root-only
    base = yaml.safe_load((K8S / "base" / "exporter.yml").read_text())
    nonroot = yaml.safe_load((K8S / "components" / "non-root" / "exporter.yml").read_text())
    nonroot["cpu"].pop("source")
    nonroot.pop("memory")
    assert nonroot == base  # the same configuration otherwise


# -- RBAC, Service, scraping ----------------------------------------------------------------------------------


def test_rbac_is_get_on_the_kubelet_pod_list_only(rendered):
    role = one(rendered["prometheus-operator"], "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes/pods"], "verbs": ["get"]}]
    binding = one(rendered["prometheus-operator"], "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "carbonwatch", "namespace": "carbonwatch"}]
    legacy = one(rendered["operator+pushgateway+nodes-proxy"], "ClusterRole")
    assert {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]} in legacy["rules"]
    assert all(r["verbs"] == ["get"] for r in legacy["rules"])


def test_service_monitor_selects_the_exporter_service_as_job_carbonwatch(rendered):
    objs = rendered["prometheus-operator"]
    svc = one(objs, "Service", "carbonwatch")
    sm = one(objs, "ServiceMonitor", "carbonwatch")
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    ds = one(objs, "DaemonSet", "carbonwatch")
    assert all(ds["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
    exprs = [str(r.get("expr")) for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert any('up{job="carbonwatch"}' in e for e in exprs)  # the job the Service's name gives


def test_pushgateway_is_scraped_with_honor_labels_as_job_pushgateway(rendered):
    objs = rendered["operator+pushgateway+nodes-proxy"]
    svc = one(objs, "Service", "pushgateway")
    sm = one(objs, "ServiceMonitor", "pushgateway")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert one(objs, "Deployment", "pushgateway")["spec"]["replicas"] == 1
    assert "pushgateway" not in {d["metadata"]["name"] for d in by_kind(rendered["prometheus-operator"], "Deployment")}


def test_the_ledger_is_a_deployment_with_a_claim_probes_a_service_and_a_monitor_in_every_overlay(rendered):
    for name in ("prometheus-operator", "plain"):
        objs = rendered[name]
        dep = one(objs, "Deployment", "carbonwatch-ledger")
        pod = dep["spec"]["template"]["spec"]
        box = pod["containers"][0]
        assert box["args"][:2] == ["ledger", "serve"] and "--web.listen-address=:9863" in box["args"]
        exporter = one(objs, "DaemonSet", "carbonwatch")["spec"]["template"]["spec"]["containers"][0]
        assert box["image"] == exporter["image"]
        assert box["readinessProbe"]["httpGet"]["path"] == "/-/ready"
        assert box["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
        claim = one(objs, "PersistentVolumeClaim", "carbonwatch-ledger")
        mounted = {v["name"]: v for v in pod["volumes"]}
        assert mounted["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        db = next(a for a in box["args"] if a.startswith("--database="))
        mount = next(m for m in box["volumeMounts"] if m["name"] == "data")["mountPath"]
        assert db == f"--database=sqlite:///{mount}/ledger.db"  # the database lives on the claim
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
        svc = one(objs, "Service", "carbonwatch-ledger")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    sm = one(rendered["prometheus-operator"], "ServiceMonitor", "carbonwatch-ledger")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    plain = one(rendered["plain"], "Deployment", "carbonwatch-ledger")["spec"]["template"]["metadata"]["annotations"]
    assert plain["prometheus.io/scrape"] == "true" and plain["prometheus.io/port"] == "9863"


def test_plain_overlay_annotates_the_pods_for_discovery(rendered):
    ds = one(rendered["plain"], "DaemonSet", "carbonwatch")
    ann = ds["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9860"
    assert not [o for o in rendered["plain"] if o["apiVersion"].startswith("monitoring.coreos.com")]


# -- generated objects are current copies of the repository's files --------------------------------------------


def _rule_groups() -> list[dict[str, Any]]:
    gen = _generator()
    groups = []
    for path in gen.rule_files(REPO):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def test_generated_files_are_current():
    gen = _generator()
    stale = [str(p.relative_to(REPO)) for p in gen.stale(REPO)]
    assert stale == [], f"run `.venv/bin/python scripts/gen_kubernetes.py`; not current: {stale}"


def test_prometheus_rule_holds_every_group_of_the_rule_files_and_promtool_accepts_it(rendered, tmp_path):
    rule = one(rendered["prometheus-operator"], "PrometheusRule")
    assert rule["spec"]["groups"] == _rule_groups()
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names))
    if shutil.which("promtool"):
        f = tmp_path / "rules.yml"
        f.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        out = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    cm = one(rendered["plain"], "ConfigMap", "carbonwatch-prometheus-rules")
    gen = _generator()
    assert cm["data"] == {p.name: p.read_text() for p in gen.rule_files(REPO)}


def test_dashboards_are_configmaps_for_the_grafana_sidecar(rendered):
    cms = [o for o in by_kind(rendered["prometheus-operator"], "ConfigMap")
           if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    files = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    assert len(cms) == len(files) >= 1
    by_file = {next(iter(cm["data"])): cm for cm in cms}
    for f in files:
        data = by_file[f.name]["data"][f.name]
        assert json.loads(data) == json.loads(f.read_text())
        assert len(data.encode()) < 1 << 20  # a ConfigMap's limit

"""The identity chain env > registration > parent > kubernetes > slurm on a fake /proc, a fake kubelet on
127.0.0.1 and SLURM fixtures, through the real ProcScanner, cgroup parser, kubelet client and resolver."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import carbonwatch.node.sampler as sampler_mod
import tests.node.test_sampler as sampler_tests
from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.identity import ContainerRef, ProcessIdentity, Resolver, RunIdentity, build_resolver, run_infos
from carbonwatch.node.registration import Registration
from carbonwatch.node.sources.procs import ProcScanner
from tests.fleetfakes import FakeKubelet, FleetProc, k8s_path, pod, v1, v2

NS = "vision"
U1, U2, U3 = ("11111111-2222-4333-8444-555555555555", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
              "99999999-8888-4777-8666-555555555555")
C1, C2, C3, C4 = ("c1" * 32, "c2" * 32, "c3" * 32, "c4" * 32)


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def kubelet(tmp_path):
    k = FakeKubelet(tmp_path, tls=True)
    yield k
    k.close()


@pytest.fixture
def env(tmp_path, kubelet):
    """(fake /proc, scanner, resolver, clock) with Kubernetes on (the fake kubelet) and SLURM cluster hpc1."""
    proc = FleetProc(tmp_path / "proc")
    token = tmp_path / "token"
    token.write_text(kubelet.token + "\n")
    cfg = ExporterConfig()
    cfg.process.proc_root = str(tmp_path / "proc")
    cfg.kubernetes.enabled = "true"
    cfg.kubernetes.kubelet_url = kubelet.url
    cfg.kubernetes.token_file = str(token)
    cfg.kubernetes.ca_file = kubelet.ca_file
    cfg.slurm.cluster = "hpc1"
    resolver = build_resolver(cfg, environ={})
    clock = Clock()
    resolver.clock = clock
    resolver.cleaner._clock = clock
    resolver.user_name = lambda uid: {1000: "alice", 1001: "bob"}.get(uid, str(uid))
    yield proc, ProcScanner(str(tmp_path / "proc")), resolver, clock
    resolver.close()


def assign(scanner, resolver, regs=()):
    return resolver.assign(scanner.read(), list(regs))


def refresh(resolver):
    assert resolver.pods is not None and resolver.pods.refresh(), resolver.pods.stats.last_error


# -- env, registration, parent (the behaviour the sampler had) --------------------------------------------------


def test_own_run_id_and_labels_from_the_environment_and_children_inherit_them(env):
    proc, scanner, resolver, _ = env
    proc.spawn_in(100, comm="train", env={"CARBONWATCH_RUN_ID": "r1", "CARBONWATCH_USER": "ada",
                                          "CARBONWATCH_PROJECT": "vision", "CARBONWATCH_MODEL": "resnet50",
                                          "CARBONWATCH_TEAM": "ml"})
    proc.spawn_in(101, ppid=100, comm="worker")  # a DataLoader worker whose environment was cleared
    proc.spawn_in(200, comm="sshd")
    ids = assign(scanner, resolver)
    run = RunIdentity("r1", "env", {"user": "ada", "project": "vision", "model": "resnet50", "team": "ml"})
    assert ids[100] == ProcessIdentity(run, None)
    assert ids[101].run == run  # the parent's run, as it was named
    assert 200 not in ids


def test_registration_counts_the_registered_root_and_its_children_when_start_times_match(env):
    proc, scanner, resolver, _ = env
    proc.spawn_in(500, start=1.0, env={"CARBONWATCH_USER": "ada"})
    proc.spawn_in(501, ppid=500)
    proc.spawn_in(600, start=7.0)
    ids = assign(scanner, resolver, [Registration("api-run", 500, 1.0), Registration("stale", 600, 999.0)])
    assert ids[500].run == RunIdentity("api-run", "registration", {"user": "ada"})
    assert ids[501].run == ids[500].run
    assert 600 not in ids


# -- Kubernetes -----------------------------------------------------------------------------------------------


def test_pod_label_names_the_run_and_pod_labels_give_user_project_model_team(env, kubelet):
    proc, scanner, resolver, _ = env
    kubelet.items = [pod(U1, NS, "bert-finetune-7x2kq", {"trainer": C1, "logger": C2}, labels={
        "carbonwatch.dev/run-id": "bert-ft-42", "carbonwatch.dev/user": "ada", "carbonwatch.dev/project": "nlp",
        "carbonwatch.dev/model": "bert-large", "carbonwatch.dev/team": "research"})]
    refresh(resolver)
    proc.spawn_in(100, cgroup=v2(k8s_path(U1, C1)))
    proc.spawn_in(101, ppid=100, cgroup=v2(k8s_path(U1, C1)))
    proc.spawn_in(110, cgroup=v1(k8s_path(U1, C2, driver="cgroupfs")))
    ids = assign(scanner, resolver)
    run = RunIdentity("bert-ft-42", "kubernetes", {"user": "ada", "project": "nlp", "model": "bert-large",
                                                   "team": "research"})
    assert ids[100] == ProcessIdentity(run, ContainerRef(NS, "bert-finetune-7x2kq", "trainer", U1))
    assert ids[101].run == run
    assert ids[110] == ProcessIdentity(run, ContainerRef(NS, "bert-finetune-7x2kq", "logger", U1))
    # the kubelet was asked with the service-account token
    assert kubelet.requests[-1]["authorization"] == f"Bearer {kubelet.token}"


@pytest.mark.parametrize("labels,owner,run_id", [
    ({"training.kubeflow.org/job-name": "llama-sft", "training.kubeflow.org/replica-type": "worker"},
     ("kubeflow.org/v1", "PyTorchJob", "llama-sft"), "k8s:vision:llama-sft"),
    ({"trainer.kubeflow.org/trainjob-name": "gpt-pre", "jobset.sigs.k8s.io/jobset-name": "gpt-pre",
      "batch.kubernetes.io/job-name": "gpt-pre-node-0"}, ("batch/v1", "Job", "gpt-pre-node-0"), "k8s:vision:gpt-pre"),
    ({"jobset.sigs.k8s.io/jobset-name": "js-1", "batch.kubernetes.io/job-name": "js-1-workers-0"},
     ("batch/v1", "Job", "js-1-workers-0"), "k8s:vision:js-1"),
    ({"volcano.sh/job-name": "vc-train", "volcano.sh/task-spec": "worker"},
     ("batch.volcano.sh/v1alpha1", "Job", "vc-train"), "k8s:vision:vc-train"),
    ({"batch.kubernetes.io/job-name": "plain-job", "job-name": "plain-job"},
     ("batch/v1", "Job", "plain-job"), "k8s:vision:plain-job"),
    ({}, ("batch/v1", "Job", "old-job"), "k8s:vision:old-job"),  # only the owner reference
    ({"app": "notebook"}, ("apps/v1", "StatefulSet", "nb"), "k8s:vision:nb-0"),  # no job: the pod itself
])
def test_run_id_from_the_training_job_else_the_pod(env, kubelet, labels, owner, run_id):
    proc, scanner, resolver, _ = env
    name = "nb-0" if owner[1] == "StatefulSet" else f"{owner[2]}-worker-0"
    kubelet.items = [pod(U1, NS, name, {"main": C1}, labels=labels, owner=owner)]
    refresh(resolver)
    proc.spawn_in(100, cgroup=v2(k8s_path(U1, C1)))
    ids = assign(scanner, resolver)
    assert ids[100].run is not None and ids[100].run.run_id == run_id
    assert ids[100].run.origin == "kubernetes"


def test_two_pods_of_one_job_are_one_run(env, kubelet):
    proc, scanner, resolver, _ = env
    job = {"training.kubeflow.org/job-name": "ddp"}
    kubelet.items = [pod(U1, NS, "ddp-master-0", {"pytorch": C1}, labels=job, runtime="cri-o"),
                     pod(U2, NS, "ddp-worker-0", {"pytorch": C2}, labels=job, runtime="cri-o")]
    refresh(resolver)
    proc.spawn_in(100, cgroup=v2(k8s_path(U1, C1, runtime="cri-o")))
    proc.spawn_in(200, cgroup=v2(k8s_path(U2, C2, runtime="cri-o", driver="cgroupfs")))
    ids = assign(scanner, resolver)
    assert ids[100].run == ids[200].run == RunIdentity("k8s:vision:ddp", "kubernetes", {})
    assert {ids[100].container.pod, ids[200].container.pod} == {"ddp-master-0", "ddp-worker-0"}


def test_daemonsets_and_kube_system_are_measured_but_are_not_runs(env, kubelet):
    proc, scanner, resolver, _ = env
    kubelet.items = [
        pod(U1, "gpu-operator", "nvidia-device-plugin-x7k", {"plugin": C1},
            owner=("apps/v1", "DaemonSet", "nvidia-device-plugin")),
        pod(U2, "kube-system", "coredns-5d78c9869d-abcde", {"coredns": C2},
            owner=("apps/v1", "ReplicaSet", "coredns-5d78c9869d")),
        pod(U3, "kube-system", "labelled", {"x": C3}, labels={"carbonwatch.dev/run-id": "explicit"}),
    ]
    refresh(resolver)
    proc.spawn_in(100, cgroup=v2(k8s_path(U1, C1)))
    proc.spawn_in(200, cgroup=v2(k8s_path(U2, C2)))
    proc.spawn_in(300, cgroup=v2(k8s_path(U3, C3)))
    ids = assign(scanner, resolver)
    assert ids[100] == ProcessIdentity(None, ContainerRef("gpu-operator", "nvidia-device-plugin-x7k", "plugin", U1))
    assert ids[200] == ProcessIdentity(None, ContainerRef("kube-system", "coredns-5d78c9869d-abcde", "coredns", U2))
    assert ids[300].run == RunIdentity("explicit", "kubernetes", {})  # an explicit label is always honoured


def test_own_run_id_wins_over_the_pod_and_its_labels_over_the_pods(env, kubelet):
    proc, scanner, resolver, _ = env
    kubelet.items = [pod(U1, NS, "p", {"main": C1}, labels={
        "carbonwatch.dev/run-id": "pod-run", "carbonwatch.dev/user": "pod-user", "carbonwatch.dev/project": "nlp"})]
    refresh(resolver)
    proc.spawn_in(100, env={"CARBONWATCH_RUN_ID": "client-run", "CARBONWATCH_USER": "ada"},
                  cgroup=v2(k8s_path(U1, C1)))
    proc.spawn_in(101, env={"CARBONWATCH_MODEL": "vit"}, cgroup=v2(k8s_path(U1, C1)))
    ids = assign(scanner, resolver)
    assert ids[100].run == RunIdentity("client-run", "env", {"user": "ada", "project": "nlp"})
    assert ids[100].container == ContainerRef(NS, "p", "main", U1)
    assert ids[101].run == RunIdentity("pod-run", "kubernetes", {"user": "pod-user", "project": "nlp", "model": "vit"})


def test_init_containers_sandbox_and_unlisted_containers(env, kubelet):
    proc, scanner, resolver, _ = env
    kubelet.items = [pod(U1, NS, "p", {"main": C1}, init_containers={"fetch-data": C2})]
    refresh(resolver)
    proc.spawn_in(100, cgroup=v2(k8s_path(U1, C2)))  # the init container
    proc.spawn_in(101, cgroup=v2(k8s_path(U1, C4)))  # the pause process: its sandbox id is in no status
    ids = assign(scanner, resolver)
    assert ids[100].container == ContainerRef(NS, "p", "fetch-data", U1)
    assert ids[101].container == ContainerRef(NS, "p", "POD", U1)
    assert ids[100].run == ids[101].run == RunIdentity("k8s:vision:p", "kubernetes", {})


def test_a_new_pod_is_picked_up_by_the_background_refresh_without_waiting_for_the_interval(env, kubelet):
    proc, scanner, resolver, _ = env
    resolver.pods.interval = 300.0  # only a process of an unknown pod can make it refresh now
    resolver.start()
    deadline = time.monotonic() + 10
    while resolver.pods.stats.refreshes < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    kubelet.items = [pod(U1, NS, "late", {"main": C1}, labels={"carbonwatch.dev/run-id": "late-run"})]
    proc.spawn_in(100, cgroup=v2(k8s_path(U1, C1)))
    ids = assign(scanner, resolver)
    assert 100 not in ids  # not in the cached list yet: nothing is fetched on the sample path
    deadline = time.monotonic() + 10
    while 100 not in ids and time.monotonic() < deadline:
        time.sleep(0.05)
        ids = assign(scanner, resolver)
    assert ids[100].run == RunIdentity("late-run", "kubernetes", {})
    assert resolver.pods.stats.refreshes == 2


# -- SLURM ----------------------------------------------------------------------------------------------------

SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_USER": "alice", "SLURM_JOB_ACCOUNT": "physics",
             "SLURM_JOB_NAME": "train-gpt", "SLURM_CLUSTER_NAME": "hpc1", "SLURM_JOB_UID": "1000"}


def test_slurm_job_from_its_environment(env):
    proc, scanner, resolver, _ = env
    proc.spawn_in(100, comm="python", env=SLURM_ENV)
    proc.spawn_in(101, comm="python", env=dict(SLURM_ENV, CARBONWATCH_MODEL="gpt-small"))
    ids = assign(scanner, resolver)
    assert ids[100].run == RunIdentity("slurm-hpc1-4242", "slurm",
                                       {"user": "alice", "project": "physics", "model": "train-gpt"})
    assert ids[101].run == RunIdentity("slurm-hpc1-4242", "slurm",
                                       {"user": "alice", "project": "physics", "model": "gpt-small"})
    assert ids[100].container is None


def test_slurm_job_from_its_cgroup_learns_labels_from_the_jobs_other_processes(env):
    proc, scanner, resolver, _ = env
    cg = v1("/slurm/uid_1000/job_4242/step_0/task_0", systemd_path="/system.slice/slurmd.service")
    proc.spawn_in(200, comm="python", cgroup=cg)  # environment without SLURM_* (cleared, or unreadable)
    ids = assign(scanner, resolver)
    assert ids[200].run == RunIdentity("slurm-hpc1-4242", "slurm", {"user": "alice"})  # uid 1000 -> alice
    proc.spawn_in(201, comm="bash", env=SLURM_ENV, cgroup=cg)
    ids = assign(scanner, resolver)
    full = {"user": "alice", "project": "physics", "model": "train-gpt"}
    assert ids[201].run == RunIdentity("slurm-hpc1-4242", "slurm", full)
    assert ids[200].run == RunIdentity("slurm-hpc1-4242", "slurm", full)


def test_slurm_cgroup_v2_and_the_cgroup_wins_over_a_claimed_job_id(env):
    proc, scanner, resolver, _ = env
    proc.spawn_in(300, env=dict(SLURM_ENV, SLURM_JOB_ID="1"),  # claims job 1 in its environment
                  cgroup=v2("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0"))
    ids = assign(scanner, resolver)
    assert ids[300].run.run_id == "slurm-hpc1-4242"


def test_run_id_in_a_slurm_job_wins_and_keeps_the_jobs_labels(env):
    proc, scanner, resolver, _ = env
    proc.spawn_in(100, env=dict(SLURM_ENV, CARBONWATCH_RUN_ID="my-run", CARBONWATCH_USER="ada"))
    ids = assign(scanner, resolver)
    assert ids[100].run == RunIdentity("my-run", "env", {"user": "ada", "project": "physics", "model": "train-gpt"})


def test_slurm_off_and_kubernetes_off(tmp_path):
    proc = FleetProc(tmp_path / "proc")
    cfg = ExporterConfig()
    cfg.slurm.enabled = False
    cfg.kubernetes.enabled = "auto"
    resolver = build_resolver(cfg, environ={})  # no KUBERNETES_SERVICE_HOST: Kubernetes stays off
    assert resolver.pods is None
    proc.spawn_in(100, env=SLURM_ENV, cgroup=v2(k8s_path(U1, C1)))
    assert resolver.assign(ProcScanner(str(tmp_path / "proc")).read(), []) == {}


# -- hostile values -------------------------------------------------------------------------------------------


def test_hostile_label_values_are_dropped_counted_and_logged_never_published(env, kubelet, caplog):
    proc, scanner, resolver, _ = env
    kubelet.items = [pod(U1, NS, "evil", {"main": C1}, labels={
        "carbonwatch.dev/run-id": 'x"} evil{a="',  # not a run id: falls back to the pod
        "carbonwatch.dev/user": "ada\nfake_metric 1",
        "carbonwatch.dev/project": "\udcff\udcfe",  # a lone surrogate: invalid UTF-8 on the wire
        "carbonwatch.dev/model": "m" * 10_000,
        "carbonwatch.dev/team": "  ml  ",  # cleaned: surrounding white space
    })]
    refresh(resolver)
    hostile_env = (b"CARBONWATCH_USER=al\xffice\0CARBONWATCH_PROJECT=p\"q\0CARBONWATCH_MODEL=" + b"x" * 10_240
                   + b"\0CARBONWATCH_TEAM=a\x07b\0")
    proc.spawn_in(100, env=hostile_env, cgroup=v2(k8s_path(U1, C1)))
    proc.spawn_in(200, env=dict(SLURM_ENV, SLURM_JOB_ACCOUNT="acct\\x", SLURM_JOB_NAME="n\tm"))
    with caplog.at_level(logging.WARNING, logger="carbonwatch.node.identity"):
        ids = assign(scanner, resolver)
        ids = assign(scanner, resolver)  # counted once per process or pod, not once per sample
    assert ids[100].run == RunIdentity("k8s:vision:evil", "kubernetes", {"team": "ml"})
    assert ids[200].run == RunIdentity("slurm-hpc1-4242", "slurm", {"user": "alice"})
    assert resolver.stats().label_rejections == {
        ("pod", "run_id", "not_a_run_id"): 1,
        ("pod", "user", "control_character"): 1,
        ("pod", "project", "invalid_utf8"): 1,
        ("pod", "model", "too_long"): 1,
        ("environment", "user", "invalid_utf8"): 1,
        ("environment", "project", "quote_or_backslash"): 1,
        ("environment", "model", "too_long"): 1,
        ("environment", "team", "control_character"): 1,
        ("slurm", "project", "quote_or_backslash"): 1,
        ("slurm", "model", "control_character"): 1,
    }
    warnings = [r.getMessage() for r in caplog.records]
    assert any("pod vision/evil" in w and "control_character" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_run_infos_one_per_run_with_the_naming_origin_and_every_known_label():
    ids = [
        ProcessIdentity(RunIdentity("r", "slurm", {"user": "alice", "project": "physics"})),
        ProcessIdentity(RunIdentity("r", "env", {"user": "ada"})),
        ProcessIdentity(None, ContainerRef("ns", "p", "c")),
        ProcessIdentity(RunIdentity("k", "kubernetes", {})),
    ]
    assert run_infos(ids) == {
        "r": RunIdentity("r", "env", {"user": "ada", "project": "physics"}),
        "k": RunIdentity("k", "kubernetes", {}),
    }


# -- bounded caches -------------------------------------------------------------------------------------------


@pytest.mark.slow  # 20-30 s of churn
def test_caches_stay_bounded_under_a_thousand_short_pods_and_jobs(env, kubelet):
    proc, scanner, resolver, clock = env
    sizes = []
    for i in range(1000):
        uid = f"{i:08x}-0000-4000-8000-000000000000"
        cid = f"{i:064x}"
        kubelet.items = [pod(uid, NS, f"short-{i}", {"main": cid}, labels={"carbonwatch.dev/run-id": f"r{i}"})]
        refresh(resolver)
        pid = 1000 + i
        proc.spawn_in(pid, cgroup=v2(k8s_path(uid, cid)))
        proc.spawn_in(pid + 5000, env=dict(SLURM_ENV, SLURM_JOB_ID=str(10_000 + i)))
        ids = assign(scanner, resolver)
        assert ids[pid].run.run_id == f"r{i}" and ids[pid].container.pod == f"short-{i}"
        assert ids[pid + 5000].run.run_id == f"slurm-hpc1-{10_000 + i}"
        proc.kill(pid)
        proc.kill(pid + 5000)
        kubelet.items = []
        refresh(resolver)
        assign(scanner, resolver)
        clock.t += 5.0
        st = resolver.stats()
        sizes.append((st.cached_processes, st.cached_jobs, st.pods))
    ttl_samples = int(resolver.fact_ttl / 5.0) + 1 + int(min(60.0, resolver.fact_ttl / 4) / 5.0) + 1
    assert max(s[0] for s in sizes) <= 2 * ttl_samples  # two processes a step, forgotten after the TTL
    assert max(s[1] for s in sizes) <= ttl_samples
    assert max(s[2] for s in sizes) <= 1  # the pod list is replaced, never merged
    assert sizes[-1][0] < 1000  # far fewer than the 2,000 processes that came and went


@pytest.mark.slow  # 20-30 s of churn
def test_the_sampler_keeps_container_and_run_series_bounded_under_a_thousand_short_pods(env, kubelet):
    """The whole path: processes in pods that start and end, the real sampler with this resolver; what it
    publishes is bounded by what lived within the linger, not by everything that ever ran."""
    _, _, resolver, _ = env
    proc = FleetProc(Path(resolver.proc_root).parent / "proc2", ncpu=4)
    resolver.proc_root = str(proc.root)
    cfg = ExporterConfig()
    cfg.process.run_linger = 10.0
    clock = sampler_tests.Clock()
    resolver.clock = clock
    src = sampler_mod.Sources(procs=ProcScanner(str(proc.root)), rapl=sampler_tests.FakeRapl(1), rapl_expected=True,
                              cpu_model=sampler_tests.FlatModel(), memory_model=sampler_tests.FlatModel(4.0))
    s = sampler_mod.Sampler(cfg, src, clock=clock, wall=lambda: 1.7e9 + clock.t, boot_clock=clock, resolver=resolver)
    s.sample_once()
    most = (0, 0)
    for i in range(1000):
        uid = f"{i:08x}-0000-4000-8000-000000000000"
        cid = f"{i:064x}"
        kubelet.items = [pod(uid, NS, f"short-{i}", {"main": cid}, labels={"carbonwatch.dev/run-id": f"r{i}"})]
        refresh(resolver)
        proc.spawn_in(100 + i, cgroup=v2(k8s_path(uid, cid)), start=clock.t)
        clock.t += 1.0
        proc.run(1.0, {100 + i: 1.0})
        src.rapl.pkg = [src.rapl.pkg[0] + 10.0]
        snap = s.sample_once()
        s.counters.note_served(snap.runs)  # scraped at every sample (ended runs go once scraped: test_linger.py)
        if i % 100 == 0:
            assert {r.run_id for r in snap.runs} >= {f"r{i}"}
            assert any(c.pod == f"short-{i}" for c in snap.containers)
        proc.kill(100 + i)
        most = (max(most[0], len(snap.runs)), max(most[1], len(snap.containers)))
    assert most[0] <= 12 and most[1] <= 12  # a 10 s linger at one pod a second


def test_a_jobs_user_from_its_environment_replaces_the_bare_uid(env):
    proc, scanner, resolver, _ = env
    cg = v1("/slurm/uid_4711/job_77/step_0/task_0")  # a uid this host cannot name
    proc.spawn_in(100, cgroup=cg)
    assert assign(scanner, resolver)[100].run == RunIdentity("slurm-hpc1-77", "slurm", {"user": "4711"})
    proc.spawn_in(101, cgroup=cg, env={"SLURM_JOB_ID": "77", "SLURM_JOB_USER": "carol", "SLURM_JOB_ACCOUNT": "bio"})
    ids = assign(scanner, resolver)
    assert ids[100].run == ids[101].run == RunIdentity("slurm-hpc1-77", "slurm", {"user": "carol", "project": "bio"})


def test_scanner_reads_environment_and_cgroup_once_per_process_and_lists_pids(tmp_path):
    proc = FleetProc(tmp_path / "proc")
    proc.spawn_in(100, env={"SLURM_JOB_ID": "1", "CARBONWATCH_USER": "ada", "OTHER": "x"}, cgroup=v2("/a"), start=1.0)
    (proc.root / "self").mkdir()  # not a pid
    scanner = ProcScanner(str(proc.root))
    assert scanner.list_pids() == {100}
    (p,) = scanner.read()
    assert dict(p.environ) == {"SLURM_JOB_ID": "1", "CARBONWATCH_USER": "ada"} and p.cgroup == "0::/a\n"
    (proc.root / "100" / "cgroup").write_text(v2("/b"))
    (proc.root / "100" / "environ").write_bytes(b"SLURM_JOB_ID=2\0")
    (p,) = scanner.read()
    assert p.cgroup == "0::/a\n" and dict(p.environ)["SLURM_JOB_ID"] == "1"  # fixed for the process's lifetime
    proc.kill(100)
    proc.spawn_in(100, env={"SLURM_JOB_ID": "3"}, cgroup=v2("/c"), start=9.0)  # the pid reused
    (p,) = scanner.read()
    assert p.cgroup == "0::/c\n" and dict(p.environ) == {"SLURM_JOB_ID": "3"}


def test_an_invalid_run_id_in_the_environment_is_refused_and_counted(tmp_path):
    from carbonwatch.node.model import ProcessReading

    resolver = Resolver(proc_root=str(tmp_path))
    bad = ProcessReading(42, 1, "train", 0.0, 0, 5.0, None, (("CARBONWATCH_RUN_ID", 'run "1"\nx'),))
    out = resolver.assign([bad], [])
    assert 42 not in out or out[42].run is None
    assert resolver.stats().label_rejections == {("environment", "run_id", "not_a_run_id"): 1}

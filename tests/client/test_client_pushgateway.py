"""The run client against a real Pushgateway binary: labels while running, final state, the retention
sweep, a gateway killed and restarted mid-run, a dead gateway, label injection, epochs as the script counts
them, and measurement left to a live node exporter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonwatch.client import reaper
from carbonwatch.client.api import Run
from carbonwatch.client.node import HEARTBEAT_FILE, exporter_alive
from carbonwatch.client.summary import NODE_EXPORTER, format_summary
from carbonwatch.errors import ConfigError
from tests.support import free_port

BINARY = shutil.which("prometheus-pushgateway")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BINARY is None, reason="prometheus-pushgateway is not installed"),
]




class Gateway:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert BINARY is not None
        self.proc = subprocess.Popen(
            [BINARY, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=0.5).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pushgateway did not become ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def samples(self, run_id: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        """name -> [(labels, value)] of the samples the gateway serves for `run_id`."""
        text = urllib.request.urlopen(self.url + "/metrics", timeout=2).read().decode()
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.labels.get("run_id") == run_id and s.labels.get("job") == "carbonwatch_run":
                    out.setdefault(s.name, []).append((dict(s.labels), s.value))
        return out


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(tmp_path)
    g.start()
    try:
        yield g
    finally:
        g.kill()


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except OSError:
            last = None
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> tuple[dict[str, str], float]:
    got = samples.get(name, [])
    assert len(got) == 1, f"{name}: {got}"
    return got[0]


STARTED: list[Run] = []


@pytest.fixture(autouse=True)
def _own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test has its own spool directory: a node exporter running on this machine (its heartbeat in
    the default spool) does not change how the test's runs measure."""
    spool = tmp_path / "spool"
    monkeypatch.setenv("CARBONWATCH_SPOOL_DIR", str(spool))
    monkeypatch.setenv("CARBONWATCH_STACK", "none")  # nor a stack settings file of the user running the tests
    yield spool
    STARTED.clear()


def fast_run(gw_url: str, tmp: Path, **kw: Any) -> Run:
    kw.setdefault("user", "alice")
    kw.setdefault("model", "resnet18")
    kw.setdefault("project", "vision")
    for key, value in (("local_meter", False), ("push_interval", 0.05), ("heartbeat", 1.0), ("push_timeout", 0.5)):
        kw.setdefault(key, value)
    run = Run(pushgateway=gw_url, runs_file=tmp / "runs.jsonl", summary=False, **kw)
    STARTED.append(run)
    return run


def test_labels_progress_and_final_state_stay_for_the_retention_then_a_later_run_sweeps_them(
    gateway: Gateway, tmp_path: Path
) -> None:
    run = fast_run(gateway.url, tmp_path, run_id="r-visible", budget_grams=500, retention=1.0, team="ml")
    with run:
        run.epoch(2)
        run.progress(samples=32, loss=0.5, accuracy=0.75)
        run.progress(samples=32, loss=0.25)
        run.phase("eval")
        s = wait_for(
            lambda: (x := gateway.samples("r-visible")).get("carbonwatch_run_metric") and len(
                x["carbonwatch_run_metric"]) == 2 and x.get("carbonwatch_run_phase_info", [({}, 0)])[0][0].get(
                "phase") == "eval" and x,
            what="the run's progress on the gateway",
        )
        labels, value = one(s, "carbonwatch_run_info")
        assert value == 1.0
        assert {k: labels[k] for k in ("user", "model", "project", "team", "status")} == {
            "user": "alice", "model": "resnet18", "project": "vision", "team": "ml", "status": "running",
        }
        assert labels["host"] == socket.gethostname()
        assert one(s, "carbonwatch_run_epoch")[1] == 2  # a first call with 2: numbered from 1, 2 epochs started
        assert one(s, "carbonwatch_run_samples_total")[1] == 64
        assert one(s, "carbonwatch_run_budget_grams")[1] == 500
        assert {lab["name"]: v for lab, v in s["carbonwatch_run_metric"]} == {"loss": 0.25, "accuracy": 0.75}
        assert "carbonwatch_run_end_time_seconds" not in s
        assert abs(one(s, "carbonwatch_run_last_push_time_seconds")[1] - time.time()) < 5
    ended = time.time()
    s = gateway.samples("r-visible")  # the final state, right after the end: pushed synchronously
    assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert abs(one(s, "carbonwatch_run_end_time_seconds")[1] - ended) < 2
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["run_id"] == "r-visible" and rec["status"] == "succeeded" and rec["pushed"] is True
    assert rec["samples"] == 64 and rec["mode"] == "pushgateway"
    time.sleep(1.2)  # past the 1 s retention; no process of ours is left to delete it...
    assert gateway.samples("r-visible")
    with fast_run(gateway.url, tmp_path, run_id="r-next", retention=1.0):  # ...the next run's start sweeps it
        wait_for(lambda: gateway.samples("r-visible") == {}, timeout=10, what="the expired group to be swept")
    assert one(gateway.samples("r-next"), "carbonwatch_run_info")[0]["status"] == "succeeded"  # its own stays


def test_sweep_deletes_only_finished_groups_past_their_retention(gateway: Gateway, tmp_path: Path) -> None:
    with fast_run(gateway.url, tmp_path, run_id="r-old", retention=60.0):
        pass
    time.sleep(1.1)
    with fast_run(gateway.url, tmp_path, run_id="r-recent", retention=60.0):
        pass
    running = fast_run(gateway.url, tmp_path, run_id="r-running", retention=60.0, heartbeat=0.2).start()
    try:
        wait_for(lambda: gateway.samples("r-running"), what="the running run's first push")
        res = reaper.sweep(gateway.url, retention=1.0, timeout=1.0)
        assert res.deleted == ["r-old"] and res.error == ""
        assert gateway.samples("r-old") == {}
        assert gateway.samples("r-recent") and gateway.samples("r-running")
        time.sleep(1.1)
        assert reaper.main(["--gateway", gateway.url, "--retention", "1s"]) == 0  # the one-shot form
        assert gateway.samples("r-recent") == {} and gateway.samples("r-running")  # running: never swept
    finally:
        running.finish()
    dead = reaper.sweep(f"127.0.0.1:{free_port()}", retention=0, timeout=0.5)
    assert dead.deleted == [] and "URLError" in dead.error


def test_the_sweep_as_a_stack_service_enforces_the_retention_and_stops_on_sigterm(
    gateway: Gateway, tmp_path: Path
) -> None:
    import signal
    import sys

    service = subprocess.Popen(
        [sys.executable, "-m", "carbonwatch.client.reaper", "--gateway", gateway.url, "--retention", "0.5s",
         "--every", "0.2s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")},
    )
    try:
        with fast_run(gateway.url, tmp_path, run_id="r-served", retention=60.0):
            pass  # the run's own retention says 60 s; the gateway side's says 0.5 s, and it is the one enforced
        assert gateway.samples("r-served")
        wait_for(lambda: gateway.samples("r-served") == {}, timeout=10, what="the service to sweep the group")
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=10)
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate()
    assert service.returncode == 0, err
    assert "deleted r-served" in out


def test_retention_zero_deletes_the_group_at_the_end_in_process(gateway: Gateway, tmp_path: Path) -> None:
    with fast_run(gateway.url, tmp_path, run_id="r-zero", retention=0.0) as run:
        run.progress(samples=1)
        wait_for(lambda: gateway.samples("r-zero"), what="first push")
    assert gateway.samples("r-zero") == {}


@pytest.mark.parametrize(
    ("numbers", "first_epoch", "pushed"),
    [
        (range(8), None, 8),  # `for epoch in range(8)`: the README's and the example's loop
        (range(1, 9), None, 8),  # numbered from 1
        (range(5, 8), 0, 3 + 5),  # resumed at epoch 5 of a 0-based run: epochs 0..7 started
    ],
)
def test_epochs_are_pushed_as_the_script_counts_them(
    gateway: Gateway, tmp_path: Path, numbers: range, first_epoch: int | None, pushed: int
) -> None:
    run = fast_run(gateway.url, tmp_path, run_id="r-epochs", retention=60.0, total_epochs=8, first_epoch=first_epoch)
    with run:
        for e in numbers:
            run.epoch(e)
            run.progress(samples=10)
    s = gateway.samples("r-epochs")
    assert one(s, "carbonwatch_run_epoch")[1] == pushed
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["epoch"] == pushed


def test_expected_end_extrapolates_from_the_epochs_completed(gateway: Gateway, tmp_path: Path) -> None:
    run = fast_run(gateway.url, tmp_path, run_id="r-eta", retention=60.0, total_epochs=4)
    with run:
        run.epoch(0)
        time.sleep(0.5)
        run.epoch(1)  # one epoch done in ~0.5 s: four take ~2 s
        start = run.progress_state.snapshot().start_time
        s = wait_for(lambda: gateway.samples("r-eta").get("carbonwatch_run_expected_end_time_seconds"), what="eta")
    assert s[0][1] - start == pytest.approx(2.0, abs=0.3)


def test_failed_and_interrupted_runs_push_their_status(gateway: Gateway, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with fast_run(gateway.url, tmp_path, run_id="r-fail", retention=60.0):
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with fast_run(gateway.url, tmp_path, run_id="r-int", retention=60.0):
            raise KeyboardInterrupt
    assert one(gateway.samples("r-fail"), "carbonwatch_run_info")[0]["status"] == "failed"
    assert one(gateway.samples("r-int"), "carbonwatch_run_info")[0]["status"] == "stopped"


def test_gateway_killed_mid_run_costs_nothing_and_gets_the_state_when_back(
    gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = fast_run(gateway.url, tmp_path, run_id="r-restart", retention=60.0)
    with run:
        run.progress(samples=10, loss=1.0)
        wait_for(lambda: gateway.samples("r-restart").get("carbonwatch_run_samples_total"), what="first push")
        gateway.kill()
        worst = 0.0
        for step in range(2000):  # keep training while the gateway is gone
            t0 = time.perf_counter()
            run.progress(samples=1, loss=1.0 / (step + 2))
            run.epoch(step // 1000)
            worst = max(worst, time.perf_counter() - t0)
            if step % 100 == 0:
                time.sleep(0.01)
        assert worst < 0.005, f"a progress call took {worst * 1000:.2f} ms while the gateway was down"
        wait_for(lambda: run.pusher is not None and run.pusher.failures > 0, what="a failed push")
        gateway.start()  # a fresh gateway with no state
        s = wait_for(
            lambda: (x := gateway.samples("r-restart")).get("carbonwatch_run_samples_total") and x,
            timeout=20, what="the state to reach the restarted gateway",
        )
        assert one(s, "carbonwatch_run_samples_total")[1] == 2010
        assert one(s, "carbonwatch_run_epoch")[1] == 2  # epochs 0 and 1 started
        assert one(s, "carbonwatch_run_info")[0]["status"] == "running"
    assert one(gateway.samples("r-restart"), "carbonwatch_run_info")[0]["status"] == "succeeded"
    warnings = [r.getMessage() for r in caplog.records if "Pushgateway" in r.getMessage()]
    assert any("cannot push" in w for w in warnings) and any("answers again" in w for w in warnings)


def test_dead_gateway_run_ends_quickly_and_the_record_says_not_pushed(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with fast_run(dead, tmp_path, run_id="r-dead") as run:
        for _ in range(100):
            run.progress(samples=1)
    took = time.monotonic() - t0
    assert took < 6, took
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["pushed"] is False and rec["samples"] == 100 and rec["status"] == "succeeded"


def test_braces_in_a_label_stay_one_exact_label_value_and_quotes_are_refused(gateway: Gateway, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^model: .* quote"):
        fast_run(gateway.url, tmp_path, run_id="r-quote", model='x"} carbonwatch_run_info{run_id="evil')
    tricky = "x} carbonwatch_run_info{run_id=evil"
    with fast_run(gateway.url, tmp_path, run_id="r-quote", model=tricky, retention=60.0):
        s = wait_for(lambda: gateway.samples("r-quote").get("carbonwatch_run_info"), what="push")
    assert [lab["model"] for lab, _ in s] == [tricky]
    assert gateway.samples("evil") == {}


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"user": "al\nice"}, "user"),
        ({"model": "m" * 129}, "model"),
        ({"project": "tab\there"}, "project"),
        ({"run_id": "a/b"}, "run_id"),
        ({"run_id": ""}, "run_id"),
        ({"team": " padded"}, "team"),
        ({"budget_grams": -1}, "budget-grams"),
        ({"model": "x" * 10240}, "model"),
        ({"user": "caf\udce9"}, "user"),  # the byte 0xe9 of a Latin-1 argv or environment, not UTF-8
        ({"project": b"vision"}, "project"),
        ({"run_id": "r" * 10240}, "run_id"),
        ({"first_epoch": 2}, "first_epoch"),
        ({"zone": "XX"}, "zone"),
    ],
)
def test_bad_labels_are_refused_with_the_label_named(kwargs: dict[str, Any], named: str, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"user": "alice", **kwargs}
    if kw.get("run_id") == "":
        kw["run_id"] = None
        os.environ["CARBONWATCH_RUN_ID"] = "bad id"
    try:
        with pytest.raises(ConfigError) as err:
            Run(pushgateway="127.0.0.1:1", runs_file=tmp_path / "r.jsonl", **kw)
    finally:
        os.environ.pop("CARBONWATCH_RUN_ID", None)
    assert str(err.value).startswith(named)
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)  # one short line, whatever the value


def test_bad_metric_names_are_dropped_without_raising(gateway: Gateway, tmp_path: Path) -> None:
    with fast_run(gateway.url, tmp_path, run_id="r-names", retention=60.0) as run:
        run.progress(samples=1, **{"loss": 0.1, "bad name": 1.0, "new\nline": 2.0})
        run.log(nan_metric=float("nan"), text="not a number")
        run.phase("no spaces allowed")
        s = wait_for(lambda: gateway.samples("r-names").get("carbonwatch_run_metric"), what="push")
    assert [(lab["name"], v) for lab, v in s] == [("loss", 0.1)]


def _threads() -> set[str]:
    import threading

    return {t.name for t in threading.enumerate()}


def test_a_live_node_exporter_measures_the_run_and_no_sampler_runs_in_the_training_process(
    gateway: Gateway, tmp_path: Path, _own_spool: Path
) -> None:
    _own_spool.mkdir()
    beat = _own_spool / HEARTBEAT_FILE
    beat.touch()
    assert exporter_alive()
    run = fast_run(gateway.url, tmp_path, run_id="r-node", local_meter=True, retention=60.0)
    with run:
        assert run.meter is None and run.measurement == NODE_EXPORTER
        assert "carbonwatch-local-meter" not in _threads()
        # registered, so the exporter counts this process and its children in the run
        assert json.loads((_own_spool / f"r-node.{os.getpid()}.json").read_text())["run_id"] == "r-node"
        run.progress(samples=5)
        wait_for(lambda: gateway.samples("r-node").get("carbonwatch_run_info"), what="labels pushed")
    rec = run.record
    assert rec is not None
    assert (rec["measurement"], rec["mode"], rec["energy_joules"], rec["emissions_grams"]) == (
        "node exporter", "node", {}, None)
    text = format_summary(rec)
    assert "measured by the node exporter, not in this process" in text and "carbonwatch report r-node" in text
    assert "labels" not in text  # they reached the gateway: nothing to say
    # A heartbeat older than 15 s is a stopped exporter: the run measures itself again.
    os.utime(beat, (time.time() - 60, time.time() - 60))
    assert not exporter_alive()
    local = fast_run(gateway.url, tmp_path, run_id="r-stale", local_meter=True, retention=60.0, meter_interval=0.2)
    with local:
        assert local.measurement == "local meter" and "carbonwatch-local-meter" in _threads()
    assert local.record is not None and local.record["measurement"] == "local meter"


@pytest.fixture
def prometheus_with_run(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus holding the recorded series of run r-node-prom, as the node exporter's figures end up."""
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip("prometheus/promtool not installed")
    now = int(time.time())
    energy = "run_id_component:carbonwatch_energy_joules:total"
    grams = "run_id:carbonwatch_emissions_grams:total"
    sel = 'run_id="r-node-prom"'
    lines = [f"# TYPE {energy} gauge"]
    for t in (now - 60, now - 30):
        lines.append(f'{energy}{{{sel},component="cpu"}} 20 {t}')
        lines.append(f'{energy}{{{sel},component="memory"}} 5 {t}')
    lines.append(f"# TYPE {grams} gauge")
    lines += [f"{grams}{{{sel}}} 0.00244 {t}" for t in (now - 60, now - 30)]
    lines.append("# EOF")
    (tmp_path / "s.om").write_text("\n".join(lines) + "\n")
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "s.om"),
                    str(tmp_path / "tsdb")], check=True, capture_output=True, timeout=60)
    (tmp_path / "prom.yml").write_text("global: {}\n")
    port = free_port()
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prom.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(url + "/-/ready", timeout=1).status == 200, timeout=60,
                 what="prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_with_a_node_exporter_the_summary_shows_the_figures_prometheus_recorded(
    prometheus_with_run: str, tmp_path: Path, _own_spool: Path
) -> None:
    _own_spool.mkdir()
    (_own_spool / HEARTBEAT_FILE).touch()
    run = Run(run_id="r-node-prom", user="alice", runs_file=tmp_path / "runs.jsonl", summary=False,
              prometheus=prometheus_with_run, zone="DE", budget_grams=0.001)
    with run:
        assert run.meter is None
    rec = run.record
    assert rec is not None
    assert rec["energy_joules"] == {"cpu": 20.0, "memory": 5.0}
    assert rec["sources"] == {"cpu": "node exporter", "memory": "node exporter"}
    assert rec["emissions_grams"] == pytest.approx(0.00244)  # Prometheus's figure, not re-priced at the table's
    text = format_summary(rec)
    assert "energy total  25 J" in text and "0.00244 g CO2e (Prometheus" in text
    assert "budget        0.001 g, 244 % used (exceeded)" in text
    assert "labels        reached no Pushgateway (none configured" in text


def test_the_gateway_policy_is_the_longest_stay_and_a_run_may_ask_for_less() -> None:
    def group(run_id: str, end: float, own: float | None) -> dict:
        g = {"labels": {"job": "carbonwatch_run", "run_id": run_id},
             "carbonwatch_run_end_time_seconds": {"metrics": [{"value": str(end)}]},
             "push_time_seconds": {"metrics": [{"value": str(end)}]}}
        if own is not None:
            g["carbonwatch_run_retention_seconds"] = {"metrics": [{"value": str(own)}]}
        return g

    groups = [group("old", 900.0, None), group("recent", 990.0, None), group("asks-long", 900.0, 3600.0),
              group("asks-short", 995.0, 1.0), group("asks-long-recent", 990.0, 3600.0)]
    ids, kept = reaper.expired(groups, retention=30.0, now=1000.0)
    assert sorted(ids) == ["asks-long", "asks-short", "old"] and kept == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_heartbeat_planted_by_another_user_does_not_switch_off_local_measurement(_own_spool: Path) -> None:
    _own_spool.mkdir()
    beat = _own_spool / HEARTBEAT_FILE
    beat.touch()
    os.chown(beat, 65534, 65534)  # nobody's file: neither root's (the exporter's) nor this user's
    assert not exporter_alive()
    os.chown(beat, 0, 0)
    assert exporter_alive()

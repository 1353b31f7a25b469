"""The run client against a real Pushgateway binary: labels while running, final state, clean-up,
a gateway killed and restarted mid-run, a dead gateway, label injection, and the in-code API."""

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

from carbonwatch.client.api import Run
from carbonwatch.errors import ConfigError

BINARY = shutil.which("prometheus-pushgateway")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BINARY is None, reason="prometheus-pushgateway is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
def _kill_reapers() -> Iterator[None]:
    """The detached group clean-up processes of this test's runs are ended with the test."""
    yield
    while STARTED:
        r = STARTED.pop()
        if r.reaper is not None and r.reaper.poll() is None:
            r.reaper.kill()
            r.reaper.wait(timeout=5)


def fast_run(gw_url: str, tmp: Path, **kw: Any) -> Run:
    kw.setdefault("user", "alice")
    kw.setdefault("model", "resnet18")
    kw.setdefault("project", "vision")
    run = Run(
        pushgateway=gw_url, runs_file=tmp / "runs.jsonl", summary=False, local_meter=False,
        push_interval=0.05, heartbeat=1.0, push_timeout=0.5, **kw,
    )
    STARTED.append(run)
    return run


def test_labels_progress_and_final_state_then_group_is_deleted_after_retention(
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
        assert one(s, "carbonwatch_run_epoch")[1] == 2
        assert one(s, "carbonwatch_run_samples_total")[1] == 64
        assert one(s, "carbonwatch_run_budget_grams")[1] == 500
        assert {lab["name"]: v for lab, v in s["carbonwatch_run_metric"]} == {"loss": 0.25, "accuracy": 0.75}
        assert "carbonwatch_run_end_time_seconds" not in s
        assert abs(one(s, "carbonwatch_run_last_push_time_seconds")[1] - time.time()) < 5
    ended = time.time()
    s = gateway.samples("r-visible")  # the final state, right after the end: pushed synchronously
    assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert abs(one(s, "carbonwatch_run_end_time_seconds")[1] - ended) < 2
    wait_for(lambda: gateway.samples("r-visible") == {}, timeout=15, what="the group to be deleted")
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["run_id"] == "r-visible" and rec["status"] == "succeeded" and rec["pushed"] is True
    assert rec["samples"] == 64 and rec["mode"] == "pushgateway"


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
        assert one(s, "carbonwatch_run_epoch")[1] == 1
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


def test_quotes_and_braces_in_a_label_stay_one_exact_label_value(gateway: Gateway, tmp_path: Path) -> None:
    tricky = 'x"} carbonwatch_run_info{run_id="evil'
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


def test_bad_metric_names_are_dropped_without_raising(gateway: Gateway, tmp_path: Path) -> None:
    with fast_run(gateway.url, tmp_path, run_id="r-names", retention=60.0) as run:
        run.progress(samples=1, **{"loss": 0.1, "bad name": 1.0, "new\nline": 2.0})
        run.log(nan_metric=float("nan"), text="not a number")
        run.phase("no spaces allowed")
        s = wait_for(lambda: gateway.samples("r-names").get("carbonwatch_run_metric"), what="push")
    assert [(lab["name"], v) for lab, v in s] == [("loss", 0.1)]

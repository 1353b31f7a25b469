"""Faults the run client meets, driven with real binaries: a Pushgateway gone for a long stretch during a
run (training never waits on it, the state arrives when it is back), a gateway gone at the end (the run
still ends at once and says so in one line), and hostile label values through the API, the flags of
`carbonwatch run` and the environment (a clear error naming the label, never a traceback).

Timings are shortened through the run settings so a test takes seconds but goes through the same logic as
a 10-minute outage at the default settings: with heartbeat 0.1 s the retry back-off is capped at 0.3 s
(3 heartbeats; 30 s by default), and the outage lasts 20 capped retries, as 10 minutes do at 30 s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from carbonwatch.client.api import Run
from carbonwatch.errors import ConfigError
from tests.client.test_client_pushgateway import BINARY, Gateway, _own_spool, free_port, one, wait_for  # noqa: F401

pytestmark = [pytest.mark.faults, pytest.mark.slow]
needs_gateway = pytest.mark.skipif(BINARY is None, reason="prometheus-pushgateway is not installed")

PUSH_INTERVAL = 0.02
HEARTBEAT = 0.1
MAX_BACKOFF = 3 * HEARTBEAT  # what the client derives from the heartbeat (30 s at the default 10 s)
OUTAGE_RETRIES = 20  # capped retries in a 10-minute outage at the default 30 s cap
STEP_LIMIT_S = 0.050  # the longest a training step may be held up by the client


class Trainer:
    """A training loop whose every client call is timed."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.samples = 0
        self.steps = 0
        self.worst = 0.0
        self.calls = 0

    def _timed(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        self.worst = max(self.worst, time.perf_counter() - t0)
        self.calls += 1

    def train_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.steps % 100 == 0:
                self._timed(self.run.epoch, self.steps // 100)
            sum(math.sqrt(i) for i in range(2000))  # the step itself: ~0.2 ms of CPU
            self._timed(self.run.progress, samples=32, loss=1.0 / (self.steps + 1))
            self.samples += 32
            self.steps += 1


@needs_gateway
@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_long_pushgateway_outage_never_blocks_training_and_the_state_arrives_when_it_is_back(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """killed: connections are refused at once. frozen (SIGSTOP): the kernel still accepts them and every
    push waits out its timeout; when it is thawed it may still apply pushes the client gave up on."""
    caplog.set_level(logging.WARNING, logger="carbonwatch.client")
    gw = Gateway(tmp_path)
    gw.start()
    run = Run(run_id="fault-outage", user="alice", model="mlp", pushgateway=gw.url, runs_file=tmp_path / "runs.jsonl",
              summary=False, push_interval=PUSH_INTERVAL, heartbeat=HEARTBEAT, push_timeout=0.2,
              meter_interval=0.1, budget_grams=1e9, budget_interval=0.1, retention=60.0)
    t = Trainer(run)
    try:
        with run:
            assert run.meter is not None  # local mode measurement runs alongside, as for a real user
            t.train_for(1.0)
            wait_for(lambda: gw.samples("fault-outage").get("carbonwatch_run_samples_total"), what="first push")
            assert gw.proc is not None
            if how == "killed":
                gw.kill()
            else:
                gw.proc.send_signal(signal.SIGSTOP)
            outage = OUTAGE_RETRIES * MAX_BACKOFF
            t.train_for(outage)
            assert run.pusher is not None
            failed = run.pusher.failures
            print(f"{how} gateway, outage {outage:.1f} s: {failed} failed pushes, {t.calls} client calls so far")
            # It kept trying, backing off to the cap rather than hammering every push interval (300 tries);
            # a frozen gateway also costs each try its 0.2 s timeout.
            low = OUTAGE_RETRIES * (0.6 if how == "killed" else 0.3)
            assert low <= failed <= OUTAGE_RETRIES + 10, failed
            if how == "killed":
                gw.start()  # a fresh gateway that has lost every group
            else:
                gw.proc.send_signal(signal.SIGCONT)
            t.train_for(MAX_BACKOFF + 0.5)  # training goes on while the client finds the gateway again
            wait_for(lambda: gw.samples("fault-outage").get("carbonwatch_run_samples_total"), timeout=5,
                     what="the state to reach the gateway once it is back")
            s = wait_for(  # no step runs now: the state on the gateway catches up exactly
                lambda: (x := gw.samples("fault-outage")).get("carbonwatch_run_samples_total", [({}, -1)])[0][1]
                == t.samples and x, timeout=5, what="every sample trained during the outage")
            assert one(s, "carbonwatch_run_info")[0]["status"] == "running"
            assert one(s, "carbonwatch_run_epoch")[1] == (t.steps - 1) // 100 + 1
            t.train_for(0.5)
        s = gw.samples("fault-outage")
        assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
        assert one(s, "carbonwatch_run_samples_total")[1] == t.samples
    finally:
        gw.kill()
    print(f"longest client call: {t.worst * 1000:.3f} ms of {t.calls} calls")
    assert t.worst < STEP_LIMIT_S, f"a client call held a training step {t.worst * 1000:.1f} ms ({t.calls} calls)"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot push to the Pushgateway" in m for m in messages) == 1, messages  # one warning, not 20
    assert sum("answers again; run state sent" in m for m in messages) == 1, messages
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["pushed"] is True and rec["samples"] == t.samples and rec["energy_joules"].get("cpu", 0) > 0


@needs_gateway
def test_a_gateway_gone_at_the_end_costs_a_bounded_wait_and_one_line_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = Gateway(tmp_path)
    gw.start()
    run = Run(run_id="fault-end", user="alice", pushgateway=gw.url, runs_file=tmp_path / "runs.jsonl",
              push_interval=PUSH_INTERVAL, heartbeat=HEARTBEAT, push_timeout=0.2, local_meter=False)
    t = Trainer(run)
    with run:
        t.train_for(0.5)
        wait_for(lambda: gw.samples("fault-end").get("carbonwatch_run_samples_total"), what="first push")
        gw.kill()
        t.train_for(0.5)
        t0 = time.monotonic()
    took = time.monotonic() - t0
    assert took < 2.0 + 1.0, f"the end waited {took:.1f} s for a dead gateway"  # 2 s: the final push's deadline
    assert t.worst < STEP_LIMIT_S
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("  labels ")]
    assert len(said) == 1 and "the final state did not reach" in said[0], err
    assert "Traceback" not in err
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["pushed"] is False and rec["pushes"] > 0 and rec["samples"] == t.samples


# ------------------------------------------------------------------------------------------ hostile labels

HOSTILE: list[tuple[str, Any, str]] = [  # (what, value, what the error says)
    ("newline", "alice\nrun_id=\"other\"", "non-printable character"),
    ("carriage return", "alice\r", "non-printable character"),
    ("10 kB", "a" * 10240, "10240 characters is too long"),
    ("invalid UTF-8", b"\xff\xfealice".decode("utf-8", "surrogateescape"), "not valid UTF-8"),
    ("bytes", b"alice", "expected a string"),
    ("NUL", "ali\x00ce", "non-printable character"),
]


@pytest.mark.parametrize("label", ["user", "model", "project", "team"])
@pytest.mark.parametrize(("what", "value", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_label_values_in_the_api_are_refused_naming_the_label(
    label: str, what: str, value: Any, says: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        Run(pushgateway="127.0.0.1:1", runs_file=tmp_path / "r.jsonl", **{"user": "bob", label: value})
    msg = str(err.value)
    assert msg.startswith(f"{label}: ") and says in msg
    assert len(msg) < 300 and "\n" not in msg and "\r" not in msg and "\x00" not in msg


@pytest.mark.parametrize("value", ["r\nx", "r" * 10240, b"r\xff".decode("utf-8", "surrogateescape"), 'r"}x'])
def test_hostile_run_ids_in_the_api_are_refused_naming_run_id(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Run(run_id=value, pushgateway="127.0.0.1:1", runs_file=tmp_path / "r.jsonl")
    assert str(err.value).startswith("run_id: ") and len(str(err.value)) < 300


@needs_gateway
def test_braces_and_unicode_in_labels_stay_one_exact_label_value_and_quotes_are_refused(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.start()
    tricky = {"user": "o'brien", "model": "x} carbonwatch_run_info{run_id=evil", "project": "vision/net=1",
              "team": "équipe ✓"}
    try:
        with Run(run_id="fault-braces", pushgateway=gw.url, runs_file=tmp_path / "r.jsonl", summary=False,
                 local_meter=False, push_interval=PUSH_INTERVAL, retention=60.0, **tricky):
            s = wait_for(lambda: gw.samples("fault-braces").get("carbonwatch_run_info"), what="push")
        assert len(s) == 1 and {k: s[0][0][k] for k in tricky} == tricky
        assert gw.samples("evil") == {}
        # A quote or a backslash breaks the PromQL selectors of the rules and dashboards: the client refuses it
        # as the exporter does (one rule, carbonwatch/labels.py), naming the label, before anything is pushed.
        for label, value in (("user", 'o"brien'), ("project", "vision\\net")):
            with pytest.raises(ConfigError, match=f"^{label}: .*quote or a backslash"):
                Run(run_id="fault-quotes", pushgateway=gw.url, runs_file=tmp_path / "r.jsonl", summary=False,
                    local_meter=False, **{label: value})
        assert gw.samples("fault-quotes") == {}
    finally:
        gw.kill()


def _cw(argv: list[str | bytes], env: dict[str | bytes, str | bytes]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "carbonwatch", *argv], env=env, capture_output=True, timeout=60)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str | bytes, str | bytes]:
    env: dict[str | bytes, str | bytes] = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update({"CARBONWATCH_RUNS_FILE": str(tmp_path / "runs.jsonl"), "CARBONWATCH_USER": "alice",
                "CARBONWATCH_SPOOL_DIR": str(tmp_path / "spool"), "CARBONWATCH_STACK": "none"})
    return env


CLI_HOSTILE: list[tuple[str, bytes, str]] = [
    ("newline", b"bad\nvalue", "non-printable character"),
    ("10 kB", b"m" * 10240, "10240 characters is too long"),
    ("invalid UTF-8", b"caf\xe9", "not valid UTF-8"),
    ("escape sequence", b"\x1b[2Jx", "non-printable character"),
]


@pytest.mark.parametrize("flag", ["--user", "--model", "--project", "--team", "--run-id"])
@pytest.mark.parametrize(("what", "value", "says"), CLI_HOSTILE, ids=[h[0] for h in CLI_HOSTILE])
def test_hostile_flags_of_carbonwatch_run_exit_2_naming_the_label(
    flag: str, what: str, value: bytes, says: str, cli_env: dict[str | bytes, str | bytes], tmp_path: Path
) -> None:
    started = tmp_path / "started"
    p = _cw(["run", flag, value, "--", sys.executable, "-c", f"open({str(started)!r}, 'w')"], cli_env)
    err = p.stderr.decode("utf-8", "replace")
    label = flag.removeprefix("--").replace("-", "_")
    assert p.returncode == 2, err
    assert err.startswith(f"carbonwatch run: {label}: "), err
    assert says in err or label == "run_id"  # a run id has its own alphabet: the error names it
    assert "Traceback" not in err and len(err) < 500 and err.count("\n") == 1
    assert not started.exists()  # refused before the command ran
    assert not (tmp_path / "runs.jsonl").exists()


@pytest.mark.parametrize(("var", "label"), [("CARBONWATCH_USER", "user"), ("CARBONWATCH_PROJECT", "project"),
                                            ("CARBONWATCH_TEAM", "team")])
@pytest.mark.parametrize(("what", "value", "says"), CLI_HOSTILE, ids=[h[0] for h in CLI_HOSTILE])
def test_hostile_label_values_in_the_environment_exit_2_naming_the_label(
    var: str, label: str, what: str, value: bytes, says: str, cli_env: dict[str | bytes, str | bytes]
) -> None:
    env = dict(cli_env)
    env.pop(var, None)
    env[var.encode()] = value
    p = _cw(["run", "--", "true"], env)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2 and err.startswith(f"carbonwatch run: {label}: ") and says in err, err
    assert "Traceback" not in err and len(err) < 500


def test_braces_in_flags_are_kept_exactly_and_a_quote_is_refused_before_the_command_starts(
    cli_env: dict[str | bytes, str | bytes], tmp_path: Path
) -> None:
    seen = tmp_path / "seen.json"
    script = ("import json, os; json.dump({k: os.environ.get('CARBONWATCH_' + k) for k in ('USER', 'MODEL')}, "
              f"open({str(seen)!r}, 'w'))")
    p = _cw(["run", "--user", "o'brien", "--model", "x{y}=z", "--", sys.executable, "-c", script], cli_env)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(seen.read_text()) == {"USER": "o'brien", "MODEL": "x{y}=z"}
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert (rec["user"], rec["model"]) == ("o'brien", "x{y}=z")
    seen.unlink()
    p = _cw(["run", "--user", 'o"brien', "--", sys.executable, "-c", script], cli_env)
    assert p.returncode == 2 and b"user: " in p.stderr and b"quote or a backslash" in p.stderr, p.stderr
    assert not seen.exists()


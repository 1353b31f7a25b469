"""The real exporter process keeps its counters across kill -9 and restart, and says when it could not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.exporter_proc import start_exporter
from tests.node.test_exporter_process import BUSY, _children, samples

pytestmark = pytest.mark.slow  # real exporter processes

CONFIG = {
    "zone": "DE", "sample_interval": "200ms", "cpu": {"source": "model", "tdp_watts": 100},
    "collectors": {"gpu": False}, "storage": {"interval": "500ms"},
    "intensity": {"provider": "static", "static_grams_per_kwh": 400},
}


@pytest.fixture
def burner():
    env = dict(os.environ, CARBONWATCH_RUN_ID="durable-1")
    p = subprocess.Popen([sys.executable, "-c", BUSY], env=env)
    yield p
    for c in _children(p.pid):
        os.kill(c, signal.SIGKILL)
    p.kill()
    p.wait()


def run_counters(text: str) -> tuple[float, float]:
    m = samples(text)
    e = sum(v for lab, v in m["carbonwatch_run_energy_joules_total"] if lab["run_id"] == "durable-1")
    g = sum(v for lab, v in m["carbonwatch_run_emissions_grams_total"] if lab["run_id"] == "durable-1")
    return e, g


def node_energy(text: str) -> float:
    return sum(v for _, v in samples(text)["carbonwatch_energy_joules_total"])


def config(tmp_path):
    cfg = dict(CONFIG)
    cfg["storage"] = dict(CONFIG["storage"], path=str(tmp_path / "state"))
    cfg["process"] = {"spool_dir": str(tmp_path / "spool")}
    return cfg


def test_kill_9_and_restart_continue_every_counter(tmp_path, burner):
    exp = start_exporter(tmp_path, config(tmp_path))
    try:
        seen = []
        for _ in range(10):
            time.sleep(0.3)
            seen.append(run_counters(exp.scrape()))
        # never down while serving
        assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(seen, seen[1:], strict=False))
        before_e, before_g = seen[-1]
        before_node = node_energy(exp.scrape())
        assert before_e > 0 and before_g == pytest.approx(before_e / 3.6e6 * 400, rel=1e-9)
        text = exp.scrape()
        assert 'carbonwatch_state_restore_status{status="missing"} 1.0' in text
        exp.proc.kill()  # SIGKILL: no chance to write a last state
        exp.proc.wait()
    finally:
        exp.stop()
    exp2 = start_exporter(tmp_path, config(tmp_path))
    try:
        time.sleep(0.6)
        text = exp2.scrape()
        after_e, after_g = run_counters(text)
        assert 'carbonwatch_state_restore_status{status="restored"} 1.0' in text
        # what was counted up to the last write (at most 0.5 s + one sample before the kill) is kept: the
        # burner draws ~25 W of the 100 W model on this 2-core machine, so a loss would be ~15 J or more
        lost_at_most = 25.0 * (0.5 + 0.2 + 0.2) + 1.0
        assert after_e >= before_e - lost_at_most
        assert after_e > 0.5 * before_e  # continued, not started again from 0
        assert after_g == pytest.approx(after_e / 3.6e6 * 400, rel=1e-9)
        assert node_energy(text) >= before_node - 100.0 * (0.5 + 0.4)
    finally:
        exp2.stop()


def test_a_corrupt_state_file_starts_fresh_and_says_so(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text('{"format": "carbonwatch-state", "version": 1, "saved')
    exp = start_exporter(tmp_path, config(tmp_path))
    try:
        time.sleep(0.5)
        text = exp.scrape()
        assert 'carbonwatch_state_restore_status{status="corrupt"} 1.0' in text
        assert "is corrupt" in exp.log() and "start again from 0" in exp.log()
        assert (tmp_path / "state" / "state.json.corrupt").exists()
        time.sleep(0.8)
        assert (tmp_path / "state" / "state.json").exists()  # a fresh state is written again
    finally:
        exp.stop()


def test_sigterm_writes_the_last_state(tmp_path, burner):
    exp = start_exporter(tmp_path, config(tmp_path) | {"storage": {"path": str(tmp_path / "state"),
                                                                    "interval": "60s"}})
    try:
        time.sleep(1.5)
        e, _ = run_counters(exp.scrape())
    finally:
        assert exp.stop() == 0
    import json
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert sum(state["runs"]["durable-1"]["energy_joules"].values()) >= e

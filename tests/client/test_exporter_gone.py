"""A node exporter that stops: a clean stop removes its heartbeat (a run started right after measures itself),
and a run whose exporter disappears mid-run measures locally from that moment and says so."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from carbonwatch.client.api import Run
from carbonwatch.client.node import exporter_alive, heartbeat_path
from carbonwatch.client.summary import LOCAL_METER, NODE_EXPORTER
from tests.exporter_proc import start_exporter
from tests.support import eventually

pytestmark = pytest.mark.slow

CONFIG = {"sample_interval": "0.5s", "cpu": {"source": "model", "tdp_watts": 100}, "collectors": {"gpu": False}}


def busy(seconds: float) -> None:
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        pass


def exporter(tmp_path: Path, spool: Path):  # type: ignore[no-untyped-def]
    exp = start_exporter(tmp_path, dict(CONFIG, process={"spool_dir": str(spool)}))
    eventually(lambda: exporter_alive(str(spool)), 20, "the exporter's heartbeat")
    return exp


def test_a_clean_stop_removes_the_heartbeat_so_the_next_run_measures_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    monkeypatch.setenv("CARBONWATCH_SPOOL_DIR", str(spool))
    exp = exporter(tmp_path, spool)
    assert exp.stop() == 0
    assert not heartbeat_path(str(spool)).exists()
    assert (tmp_path / "state" / "state.json").exists()  # the counters are still written at the stop
    with Run(run_id="right-after", user="alice", runs_file=tmp_path / "runs.jsonl", summary=False) as run:
        busy(0.3)
    assert run.measurement == LOCAL_METER and run.record is not None
    assert run.record["energy_joules"].get("cpu", 0.0) > 0


def test_a_run_whose_exporter_stops_measures_locally_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    monkeypatch.setenv("CARBONWATCH_SPOOL_DIR", str(spool))
    exp = exporter(tmp_path, spool)
    try:
        run = Run(run_id="lost-exporter", user="alice", runs_file=tmp_path / "runs.jsonl", meter_interval=0.2)
        run.measured.poll_s = 0.2
        run.start()
        assert run.measurement == NODE_EXPORTER and run.meter is None
        busy(0.5)
    finally:
        assert exp.stop() == 0
    stopped = time.time()
    eventually(lambda: run.meter is not None, 10, "the local meter taking over")
    busy(1.5)
    rec = run.finish()
    assert rec is not None
    assert rec["measurement"] == NODE_EXPORTER and rec["fallback_time"] >= stopped - 0.5
    assert rec["energy_joules"]["cpu"] > 0  # the local meter's part, after the exporter stopped
    assert rec["sources"]["cpu"] == run.meter.totals().sources["cpu"]  # no Prometheus: only the local part
    err = capsys.readouterr().err
    assert "the node exporter stopped" in err and "measured locally from then on" in err
    assert "energy total" in err

"""`carbonwatch report --ledger` against the real `carbonwatch ledger serve`, synced from a real Prometheus holding
a run requeued from node a to node b and seen through an HA pair (tests/ledger/scenario.py): exact figures,
the components adding up, the segments per node and the ledger's quality notes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ledger.ledger_proc import start_ledger
from tests.ledger.scenario import G_PER_J, RUN, RUN_JOULES, History
from tests.support import eventually

pytestmark = pytest.mark.slow


def report(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carbonwatch", "report", *argv], capture_output=True, text=True,
                          timeout=60)


def test_report_reads_the_real_ledger_exactly(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    h = History(int(time.time()) // 60 * 60 - 3 * 3600).build()
    prom = h.prometheus(tmp_path_factory.mktemp("prom"))
    ledger = start_ledger(tmp_path, prom.url, f"sqlite:///{tmp_path / 'ledger.db'}", "--sync.chunk", "20m",
                          "--sync.interval", "1s")
    try:
        eventually(lambda: ledger.synced_until() >= h.start + 7200, 120, "the ledger caught up")
        r = report(RUN, "--ledger", ledger.url, "--format", "json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["source"] == "ledger" and rep["status"] == "succeeded"
        assert rep["energy_joules"] == pytest.approx(RUN_JOULES, rel=1e-9)
        assert rep["emissions_grams"] == pytest.approx(RUN_JOULES * G_PER_J, rel=1e-9)
        parts = rep["components"].values()
        assert sum(c["energy_joules"] for c in parts) == pytest.approx(rep["energy_joules"], rel=1e-9)
        assert [s["instance"] for s in rep["segments"]] == ["a:9860", "b:9860"]
        assert any("2 nodes" in note for note in rep["quality"])
        table = report(RUN, "--ledger", ledger.url)
        assert table.returncode == 0 and f"read from the ledger at {ledger.url}" in table.stdout
        assert "on a:9860" in table.stdout and "on b:9860" in table.stdout and "Data quality:" in table.stdout
        # Prometheus' raw counters give the same figures: each node's counter once, though two replicas hold it
        tsdb = json.loads(report(RUN, "--prometheus", prom.url, "--format", "json").stdout)
        assert tsdb["source"] == "prometheus"
        assert tsdb["energy_joules"] == pytest.approx(rep["energy_joules"], rel=1e-9)
        assert tsdb["emissions_grams"] == pytest.approx(rep["emissions_grams"], rel=1e-9)
        missing = report("no/such#run", "--ledger", ledger.url)
        assert missing.returncode == 2 and "unknown to the ledger" in missing.stderr
    finally:
        ledger.stop()
        prom.stop()

"""End to end: a real exporter measures a real CPU-burning run, a real Prometheus scrapes it, a real ledger
syncs from Prometheus; once the run has ended, the ledger's totals equal the exporter's own counters within
0.1 % (on SQLite)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.exporter_proc import start_exporter
from tests.ledger.ledger_proc import start_ledger
from tests.node.test_exporter_durable import CONFIG
from tests.node.test_exporter_process import samples
from tests.support import Prometheus, eventually

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")]
RUN = "e2e:ledger@1+run"  # what the exporter accepts as a run id (runid.py)
BURN = "import time\nt = time.time()\nwhile time.time() - t < 12: pass\n"


def run_totals(text: str) -> tuple[float, float]:
    m = samples(text)
    return (sum(v for lab, v in m["carbonwatch_run_energy_joules_total"] if lab["run_id"] == RUN),
            sum(v for lab, v in m["carbonwatch_run_emissions_grams_total"] if lab["run_id"] == RUN))


def test_ledger_totals_equal_the_exporters_counters(tmp_path):
    cfg = dict(CONFIG, storage={"interval": "500ms", "path": str(tmp_path / "state")},
               process={"spool_dir": str(tmp_path / "spool"), "run_linger": "10m"})
    exp = start_exporter(tmp_path, cfg)
    prom = ledger = None
    burner = subprocess.Popen([sys.executable, "-c", BURN], env=dict(os.environ, CARBONWATCH_RUN_ID=RUN))
    try:
        target = exp.url.split("//")[1].split("/")[0]
        prom = Prometheus(tmp_path, {"carbonwatch": [target]}, interval="1s")
        ledger = start_ledger(tmp_path, prom.url, f"sqlite:///{tmp_path / 'ledger.db'}", "--sync.interval", "1s",
                              "--sync.delay", "3s")
        burner.wait(timeout=60)
        final = eventually(lambda: _settled(exp.scrape()), 30, "the run's counters stopped growing")
        assert final[0] > 1.0
        flat_since = time.time()
        eventually(lambda: ledger.synced_until() > flat_since + 2, 60, "the ledger synced past the run's end")
        run = ledger.run(RUN).json()
        assert run["energy_joules"] == pytest.approx(final[0], rel=1e-3)
        assert run["emissions_grams"] == pytest.approx(final[1], rel=1e-3)
        assert {n["component"] for n in run["nodes"]} >= {"cpu"}
        m = ledger.metrics()
        e = [v for (name, labels), v in m.items()
             if name == "carbonwatch_ledger_run_energy_joules" and dict(labels)["run_id"] == RUN]
        assert e == [pytest.approx(final[0], rel=1e-3)]
    finally:
        burner.kill()
        for proc in (ledger, prom, exp):
            if proc is not None:
                proc.stop()


_last: list[tuple[float, float]] = []


def _settled(text: str) -> tuple[float, float] | None:
    """The run's counters once two scrapes 1.5 s apart agree."""
    now = run_totals(text)
    if _last and _last[-1] == now and now[0] > 0:
        return now
    _last.append(now)
    time.sleep(1.5)
    return None

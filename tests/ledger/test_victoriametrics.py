"""VictoriaMetrics as the ledger's input: its Prometheus-compatible API answers range selectors with raw
samples ((t - d, t]); the ledger asks with `nocache=1` so neither the rollup cache nor the latency offset
hides recent samples. The same requeued run through an HA pair gives the same exact totals."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from tests.ledger.ledger_proc import start_ledger
from tests.ledger.scenario import RUN, RUN_JOULES, ZONE_JOULES, History
from tests.support import eventually, free_port, http_ok, stop_process

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("victoria-metrics") is None, reason="victoria-metrics not installed")]


def test_victoriametrics_input_gives_the_exact_totals(tmp_path):
    h = History(int(time.time()) // 60 * 60 - 3 * 3600).build()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "vm.log", "w") as log:
        vm = subprocess.Popen(["victoria-metrics", f"-storageDataPath={tmp_path / 'vm'}", "-retentionPeriod=1y",
                               f"-httpListenAddr=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: http_ok(url + "/health"), 30, "victoria-metrics ready")
        lines = [f"{name}{{{labels}}} {value} {t * 1000}" for name, rows in h.series.items()
                 for labels, value, t in rows]  # fmt: skip
        requests.post(url + "/api/v1/import/prometheus", data="\n".join(lines) + "\n", timeout=60).raise_for_status()
        requests.get(url + "/internal/force_flush", timeout=30)
        ledger = start_ledger(tmp_path, url, f"sqlite:///{tmp_path / 'l.db'}", "--sync.chunk", "30m",
                              "--sync.interval", "1s")
        try:
            eventually(lambda: ledger.synced_until() >= h.start + 7200, 120, "the ledger caught up")
            run = ledger.run(RUN).json()
            assert run["energy_joules"] == pytest.approx(RUN_JOULES, rel=1e-9)
            assert run["user"] == "ann"
            m = ledger.metrics()
            assert m[("carbonwatch_ledger_zone_energy_joules", (("period", "30d"), ("zone", "DE")))] == \
                pytest.approx(ZONE_JOULES, rel=1e-9)
        finally:
            ledger.stop()
    finally:
        stop_process(vm)

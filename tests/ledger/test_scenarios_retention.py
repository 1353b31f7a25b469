"""30-day figures with a TSDB that keeps 15 days: the ledger synced the older half while Prometheus still held
it; then Prometheus runs with `--storage.tsdb.retention.time=15d` (it drops the older blocks), the ledger
syncs the rest, and the 30-day, per-day and per-run figures stay exact."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests

from tests import ledgerfakes as lf
from tests.ledger.test_scenarios import Check
from tests.ledgerharness import Ledger
from tests.support import Prometheus, eventually

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None, reason="prometheus/promtool not installed")]


def holds_day(prom: Prometheus, t: float) -> bool:
    """Does Prometheus hold any node counter sample in the day before `t`?"""
    r = requests.get(f"{prom.url}/api/v1/query", timeout=30,
                     params={"query": f"count_over_time({lf.NODE_J}[1d])", "time": t})
    return bool(r.json()["data"]["result"])


def test_thirty_days_exact_after_prometheus_forgot_half(tmp_path: Path) -> None:
    fleet = lf.month_fleet(time.time())
    data = lf.backfill(fleet.samples(), tmp_path)
    prom = Prometheus.serving(tmp_path, data, ["--storage.tsdb.retention.time=100y"])  # the default is 15d
    assert holds_day(prom, fleet.start + 2 * lf.DAY), "Prometheus does not hold the first days"
    half = fleet.end - 14 * lf.DAY
    ledger = Ledger(tmp_path, prom.url, f"sqlite:///{tmp_path / 'ledger.db'}",
                    ["--sync.delay", f"{int(time.time() - half)}s", "--sync.chunk", "1d"])
    try:
        ledger.wait_synced(half - 600, timeout=180)
        ledger.stop()
        prom.stop()
        prom = Prometheus.serving(tmp_path, data, ["--storage.tsdb.retention.time=15d"])
        # the TSDB really forgot the first half (blocks past the retention are deleted when loaded)
        assert holds_day(prom, fleet.end), "Prometheus lost the last day"
        eventually(lambda: not holds_day(prom, fleet.start + 2 * lf.DAY), 60, "Prometheus dropped the first days")
        ledger.args, ledger.source = ["--sync.chunk", "1d"], prom.url
        ledger.start()
        ledger.wait_synced(fleet.end + 1, timeout=180)
        Check("30 days over a 15-day TSDB", ledger, fleet).all()
    finally:
        ledger.stop()
        prom.stop()

"""Real processes for the ledger scenarios: the ledger itself (`carbonwatch ledger serve`) and VictoriaMetrics
(PostgreSQL: tests/ledger/postgres.py). Each lives in a temporary directory and is stopped by its owner."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually, free_port, http_ok, stop_process


class Ledger:
    """`carbonwatch ledger serve` on loopback against `source` (a Prometheus HTTP API URL)."""

    def __init__(self, tmp: Path, source: str, database: str, args: Sequence[str] = ()) -> None:
        self.tmp, self.source, self.database, self.args = tmp, source, database, list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "ledger.log"
        self.start()

    def start(self, extra: Sequence[str] = ()) -> None:
        cmd = [sys.executable, "-m", "carbonwatch", "ledger", "serve", "--prometheus", self.source,
               "--database", self.database, "--web.listen-address", f"127.0.0.1:{self.port}",
               "--sync.interval", "1s", *self.args, *extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            eventually(lambda: self.alive() and http_ok(self.url + "/-/ready"), 60, "ledger ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"ledger did not start:\n{self.log.read_text()[-3000:]}") from None

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"ledger exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return True

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(self.url + path, params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        text = requests.get(self.url + "/metrics", timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def gauge(self, name: str) -> float:
        found = [v for (n, _), v in self.metrics().items() if n == name]
        return found[0] if found else 0.0

    def cursor(self) -> float:
        return self.gauge("carbonwatch_ledger_synced_until_timestamp_seconds")

    def wait_synced(self, until: float, timeout: float = 120) -> float:
        """Until the cursor passed `until` (Unix s) and /metrics shows it: the snapshot is refreshed after a
        whole sync, so two more syncs must have ended. The cursor."""
        cursor = float(eventually(lambda: self.alive() and (c := self.cursor()) >= until and c, timeout,
                                  f"ledger cursor past {until}", every=0.5))
        for _ in range(2):
            last = self.gauge("carbonwatch_ledger_last_sync_timestamp_seconds")
            eventually(lambda last=last: self.gauge("carbonwatch_ledger_last_sync_timestamp_seconds") > last,
                       60, "one more sync", every=0.2)
        return cursor

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class VictoriaMetrics:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "vm.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["victoria-metrics", f"-storageDataPath={tmp / 'vm'}", f"-httpListenAddr=127.0.0.1:{self.port}",
                 "-retentionPeriod=100y", "-search.disableCache", "-search.latencyOffset=0s"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            eventually(lambda: self.proc.poll() is None and http_ok(self.url + "/health"), 60, "victoria-metrics up")
        except AssertionError:
            self.stop()
            raise AssertionError(f"victoria-metrics did not start:\n{self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        stop_process(self.proc)

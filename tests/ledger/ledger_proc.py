"""Start the real `carbonwatch ledger serve` as a child process for tests and benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from tests.support import free_port, stop_process

REPO = Path(__file__).resolve().parent.parent.parent
_LISTEN = re.compile(r"ledger listening on (https?://\S+)")


class Ledger:
    def __init__(self, proc: subprocess.Popen[str], url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=30)

    def run(self, run_id: str) -> requests.Response:
        return self.get("/api/v1/runs/" + quote(run_id, safe=""))

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families
        out = {}
        for fam in text_string_to_metric_families(self.get("/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def synced_until(self) -> float:
        for (name, _), v in self.metrics().items():
            if name == "carbonwatch_ledger_synced_until_timestamp_seconds":
                return v
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        return stop_process(self.proc)


def start_ledger(tmp: Path, prometheus: str, database: str, *args: str, timeout: float = 30.0,
                 name: str = "ledger") -> Ledger:
    log_path = tmp / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "exporter"), str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    offset = log_path.stat().st_size if log_path.exists() else 0  # earlier runs' lines are not this one's
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carbonwatch", "ledger", "serve", "--prometheus", prometheus,
             "--database", database, "--web.listen-address", f"127.0.0.1:{free_port()}", *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTEN.search(log_path.read_text()[offset:])
        if m:
            return Ledger(proc, m.group(1), log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(proc)
    raise AssertionError(f"the ledger did not start:\n{log_path.read_text()[-3000:]}")

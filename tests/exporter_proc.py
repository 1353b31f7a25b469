"""Start the real `carbonwatch exporter` as a child process for tests and benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from tests.fakes import exporter as fake_exporter
from tests.support import stop_process

REPO = Path(__file__).resolve().parent.parent
_LISTEN = re.compile(r"listening on (http://\S+/metrics)")


class Exporter:
    def __init__(self, proc: subprocess.Popen[str], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def scrape(self) -> str:
        r = requests.get(self.url, timeout=5)
        r.raise_for_status()
        return r.text

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        return stop_process(self.proc)


def start_exporter(tmp: Path, config: dict, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                   timeout: float = 20.0, nvml: str | None = None) -> Exporter:
    """The exporter for `config`; `nvml` names a fake NVML module handed to its constructors
    (tests/fakes/exporter.py), e.g. "tests.fakes.fake_nvml"."""
    cfg_path = tmp / "exporter.yml"
    config = dict(config)
    config.setdefault("web", {"listen_address": "127.0.0.1:0"})
    config.setdefault("storage", {"path": str(tmp / "state")})  # never the node's /var/lib/carbonwatch
    # never the shared /tmp/carbonwatch-runs: the session's spool (tests/conftest.py), where this test's clients look
    spool = os.environ.get("CARBONWATCH_SPOOL_DIR") or str(tmp / "spool")
    config["process"] = {"spool_dir": spool, **dict(config.get("process") or {})}
    cfg_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "exporter.log"
    full_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [*(fake_exporter.command(nvml) if nvml else [sys.executable, "-m", "carbonwatch", "exporter"]),
         "--config.file", str(cfg_path), *args],
        cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTEN.search(log_path.read_text())
        if m:
            return Exporter(proc, m.group(1).replace("0.0.0.0", "127.0.0.1"), log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"exporter did not start:\n{log_path.read_text()}")

"""Fixtures shared by the run client's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    e["CARBONWATCH_RUNS_FILE"] = str(tmp_path / "runs.jsonl")
    e["CARBONWATCH_USER"] = "alice"
    cfg = tmp_path / "cw.yml"
    cfg.write_text("run:\n  push_interval: 0.1s\n  meter_interval: 0.2s\n  budget_interval: 0.2s\n  retention: 1s\n")
    e["CARBONWATCH_CONFIG"] = str(cfg)
    e["CARBONWATCH_SPOOL_DIR"] = str(tmp_path / "spool")  # no node exporter's heartbeat unless a test writes one
    e["CARBONWATCH_STACK"] = "none"  # nor the stack settings file of the user running the tests
    return e

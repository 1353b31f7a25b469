"""A real (small) PyTorch training loop on CPU, tracked end to end: in-code API with a real Pushgateway
and local measurement, and the example script wrapped by `carbonwatch run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.client.api import Run
from tests.client.test_client_pushgateway import STARTED, Gateway, _own_spool, gateway, one, wait_for  # noqa: F401

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_torch_mlp_loop_is_tracked_end_to_end(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = torch.randn(16, 1)
    run = Run(run_id="torch-e2e", user="alice", model="mlp", project="tests", pushgateway=gateway.url,
              runs_file=tmp_path / "runs.jsonl", summary=False, push_interval=0.05, meter_interval=0.2,
              retention=60.0, total_epochs=3)
    STARTED.append(run)
    losses = []
    with run:
        for epoch in range(3):
            run.epoch(epoch)
            for _ in range(100):
                x = torch.randn(32, 16)
                loss = torch.nn.functional.mse_loss(model(x), x @ w)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.progress(samples=32, loss=loss)  # the tensor itself: read on the push thread
                losses.append(loss.item())
        run.phase("eval")
        s = wait_for(lambda: (x := gateway.samples("torch-e2e")).get("carbonwatch_run_phase_info")
                     and x["carbonwatch_run_phase_info"][0][0]["phase"] == "eval" and x, what="eval phase")
        assert one(s, "carbonwatch_run_samples_total")[1] == 3 * 100 * 32
        assert one(s, "carbonwatch_run_epoch")[1] == 3  # `for epoch in range(3)`: three epochs
        (lab, pushed_loss), = s["carbonwatch_run_metric"]
        assert lab["name"] == "loss" and pushed_loss == pytest.approx(losses[-1])
        assert one(s, "carbonwatch_run_expected_end_time_seconds")[1] > one(
            s, "carbonwatch_run_start_time_seconds")[1]
    assert losses[-1] < losses[0] / 2  # it really trained
    rec = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "succeeded" and rec["samples"] == 9600
    assert rec["energy_joules"]["cpu"] > 0 and rec["sources"]["cpu"] in ("rapl", "model")
    assert rec["emissions_grams"] > 0


def test_example_script_wrapped_by_carbonwatch_run(tmp_path: Path) -> None:
    env_runs = tmp_path / "runs.jsonl"
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(CARBONWATCH_RUNS_FILE=str(env_runs), CARBONWATCH_USER="bob", CARBONWATCH_SPOOL_DIR=str(tmp_path),
               CARBONWATCH_STACK="none")
    p = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "run", "--run-id", "example-wrapped", "--model", "mlp", "--",
         sys.executable, str(ROOT / "examples" / "train_mlp.py"), "--epochs", "2", "--steps-per-epoch", "50"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "train_mlp: torch, 2 epochs" in p.stderr
    recs = [json.loads(line) for line in env_runs.read_text().splitlines()]
    assert [r["run_id"] for r in recs] == ["example-wrapped"]  # one record: the wrapper's
    assert recs[0]["user"] == "bob" and recs[0]["energy_joules"]["cpu"] > 0

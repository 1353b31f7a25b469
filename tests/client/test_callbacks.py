"""The framework callbacks against the real frameworks (CPU, tiny models), each pushing to a real
Pushgateway; and the package importing without any of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from carbonwatch.client.api import Run
from tests.client.test_client_pushgateway import STARTED, Gateway, _own_spool, gateway, one, wait_for  # noqa: F401

pytestmark = pytest.mark.slow


def kwargs(gw: Gateway, tmp: Path, run_id: str) -> dict[str, Any]:
    return dict(run_id=run_id, user="alice", model="tiny", pushgateway=gw.url, runs_file=tmp / "runs.jsonl",
                summary=False, local_meter=False, push_interval=0.05, retention=60.0)


def last_record(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "runs.jsonl").read_text().splitlines()[-1])  # type: ignore[no-any-return]


def test_package_and_callbacks_import_without_the_frameworks() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning', 'transformers', 'keras'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import carbonwatch, carbonwatch.client.api\n"
        "from carbonwatch.callbacks import lightning, huggingface, keras\n"
        "names = [c.__name__ for c in lightning.CarbonwatchCallback.__mro__]\n"
        "assert names == ['CarbonwatchCallback', 'HeldRun', 'object'], names\n"
        "assert callable(carbonwatch.run) and callable(carbonwatch.track)\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_lightning_callback_tracks_a_real_trainer(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    torch = pytest.importorskip("torch")
    L = pytest.importorskip("lightning.pytorch")
    from carbonwatch.callbacks.lightning import CarbonwatchCallback

    class Tiny(L.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ds = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    dl = torch.utils.data.DataLoader(ds, batch_size=16)
    cb = CarbonwatchCallback(**kwargs(gateway, tmp_path, "cb-lightning"))
    trainer = L.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), dl, dl)
    assert cb.run is not None
    STARTED.append(cb.run)
    s = gateway.samples("cb-lightning")
    assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert one(s, "carbonwatch_run_samples_total")[1] == 2 * 64
    assert one(s, "carbonwatch_run_epoch")[1] == 2  # max_epochs=2, numbered 0 and 1 by Lightning
    names = {lab["name"] for lab, _ in s["carbonwatch_run_metric"]}
    assert {"loss", "val_loss"} <= names
    assert last_record(tmp_path)["status"] == "succeeded"


def test_huggingface_callback_tracks_a_real_trainer(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from carbonwatch.callbacks.huggingface import CarbonwatchCallback

    class Tiny(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
            out = self.net(x)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    class Data(torch.utils.data.Dataset):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.x, self.y = torch.randn(40, 8), torch.randn(40, 1)

        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": self.x[i], "labels": self.y[i]}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), num_train_epochs=2, per_device_train_batch_size=8, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    cb = CarbonwatchCallback(**kwargs(gateway, tmp_path, "cb-hf"))
    transformers.Trainer(model=Tiny(), args=args, train_dataset=Data(), callbacks=[cb]).train()
    assert cb.run is not None
    STARTED.append(cb.run)
    s = gateway.samples("cb-hf")
    assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert one(s, "carbonwatch_run_samples_total")[1] == 2 * 40  # 5 steps of 8 per epoch
    assert one(s, "carbonwatch_run_epoch")[1] == 2
    assert "loss" in {lab["name"] for lab, _ in s["carbonwatch_run_metric"]}


def test_keras_callback_tracks_a_real_fit(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("torch")
    code = f"""
import os, json
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
from carbonwatch.callbacks.keras import CarbonwatchCallback
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
cb = CarbonwatchCallback(batch_size=16, **{kwargs(gateway, tmp_path, "cb-keras")!r})
model.fit(np.random.rand(64, 8), np.random.rand(64, 1), epochs=2, batch_size=16, verbose=0, callbacks=[cb])
"""
    code = code.replace("PosixPath(", "str(")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(CARBONWATCH_SPOOL_DIR=str(tmp_path / "spool"), CARBONWATCH_STACK="none")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    if p.returncode != 0 and "No module named 'keras'" in p.stderr:
        pytest.skip("keras is not installed")
    assert p.returncode == 0, p.stderr
    s = gateway.samples("cb-keras")
    assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert one(s, "carbonwatch_run_samples_total")[1] == 2 * 64
    assert one(s, "carbonwatch_run_epoch")[1] == 2  # epochs=2, numbered 0 and 1 by Keras
    assert "loss" in {lab["name"] for lab, _ in s["carbonwatch_run_metric"]}


def test_callback_reports_into_a_run_the_script_owns(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    from carbonwatch.callbacks.keras import CarbonwatchCallback

    run = Run(**kwargs(gateway, tmp_path, "cb-owned"))
    STARTED.append(run)
    with run:
        cb = CarbonwatchCallback(run=run, batch_size=4)
        cb.on_train_begin()
        cb.on_epoch_begin(0)
        cb.on_train_batch_end(0, {"loss": 0.5})
        cb.on_train_end()  # the callback does not end a run it did not create
        assert not run._finished
        wait_for(lambda: gateway.samples("cb-owned").get("carbonwatch_run_samples_total") == [
            ({"run_id": "cb-owned", "job": "carbonwatch_run", "instance": ""}, 4.0)], what="4 samples pushed")
    assert run._finished
    wait_for(lambda: gateway.samples("cb-owned"), what="final")

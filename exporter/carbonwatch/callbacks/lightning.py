"""PyTorch Lightning callback: `Trainer(callbacks=[CarbonwatchCallback(user="alice", model="resnet18")])`.

Works with `lightning` (lightning.pytorch) or the older `pytorch_lightning` package; carbonwatch imports
without either.
"""

from __future__ import annotations

from typing import Any

from carbonwatch.callbacks._common import RunHolder, batch_size, optional_base, scalar_metrics
from carbonwatch.client.api import Run

_Base: Any = optional_base(("lightning.pytorch.callbacks", "Callback"), ("pytorch_lightning.callbacks", "Callback"))


class CarbonwatchCallback(_Base):  # type: ignore[misc]
    def __init__(self, run: Run | None = None, **run_kwargs: Any) -> None:
        super().__init__()
        self.holder = RunHolder(run, **run_kwargs)

    @property
    def run(self) -> Run | None:
        return self.holder.run

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.holder.begin()
        if self.run is not None and getattr(trainer, "max_epochs", None) and trainer.max_epochs > 0:
            self.run.total_epochs = int(trainer.max_epochs)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.epoch(int(trainer.current_epoch), first_epoch=0)  # Lightning numbers epochs from 0
            self.run.phase("train")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.run is None:
            return
        metrics: dict[str, Any] = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "detach"):
            metrics["loss"] = loss
        self.run.progress(samples=batch_size(batch), **metrics)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.phase("eval")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.log(**scalar_metrics(getattr(trainer, "callback_metrics", None)))
            self.run.phase("train")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is not None:
            self.run.log(**scalar_metrics(getattr(trainer, "callback_metrics", None)))
        self.holder.end("succeeded")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.holder.end("stopped" if isinstance(exception, KeyboardInterrupt) else "failed")

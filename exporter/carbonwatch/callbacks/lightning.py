"""PyTorch Lightning callback: `Trainer(callbacks=[CarbonwatchCallback(user="alice", model="resnet18")])`.

Works with `lightning` (lightning.pytorch) or the older `pytorch_lightning` package; carbonwatch imports
without either.
"""

from __future__ import annotations

from collections.abc import Mapping

from carbonwatch.callbacks._common import HeldRun, batch_size, optional_base

_Base: type = optional_base(("lightning.pytorch.callbacks", "Callback"), ("pytorch_lightning.callbacks", "Callback"))


def _metrics(trainer: object) -> Mapping[str, object] | None:
    found = getattr(trainer, "callback_metrics", None)  # the Trainer's name; absent on a stand-in
    return found if isinstance(found, Mapping) else None


class CarbonwatchCallback(HeldRun, _Base):  # type: ignore[misc]
    def on_train_start(self, trainer: object, pl_module: object) -> None:
        self.holder.begin()
        max_epochs = getattr(trainer, "max_epochs", None)
        if self.run is not None and max_epochs and int(max_epochs) > 0:
            self.run.total_epochs = int(max_epochs)

    def on_train_epoch_start(self, trainer: object, pl_module: object) -> None:
        self._new_epoch(int(getattr(trainer, "current_epoch", 0)))  # Lightning numbers epochs from 0

    def on_train_batch_end(self, trainer: object, pl_module: object, outputs: object, batch: object,
                           batch_idx: int) -> None:  # fmt: skip
        if self.run is None:
            return
        metrics: dict[str, object] = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "detach"):
            metrics["loss"] = loss
        self.run.progress(samples=batch_size(batch), **metrics)

    def on_validation_start(self, trainer: object, pl_module: object) -> None:
        self._phase("eval")

    def on_validation_end(self, trainer: object, pl_module: object) -> None:
        self._log(_metrics(trainer))
        self._phase("train")

    def on_train_end(self, trainer: object, pl_module: object) -> None:
        self._log(_metrics(trainer))
        self.holder.end("succeeded")

    def on_exception(self, trainer: object, pl_module: object, exception: BaseException) -> None:
        self.holder.end("stopped" if isinstance(exception, KeyboardInterrupt) else "failed")

"""Hugging Face `Trainer` callback: `Trainer(..., callbacks=[CarbonwatchCallback(user="alice")])`.

carbonwatch imports without transformers.
"""

from __future__ import annotations

from typing import Any

from carbonwatch.callbacks._common import RunHolder, optional_base, scalar_metrics
from carbonwatch.client.api import Run

_Base: Any = optional_base(("transformers", "TrainerCallback"))


class CarbonwatchCallback(_Base):  # type: ignore[misc]
    def __init__(self, run: Run | None = None, **run_kwargs: Any) -> None:
        super().__init__()
        self.holder = RunHolder(run, **run_kwargs)

    @property
    def run(self) -> Run | None:
        return self.holder.run

    @staticmethod
    def _samples_per_step(args: Any) -> int:
        per_device = int(getattr(args, "per_device_train_batch_size", 0) or 0)
        accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        world = int(getattr(args, "world_size", 1) or 1)
        return per_device * accumulation * world

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.holder.begin()
        epochs = getattr(args, "num_train_epochs", None)
        if self.run is not None and epochs and float(epochs) >= 1 and float(epochs).is_integer():
            self.run.total_epochs = int(epochs)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is not None:
            # state.epoch: the epochs done so far (0.0 as the first begins), so the numbering is from 0
            self.run.epoch(int(getattr(state, "epoch", 0) or 0), first_epoch=0)
            self.run.phase("train")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.progress(samples=self._samples_per_step(args))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.log(**scalar_metrics(logs))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if self.run is not None:
            self.run.log(**scalar_metrics(metrics))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.holder.end("succeeded")

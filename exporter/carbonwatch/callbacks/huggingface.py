"""Hugging Face `Trainer` callback: `Trainer(..., callbacks=[CarbonwatchCallback(user="alice")])`.

carbonwatch imports without transformers.
"""

from __future__ import annotations

from carbonwatch.callbacks._common import HeldRun, optional_base

_Base: type = optional_base(("transformers", "TrainerCallback"))


def _int(obj: object, name: str, default: int) -> int:
    return int(getattr(obj, name, default) or default)  # TrainingArguments fields, by the framework's names


class CarbonwatchCallback(HeldRun, _Base):  # type: ignore[misc]
    @staticmethod
    def _samples_per_step(args: object) -> int:
        return _int(args, "per_device_train_batch_size", 0) * _int(args, "gradient_accumulation_steps", 1) * _int(
            args, "world_size", 1)

    def on_train_begin(self, args: object, state: object, control: object, **kwargs: object) -> None:
        self.holder.begin()
        epochs = getattr(args, "num_train_epochs", None)
        if self.run is not None and epochs and float(epochs) >= 1 and float(epochs).is_integer():
            self.run.total_epochs = int(epochs)

    def on_epoch_begin(self, args: object, state: object, control: object, **kwargs: object) -> None:
        # state.epoch: the epochs done so far (0.0 as the first begins), so the numbering is from 0
        self._new_epoch(int(getattr(state, "epoch", 0) or 0))

    def on_step_end(self, args: object, state: object, control: object, **kwargs: object) -> None:
        if self.run is not None:
            self.run.progress(samples=self._samples_per_step(args))

    def on_log(self, args: object, state: object, control: object, logs: dict[str, object] | None = None,
               **kwargs: object) -> None:  # fmt: skip
        self._log(logs)

    def on_evaluate(self, args: object, state: object, control: object, metrics: dict[str, object] | None = None,
                    **kwargs: object) -> None:  # fmt: skip
        self._log(metrics)

    def on_train_end(self, args: object, state: object, control: object, **kwargs: object) -> None:
        self.holder.end("succeeded")

"""Keras callback: `model.fit(..., callbacks=[CarbonwatchCallback(user="alice", batch_size=32)])`.

Keras does not pass the batch size to callbacks; give `batch_size` to count samples (else only steps are
reported through the epoch). carbonwatch imports without keras.
"""

from __future__ import annotations

from typing import Unpack

from carbonwatch.callbacks._common import HeldRun, optional_base, scalar_metrics
from carbonwatch.client.api import Run
from carbonwatch.client.run_options import RunOptions

_Base: type = optional_base(("keras.callbacks", "Callback"))
Logs = dict[str, object] | None


class CarbonwatchCallback(HeldRun, _Base):  # type: ignore[misc]
    def __init__(self, run: Run | None = None, batch_size: int | None = None, **run_kwargs: Unpack[RunOptions]) -> None:
        super().__init__(run, **run_kwargs)
        self.batch_size = batch_size

    def on_train_begin(self, logs: Logs = None) -> None:
        self.holder.begin()
        params = getattr(self, "params", None) or {}  # set by Keras before training
        if self.run is not None and params.get("epochs"):
            self.run.total_epochs = int(params["epochs"])

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
        self._new_epoch(epoch)  # Keras numbers epochs from 0

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        if self.run is not None:
            self.run.progress(samples=self.batch_size or 0, **scalar_metrics(logs))

    def on_test_begin(self, logs: Logs = None) -> None:
        self._phase("eval")

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        self._log(logs)

    def on_train_end(self, logs: Logs = None) -> None:
        self.holder.end("succeeded")

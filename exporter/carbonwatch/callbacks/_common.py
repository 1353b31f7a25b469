"""Shared part of the framework callbacks: own a Run, or report into one the script already has."""

from __future__ import annotations

import importlib
import logging
import numbers
from collections.abc import Mapping
from typing import Unpack

from carbonwatch.client.api import Run
from carbonwatch.client.run_options import RunOptions

log = logging.getLogger("carbonwatch.client")


def optional_base(*candidates: tuple[str, str]) -> type:
    """The first importable (module, attribute) of `candidates`, else `object`: the callbacks subclass the
    framework's base class when it is installed and stay importable when it is not."""
    for module, attr in candidates:
        try:
            base = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(base, type):
            return base
    return object


class RunHolder:
    """With `run=`, reports into that run and leaves ending it to its owner; else creates a Run from
    `run_kwargs` when training starts and finishes it when training ends."""

    def __init__(self, run: Run | None = None, **run_kwargs: Unpack[RunOptions]) -> None:
        self._given = run
        self._kwargs = run_kwargs
        self.run: Run | None = run
        if run is None:
            Run(**run_kwargs)  # validate labels now, where the user builds the callback (ConfigError)

    def begin(self) -> None:
        if self.run is None or (self._given is None and self.run._finished):
            # training started again with the same callback (a second fit): the next segment of its run
            again = self.run is not None and self.run._finished
            options: RunOptions = {**self._kwargs, "resume": True} if again else self._kwargs
            self.run = Run(**options)
        if self._given is None:
            self.run.start()

    def end(self, status: str = "succeeded") -> None:
        if self.run is not None and self._given is None:
            self.run.finish(status)


class HeldRun:
    """What every framework callback shares: the run it reports into (`run=`, or one made from `run_kwargs`
    when training starts), epochs numbered from 0, and logged metrics. A callback class lists it before the
    framework's base class."""

    def __init__(self, run: Run | None = None, **run_kwargs: Unpack[RunOptions]) -> None:
        super().__init__()
        self.holder = RunHolder(run, **run_kwargs)

    @property
    def run(self) -> Run | None:
        return self.holder.run

    def _new_epoch(self, number: int) -> None:
        """Epoch `number` (counted from 0, as the frameworks do) starts, in the training phase."""
        if self.run is not None:
            self.run.epoch(number, first_epoch=0)
            self.run.phase("train")

    def _phase(self, name: str) -> None:
        if self.run is not None:
            self.run.phase(name)

    def _log(self, logs: Mapping[str, object] | None) -> None:
        if self.run is not None:
            self.run.log(**scalar_metrics(logs))


def scalar_metrics(logs: Mapping[str, object] | None) -> dict[str, object]:
    """The numeric entries of a framework's logs (numbers and 0-d tensors), with names kept as they are."""
    out: dict[str, object] = {}
    for k, v in (logs or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, numbers.Number) or (hasattr(v, "numel") and getattr(v, "ndim", 1) == 0):
            out[str(k)] = v
    return out


def batch_size(batch: object) -> int:
    """Samples in a batch: the leading dimension of its first tensor or array, else 0."""
    try:
        while isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        if isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        shape = getattr(batch, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    except Exception:
        pass
    return 0

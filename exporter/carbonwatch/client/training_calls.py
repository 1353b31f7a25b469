"""What training code calls on a run (epoch, progress, log, phase, set_expected_end): cheap updates of the
in-memory state under a lock, never raising into the training loop."""

from __future__ import annotations

import logging
import time

from carbonwatch.client.labels import validate_metric_name
from carbonwatch.client.pusher import ProgressState, RunProgress
from carbonwatch.errors import ConfigError

log = logging.getLogger("carbonwatch.client")


class TrainingCalls:
    """The training-thread API of a Run (the Run sets these attributes)."""

    progress_state: RunProgress
    total_epochs: int | None
    first_epoch: int | None
    _seen_first_epoch: int | None
    _metric_names: set[str]

    def epoch(self, epoch: int, first_epoch: int | None = None) -> None:
        """The epoch starting now, numbered as the script numbers them: from 0 (`for epoch in range(n)`) or
        from 1. Pushed as `carbonwatch_run_epoch` = epochs started, counted from 1, so an 8-epoch run ends at 8
        either way and g/epoch divides by 8. The numbering is `first_epoch` (here or on the Run), else 0 once
        the script has passed 0, else 1; a 0-based run resumed past epoch 0 passes first_epoch=0."""
        try:
            e = int(epoch)
            if e < 0:
                raise ValueError("a negative epoch")
            if first_epoch in (0, 1) and self.first_epoch is None:
                self.first_epoch = first_epoch
            base = self.first_epoch
            if base is None:
                if self._seen_first_epoch is None or e == 0:
                    self._seen_first_epoch = min(e, 1)
                base = self._seen_first_epoch
            count = e - min(base, e) + 1  # epochs started, this one included
            expected = None
            if self.total_epochs and count > 1:
                start = self.progress_state.snapshot().start_time
                expected = start + (time.time() - start) / (count - 1) * self.total_epochs

            def upd(st: ProgressState) -> None:
                st.epoch = count
                if expected is not None:
                    st.expected_end_time = expected

            self.progress_state.update(upd)
        except Exception as exc:
            log.debug("carbonwatch: epoch(%r) ignored: %s", epoch, exc)

    def progress(self, samples: float = 0, **metrics: object) -> None:
        """Add `samples` processed and set training metrics (loss=..., accuracy=...). Tensors are read on the
        push thread, so a GPU tensor does not force a sync here."""
        try:
            n = float(samples) if samples else 0.0
            clean: dict[str, object] = {}
            for name, value in metrics.items():
                if name not in self._metric_names:
                    try:
                        validate_metric_name(name)
                    except ConfigError as exc:
                        log.warning("carbonwatch: metric ignored: %s", exc)
                        continue
                    self._metric_names.add(name)
                clean[name] = value.detach() if hasattr(value, "detach") else value

            def upd(st: ProgressState) -> None:
                st.samples += n
                st.metrics.update(clean)

            self.progress_state.update(upd)
        except Exception as exc:
            log.debug("carbonwatch: progress() ignored: %s", exc)

    def log(self, **metrics: object) -> None:
        """Set training metrics without counting samples."""
        self.progress(0, **metrics)

    def phase(self, name: str) -> None:
        try:
            validate_metric_name(name, "phase")
            self.progress_state.update(lambda st: setattr(st, "phase", name))
        except Exception as exc:
            log.warning("carbonwatch: phase ignored: %s", exc)

    def set_expected_end(self, unix_time: float) -> None:
        try:
            t = float(unix_time)
            self.progress_state.update(lambda st: setattr(st, "expected_end_time", t))
        except Exception as exc:
            log.debug("carbonwatch: set_expected_end ignored: %s", exc)

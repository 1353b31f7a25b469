"""Label values and run ids read from the node (environments, pod labels, SLURM): checked by the one rule of
carbonwatch.labels; what is dropped is counted by (source, label, reason) and logged."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from carbonwatch.labels import is_run_id, label_problem

__all__ = ["LabelCleaner", "label_problem"]

log = logging.getLogger("carbonwatch.node.identity")


class LabelCleaner:
    """Validates label values and run ids read from the node; counts what it drops by (source, label, reason),
    where source is one of environment, pod, slurm (a bounded set), and logs each kind at most every 10 minutes."""

    LOG_EVERY = 600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.rejected: Counter[tuple[str, str, str]] = Counter()  # (source, label, reason) -> values dropped
        self._logged: dict[tuple[str, str, str], float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def _reject(self, source: str, where: str, label: str, reason: str, value: str) -> None:
        key = (source, label, reason)
        now = self._clock()
        with self._lock:
            self.rejected[key] += 1
            last = self._logged.get(key)
            due = last is None or now - last >= self.LOG_EVERY
            if due:
                self._logged[key] = now
        if due:
            shown = value[:40].encode("unicode_escape").decode("ascii")
            log.warning("dropped the %s label of %s: %s (value begins '%s'); %d such so far",
                        label, where, reason, shown, self.rejected[key])

    def label(self, source: str, where: str, label: str, value: str) -> str | None:
        value = value.strip()
        why = label_problem(value)
        if why:
            if why != "empty":
                self._reject(source, where, label, why, value)
            return None
        return value

    def labels(self, source: str, where: str, raw: Mapping[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in raw.items():
            cleaned = self.label(source, where, name, value)
            if cleaned is not None:
                out[name] = cleaned
        return out

    def run_id(self, source: str, where: str, value: str) -> str | None:
        value = value.strip()
        if not value:
            return None
        if not is_run_id(value):
            self._reject(source, where, "run_id", "not_a_run_id", value)
            return None
        return value

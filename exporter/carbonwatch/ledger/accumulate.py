"""Exact, reset-aware accumulation of counter samples into hourly deltas (pure functions, no I/O).

Per series: delta = v - last; a value below the last means the counter started again from 0, so the delta
is v (what it held before stays counted) and a reset is recorded. Each delta goes to the hour of its sample;
when the previous sample is older than the gap limit (max(2 x the scrape interval, 60 s)) the delta is
spread linearly over the gap's hours and marked estimated. A sample at or before the last one already
counted is ignored, so re-reading an overlapping window, out-of-order answers and a second HA replica's
copy count nothing twice. A fall of less than 0.01 % is not a reset but two replicas' scrapes a moment out
of order (each timestamped when its scrape began): that sample is skipped.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

HOUR = 3600
MIN_GAP = 60.0  # seconds: a gap shorter than this is never an estimate
JITTER = 1e-4  # a fall smaller than this fraction is two replicas' scrapes out of order, not a reset


@dataclass(frozen=True, slots=True)
class SeriesState:
    last_value: float
    last_time: float
    first_time: float


@dataclass(frozen=True, slots=True)
class Reset:
    time: float
    value_before: float
    value_after: float


@dataclass
class Accumulated:
    """What one series' new samples add: per hour (start, Unix s) the delta and its estimated part."""

    state: SeriesState | None
    hours: dict[int, list[float]] = field(default_factory=dict)  # hour -> [delta, estimated part]
    resets: list[Reset] = field(default_factory=list)
    new_samples: int = 0

    def add(self, hour: int, delta: float, estimated: float) -> None:
        cell = self.hours.setdefault(hour, [0.0, 0.0])
        cell[0] += delta
        cell[1] += estimated

    @property
    def total(self) -> float:
        return sum(c[0] for c in self.hours.values())


def hour_of(t: float) -> int:
    """The start of the hour holding a sample at `t` (a sample exactly on the hour closes the previous one)."""
    h = int(t // HOUR) * HOUR
    return h - HOUR if h == t else h


def gap_limit(times: Sequence[float]) -> float:
    """max(2 x the median spacing of `times`, 60 s): a longer spacing is a scrape gap."""
    if len(times) < 3 or times[-1] - times[0] <= MIN_GAP:  # no spacing can be over the limit
        return MIN_GAP
    spacing = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
    return max(2.0 * spacing, MIN_GAP)


def spread(t0: float, t1: float, delta: float) -> list[tuple[int, float]]:
    """`delta` over (t0, t1] split linearly among the hours it covers."""
    if t1 <= t0:
        return [(hour_of(t1), delta)]
    out = []
    start = t0
    while start < t1:
        end = min(t1, int(start // HOUR) * HOUR + HOUR)
        out.append((int(start // HOUR) * HOUR, delta * (end - start) / (t1 - t0)))
        start = end
    return out


def clean(samples: Sequence[tuple[float, float]], after: float) -> list[tuple[float, float]]:
    """Samples after `after`, sorted by time, one per timestamp (the first answer wins)."""
    out = []
    last = after
    for s in samples:  # in order, as servers answer: one pass
        if s[0] > last:
            out.append(s)
            last = s[0]
        elif s[0] > after:  # out of order or repeated
            break
    else:
        return out
    seen: dict[float, float] = {}
    for t, v in samples:
        if t > after and t not in seen:
            seen[t] = v
    return sorted(seen.items())


def accumulate(state: SeriesState | None, samples: Sequence[tuple[float, float]], count_first: bool,
               limit: float | None = None, floor: float = MIN_GAP) -> Accumulated:
    """Add `samples` (time, value) of one counter to `state`. `count_first`: a series seen for the first time
    counts its first value (a run counter starts at 0 with the run); otherwise it is only the baseline (a
    node counter's lifetime total predates the ledger). `limit`: the gap limit, else from the samples, at
    least `floor` (2 x the fleet's scrape interval, for windows too short to show a series' own)."""
    new = clean(samples, state.last_time if state else float("-inf"))
    out = Accumulated(state=state, new_samples=len(new))
    if not new:
        return out
    times = ([state.last_time] if state else []) + [t for t, _ in new]
    limit = max(gap_limit(times), floor) if limit is None else limit
    if state is None:
        t, v = new[0]
        if count_first and v > 0:
            out.add(hour_of(t), v, 0.0)
        state = SeriesState(v, t, t)
        new = new[1:]
    for t, v in new:
        delta = v - state.last_value
        if delta < 0 and v >= state.last_value * (1 - JITTER):
            continue  # an HA pair's copy scraped a moment earlier than its timestamp says: nothing to add
        if delta < 0:
            out.resets.append(Reset(t, state.last_value, v))
            delta = v
        if t - state.last_time > limit and delta > 0:
            for hour, part in spread(state.last_time, t, delta):
                out.add(hour, part, part)
        elif delta > 0:
            out.add(hour_of(t), delta, 0.0)
        state = SeriesState(v, t, state.first_time)
    out.state = state
    return out

"""The series' last raw values between windows, held in memory compactly: each series' labels once, and its
three numbers in one array of doubles updated in place. A fleet's 66,000 series then cost no new long-lived
objects per window (new ones would be scattered among the window's short-lived answer objects and keep
their memory pages from ever being given back). The database stays the truth: this is loaded from it and
follows each committed window.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping

from carbonwatch.ledger.accumulate import SeriesState
from carbonwatch.ledger.store import SeriesRow


class SeriesStates(Mapping[str, SeriesRow]):
    """key -> SeriesRow, as `store.load_states` gives it; `get` builds the row it returns."""

    def __init__(self, rows: Mapping[str, SeriesRow] | None = None) -> None:
        self._index: dict[str, int] = {}
        self._labels: list[tuple[str, str, str, str]] = []  # kind, run_id, instance, component
        self._numbers = array("d")  # last_value, last_time, first_time of series i at 3i, 3i+1, 3i+2
        if rows:
            self.update(rows)

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __getitem__(self, key: str) -> SeriesRow:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def get(self, key: str, default: SeriesRow | None = None) -> SeriesRow | None:  # type: ignore[override]
        i = self._index.get(key)
        if i is None:
            return default
        n = self._numbers
        return SeriesRow(*self._labels[i], SeriesState(n[3 * i], n[3 * i + 1], n[3 * i + 2]))

    def update(self, rows: Mapping[str, SeriesRow]) -> None:
        """Take the rows of a committed window: a known series' numbers are overwritten in place."""
        n = self._numbers
        for key, row in rows.items():
            s = row.state
            i = self._index.get(key)
            if i is None:
                self._index[key] = len(self._labels)
                self._labels.append((row.kind, row.run_id, row.instance, row.component))
                n.extend((s.last_value, s.last_time, s.first_time))
            else:
                n[3 * i], n[3 * i + 1], n[3 * i + 2] = s.last_value, s.last_time, s.first_time

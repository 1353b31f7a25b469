"""Accumulation of counter samples into hourly deltas: resets, gaps spread over hours, duplicates from an
HA pair, out-of-order answers, the estimated flags."""

from __future__ import annotations

import pytest

from carbonwatch.ledger.accumulate import SeriesState, accumulate, gap_limit, hour_of, spread

H = 3600
T0 = 1_700_000_000 // H * H  # an hour boundary


def total(acc) -> float:
    return sum(c[0] for c in acc.hours.values())


def estimated(acc) -> float:
    return sum(c[1] for c in acc.hours.values())


def test_plain_deltas_go_to_the_hour_of_their_sample():
    samples = [(T0 + 15 * i, 10.0 * i) for i in range(1, 480)]  # two hours at 15 s, 10 J each
    acc = accumulate(None, samples, count_first=True)
    assert total(acc) == pytest.approx(4790.0)
    assert acc.hours[T0][0] == pytest.approx(2400.0 - 0.0)  # samples in (T0, T0+3600] incl. the one on the hour
    assert acc.hours[T0 + H][0] == pytest.approx(4790.0 - 2400.0)
    assert estimated(acc) == 0.0 and not acc.resets
    assert acc.state == SeriesState(4790.0, T0 + 15 * 479, T0 + 15)


def test_node_counter_first_value_is_only_a_baseline():
    acc = accumulate(None, [(T0 + 15, 1e9), (T0 + 30, 1e9 + 5)], count_first=False)
    assert total(acc) == pytest.approx(5.0)


def test_reset_counts_the_new_value_and_keeps_what_was_held():
    state = SeriesState(1000.0, T0 + 100, T0)
    acc = accumulate(state, [(T0 + 115, 1010.0), (T0 + 130, 4.0), (T0 + 145, 9.0)], count_first=True)
    assert total(acc) == pytest.approx(10.0 + 4.0 + 5.0)
    assert [(r.time, r.value_before, r.value_after) for r in acc.resets] == [(T0 + 130, 1010.0, 4.0)]


def test_gap_is_spread_linearly_over_the_gap_hours_and_flagged():
    state = SeriesState(0.0, T0 + H - 1800, T0)  # last sample 30 min before the hour
    acc = accumulate(state, [(T0 + 2 * H + 1800, 3000.0)], count_first=True)  # 2 h later
    assert acc.hours[T0][0] == pytest.approx(750.0)  # 30 of 120 minutes
    assert acc.hours[T0 + H][0] == pytest.approx(1500.0)
    assert acc.hours[T0 + 2 * H][0] == pytest.approx(750.0)
    assert estimated(acc) == pytest.approx(3000.0)


def test_a_short_gap_is_not_an_estimate():
    state = SeriesState(0.0, T0 + 100, T0)
    acc = accumulate(state, [(T0 + 145, 30.0)], count_first=True)  # 45 s < 60 s
    assert estimated(acc) == 0.0 and total(acc) == 30.0


def test_gap_limit_follows_the_scrape_interval():
    assert gap_limit([0, 60, 120, 180]) == 120.0
    assert gap_limit([0, 15, 30, 45]) == 60.0
    assert gap_limit([0, 10]) == 60.0


def test_ha_duplicates_and_out_of_order_samples_count_once():
    a = [(T0 + 15 * i, 2.0 * i) for i in range(1, 20)]
    b = list(reversed(a)) + a[:5]  # the second replica's copy, out of order
    acc = accumulate(None, a + b, count_first=True)
    assert total(acc) == pytest.approx(38.0)
    again = accumulate(acc.state, a, count_first=True)  # an overlapping window read again
    assert total(again) == 0.0 and again.new_samples == 0


def test_split_windows_give_the_same_buckets_as_one():
    samples = [(T0 + 20 * i, 3.0 * i + (100 if i > 200 else 0)) for i in range(1, 400)]
    samples[250] = (samples[250][0], 1.0)  # a reset inside
    whole = accumulate(None, samples, count_first=True)
    first = accumulate(None, samples[:123], count_first=True)
    second = accumulate(first.state, samples[100:], count_first=True)
    merged: dict[int, float] = {}
    for part in (first, second):
        for h, (d, _) in part.hours.items():
            merged[h] = merged.get(h, 0.0) + d
    assert merged == pytest.approx({h: c[0] for h, c in whole.hours.items()})


def test_hours_and_spread():
    assert hour_of(T0 + 1) == T0 and hour_of(T0 + H) == T0 and hour_of(T0 + H + 0.5) == T0 + H
    parts = spread(T0 + 1800, T0 + 1800 + 2 * H, 12.0)
    assert [h for h, _ in parts] == [T0, T0 + H, T0 + 2 * H]
    assert sum(p for _, p in parts) == pytest.approx(12.0)


def test_a_tiny_fall_between_replicas_is_not_a_reset():
    """Replica b's scrape began 1 ms after a's but was served a moment earlier: counting it as a reset would
    add the whole counter again."""
    state = SeriesState(1_000_000.0, T0 + 100, T0)
    acc = accumulate(state, [(T0 + 100.001, 999_999.5), (T0 + 115, 1_000_030.0)], count_first=True)
    assert total(acc) == pytest.approx(30.0) and not acc.resets
    real = accumulate(state, [(T0 + 115, 900_000.0)], count_first=True)  # 10 % down: started again from 0
    assert total(real) == pytest.approx(900_000.0) and len(real.resets) == 1


def test_a_window_shorter_than_the_scrape_interval_uses_the_fleets_interval():
    """At a 60-s scrape interval a 30-s window holds one sample per series: a 75-s spacing is no gap when
    the fleet scrapes every 60 s (floor 120 s), and is one with the default floor."""
    state = SeriesState(0.0, T0 + 100, T0)
    assert estimated(accumulate(state, [(T0 + 175, 30.0)], count_first=True, floor=120.0)) == 0.0
    assert estimated(accumulate(state, [(T0 + 175, 30.0)], count_first=True)) == pytest.approx(30.0)

"""The in-memory series states the syncer keeps between windows are exactly what the database holds after
each committed window, and a window built from them is the window built from the database."""

from __future__ import annotations

import pytest

from carbonwatch.ledger import db, store
from carbonwatch.ledger.states import SeriesStates
from carbonwatch.ledger.sync import build_batch
from tests.ledger.test_store import T0, H, window


def test_the_cache_follows_the_database_window_after_window(database_url):
    engine = db.connect(database_url)
    states = SeriesStates(store.load_states(engine))
    assert len(states) == 0 and states.get("nope") is None
    cursor = None
    for start, end in ((T0 - 1, T0 + 1200), (T0 + 1200, T0 + 1800), (T0 + 1800, T0 + 2 * H), (T0 + 2 * H, T0 + 4 * H)):
        raw, latest = window(start, end)
        zones, prices = store.load_zones(engine), store.load_prices(engine)
        batch = build_batch(start, end, raw, latest, states, zones, prices)
        twin = build_batch(start, end, raw, latest, store.load_states(engine), zones, prices)
        assert (batch.run_cells, batch.node_cells, batch.series, batch.resets, batch.seen) == \
            (twin.run_cells, twin.node_cells, twin.series, twin.resets, twin.seen)
        store.commit(engine, batch, end, previous=cursor)
        cursor = end
        states.update(batch.series)
        held = store.load_states(engine)
        assert dict(states) == held and len(held) == 6  # 2 nodes x (run energy, run emissions, node energy)
    row = states["run_energy|b:9860"]
    assert (row.state.last_value, row.state.last_time) == (2.0 * (4 * H - 1800), T0 + 4 * H)
    with pytest.raises(KeyError):
        states["run_energy|c:9860"]
    engine.dispose()

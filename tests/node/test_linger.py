"""An ended run's counters stay until a scrape has served their final values, then `process.run_linger`: a
run that ends while Prometheus cannot scrape (a gap longer than the linger) is still seen whole."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from carbonwatch.node.collector import SnapshotCollector
from carbonwatch.node.counters import UNSCRAPED_MAX_SECONDS
from tests.node.test_sampler import FakeRapl, make


def scrape(s) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One scrape through the real collector, wired to the counters as the exporter wires it; the run
    energy it served per run id."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(s.snapshot, dict, 1.0, served=s.counters.note_served))
    out: dict[str, float] = {}
    for fam in registry.collect():
        for sample in fam.samples:
            if sample.name == "carbonwatch_run_energy_joules_total":
                out[sample.labels["run_id"]] = out.get(sample.labels["run_id"], 0.0) + sample.value
    return out


def run_then_end(tmp_path, linger: float):  # type: ignore[no-untyped-def]
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, rapl=rapl, linger=linger)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    for _ in range(3):
        clock.t += 1.0
        proc.run(1.0, {100: 1.0})
        rapl.pkg = [rapl.pkg[0] + 20.0]
        s.sample_once()
    proc.kill(100)
    clock.t += 1.0
    final = s.sample_once().runs[0].energy_joules["cpu"]
    return clock, s, final


def test_an_ended_run_nobody_scraped_outlives_its_linger_until_a_scrape_serves_its_final_value(tmp_path):
    clock, s, final = run_then_end(tmp_path, linger=10.0)
    assert final > 0
    clock.t += 60.0  # a scrape gap six times the linger
    assert [r.run_id for r in s.sample_once().runs] == ["r1"]
    assert scrape(s) == {"r1": final}  # the last part is served after all
    clock.t += 1.0
    assert s.sample_once().runs == []  # served and past its linger: gone at the next sample


def test_a_run_scraped_after_its_end_goes_at_its_linger_as_before(tmp_path):
    clock, s, final = run_then_end(tmp_path, linger=10.0)
    assert scrape(s) == {"r1": final}
    clock.t += 5.0
    assert [r.run_id for r in s.sample_once().runs] == ["r1"]  # within its linger
    clock.t += 6.0
    assert s.sample_once().runs == []


def test_a_scrape_while_the_run_still_lives_does_not_count_as_seeing_its_end(tmp_path):
    rapl = FakeRapl(1)
    proc, clock, s = make(tmp_path, rapl=rapl, linger=10.0)
    proc.spawn(100, run_id="r1")
    s.sample_once()
    clock.t += 1.0
    proc.run(1.0, {100: 1.0})
    rapl.pkg = [20.0]
    s.sample_once()
    scrape(s)  # served while running: not final
    proc.kill(100)
    clock.t += 1.0
    s.sample_once()
    clock.t += 30.0
    assert [r.run_id for r in s.sample_once().runs] == ["r1"]


def test_an_ended_run_no_scraper_ever_reads_is_dropped_after_the_unscraped_limit(tmp_path):
    clock, s, _ = run_then_end(tmp_path, linger=10.0)
    clock.t += 10.0 + UNSCRAPED_MAX_SECONDS - 1.0
    assert [r.run_id for r in s.sample_once().runs] == ["r1"]
    clock.t += 2.0
    assert s.sample_once().runs == []

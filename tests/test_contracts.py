from pathlib import Path

from carbonwatch.contracts import INTENSITY, PUSHED, SPECS, markdown

REPO = Path(__file__).resolve().parent.parent


def test_docs_metrics_md_is_generated_from_the_code():
    assert (REPO / "docs" / "metrics.md").read_text() == markdown(), "run `make docs`"


def test_what_the_run_client_pushes_is_what_the_contract_names():
    from prometheus_client import CollectorRegistry

    from carbonwatch.client.pusher import RunCollector, RunLabels, RunProgress

    progress = RunProgress(RunLabels(run_id="r1"), start_time=1.0)
    progress.update(lambda st: (setattr(st, "end_time", 2.0), setattr(st, "budget_grams", 5.0),
                                setattr(st, "retention_seconds", 30.0), setattr(st, "expected_end_time", 3.0),
                                setattr(st, "epoch", 2), st.metrics.update(loss=0.5)))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RunCollector(progress))
    got = {(m.name, m.type, m.documentation, tuple(m.samples[0].labels)) for m in reg.collect()}
    want = {(s.name, s.type, s.help, s.labels) for s in PUSHED}
    assert got == want


def test_the_intensity_collector_serves_what_the_contract_names():
    from prometheus_client import CollectorRegistry

    from carbonwatch.intensity.collector import IntensityCollector
    from carbonwatch.intensity.feed import IntensityFeed
    from carbonwatch.intensity.providers import TableProvider

    feed = IntensityFeed(["DE"], TableProvider())
    feed.refresh_once()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(IntensityCollector(feed, {"DE": (0.3, "EUR")}))
    got = {(m.name, m.type, m.documentation) for m in reg.collect()}
    assert got == {(s.name, s.type, s.help) for s in INTENSITY}


def test_every_family_follows_the_naming_rules():
    for s in SPECS + PUSHED + INTENSITY:
        assert s.name.startswith("carbonwatch_")
        assert not s.name.endswith("_total")
        assert s.type in ("gauge", "counter")
        if s.name.endswith("_info"):
            assert s.type == "gauge"
        assert "hostname" not in s.labels or s.name == "carbonwatch_node_info"


def test_fast_renderer_writes_exactly_what_prometheus_client_writes():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    from carbonwatch.node.web import render_text

    class C:
        def collect(self):
            g = GaugeMetricFamily("carbonwatch_x_watts", 'help with "quotes" \\ and\nnewline', labels=["b", "a"])
            g.add_metric(["v\\1", 'q"2\n'], 1.5)
            g.add_metric(["ü", ""], float("inf"))
            g.add_metric(["nan", "x"], float("nan"))
            yield g
            c = CounterMetricFamily("carbonwatch_y_joules", "a counter", labels=["component"])
            c.add_metric(["gpu"], 12345678.125)
            c.add_metric(["cpu"], 1e-7)
            yield c
            plain = GaugeMetricFamily("carbonwatch_z", "no labels")
            plain.add_metric([], 3)
            yield plain
            info = InfoMetricFamily("carbonwatch_build", "other types go through the library")
            info.add_metric([], {"version": "1"})
            yield info

        def describe(self):
            return []

    reg = CollectorRegistry(auto_describe=False)
    reg.register(C())
    assert render_text([reg]) == generate_latest(reg)


def test_every_recorded_series_other_parts_read_is_recorded_by_the_rules():
    import re

    import yaml

    from carbonwatch.contracts import RECORDED

    recorded = {r["record"] for f in (REPO / "prometheus" / "rules").glob("*.yml")
                for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "record" in r}
    assert set(RECORDED) <= recorded, sorted(set(RECORDED) - recorded)
    # and the code outside the rules reads no recorded series the contract does not name
    pattern = re.compile(r"\b[a-z_]+:carbonwatch_[a-z_]+:[a-z0-9_]+\b")
    readers = ["stack/report.py", "stack/job.py", "stack/demo.py", "client/api.py", "client/final_figures.py",
               "client/summary.py"]
    used = {m for f in readers for m in pattern.findall((REPO / "exporter" / "carbonwatch" / f).read_text())}
    assert used <= set(RECORDED), sorted(used - set(RECORDED))

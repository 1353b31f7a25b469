from pathlib import Path

from carbonwatch.metrics import SPECS, markdown

REPO = Path(__file__).resolve().parent.parent


def test_docs_metrics_md_is_generated_from_the_code():
    assert (REPO / "docs" / "metrics.md").read_text() == markdown(), "run `make docs`"


def test_every_family_follows_the_naming_rules():
    for s in SPECS:
        assert s.name.startswith("carbonwatch_")
        assert not s.name.endswith("_total")
        assert s.type in ("gauge", "counter")
        if s.name.endswith("_info"):
            assert s.type == "gauge"
        assert "hostname" not in s.labels or s.name == "carbonwatch_node_info"


def test_fast_renderer_writes_exactly_what_prometheus_client_writes():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    from carbonwatch.collector import render_text

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

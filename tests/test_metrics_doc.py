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

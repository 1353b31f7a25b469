"""The end-of-run summary of a node-mode run: where its figures come from, whether they are final, and no
command that would not run as printed."""

from __future__ import annotations

from typing import Any

from carbonwatch.client.summary import NODE_EXPORTER, build_record, format_summary


def node_record(energy: dict[str, float], grams: float | None, **extra: Any) -> dict[str, Any]:
    return build_record(
        labels={"run_id": "r1", "user": "alice"}, status="succeeded", exit_code=0, start_time=1000.0,
        end_time=1010.0, energy_joules=energy, sources=dict.fromkeys(energy, "node exporter"), zone="DE",
        grams_per_kwh=400.0, intensity_source="table", budget_grams=0.002, measurement=NODE_EXPORTER,
        emissions_grams=grams, extra=extra,
    )


def test_final_exporter_figures_give_the_budget_share_from_the_same_figures() -> None:
    text = format_summary(node_record({"cpu": 36.0}, 0.002114, figures="exporter", other_nodes=[],
                                      prometheus="http://127.0.0.1:9090"))
    assert "final: the node exporter's counters for this node at the run's end" in text
    assert "2.11 mg" in text or "0.00211 g" in text
    assert "106 % used (exceeded)" in text  # 0.002114 / 0.002, not a recorded series' older value
    assert "other node" not in text


def test_other_nodes_are_named_as_not_final_yet() -> None:
    text = format_summary(node_record({"cpu": 36.0}, 0.001, figures="exporter", other_nodes=["n2:9860"],
                                      prometheus="http://p:9090"))
    assert "this node's figures only: 1 other node(s) measured the run too" in text
    assert "final after their next scrape" in text


def test_no_energy_yet_with_prometheus_given_asks_for_nothing_already_passed() -> None:
    text = format_summary(node_record({}, None, prometheus="http://127.0.0.1:9090"))
    assert "--prometheus URL" not in text and " URL" not in text
    assert "not yet in Prometheus at http://127.0.0.1:9090" in text
    assert "pass --prometheus" not in text
    text = format_summary(node_record({}, None))
    assert "pass --prometheus (or set CARBONWATCH_PROMETHEUS) to see it here" in text and " URL" not in text


def test_a_fallback_says_when_the_local_meter_took_over() -> None:
    text = format_summary(node_record({"cpu": 5.0}, 0.0005, fallback_time=1004.0))
    assert "the node exporter stopped 4 s into the run" in text and "measured locally from then on" in text


def test_a_resumed_segment_says_so() -> None:
    text = format_summary(node_record({"cpu": 5.0}, 0.0005, segment=2, first_start_time=900.0, figures="exporter"))
    assert "segment       2 (resumed, first started" in text

"""The equivalents match the EPA figures they cite."""

from __future__ import annotations

import pytest

from carbonwatch.equivalents import FACTORS, KM_PER_MILE, equivalents


def test_one_epa_vehicle_mile_is_one_mile_of_car_km() -> None:
    # 3.93e-4 t CO2e per mile (EPA): 393 g is exactly one mile
    assert equivalents(393.0)["car_km"] == pytest.approx(KM_PER_MILE)


def test_one_smartphone_charge_is_12_4_grams() -> None:
    assert equivalents(12.4)["smartphone_charges"] == pytest.approx(1.0)


def test_one_urban_tree_seedling_over_ten_years_is_60_kg() -> None:
    assert equivalents(60000.0)["tree_days"] == pytest.approx(3652.5)


def test_names_are_the_contract_and_every_factor_cites_epa() -> None:
    assert [f.name for f in FACTORS] == ["car_km", "smartphone_charges", "tree_days"]
    for f in FACTORS:
        assert "EPA" in f.citation and f.short and f.grams_per_unit > 0
    assert equivalents(0.0) == {"car_km": 0.0, "smartphone_charges": 0.0, "tree_days": 0.0}

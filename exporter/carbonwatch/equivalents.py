"""Everyday equivalents of an amount of CO2e, with the factors' sources.

Source for every factor: US EPA, Greenhouse Gas Equivalencies Calculator - Calculations and References
(https://www.epa.gov/energy/greenhouse-gases-equivalencies-calculator-calculations-and-references),
the edition based on eGRID2022 data (2024 and later revisions of the page). Editions differ (the
smartphone charge was 8.22e-6 t in the AVERT-based editions, the vehicle mile 3.98e-4 to 4.09e-4 t in
older ones), so the edition is part of the citation. EPA publishes no per-kilometre figure: the km
conversion is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

KM_PER_MILE = 1.609344


@dataclass(frozen=True)
class Factor:
    name: str  # key used in JSON output and recorded series
    unit: str  # what one unit is
    grams_per_unit: float
    citation: str
    short: str = ""  # unit in a one-line summary


FACTORS: tuple[Factor, ...] = (
    Factor(
        "car_km",
        "km driven by an average gasoline passenger vehicle",
        # 4.29 t CO2e per vehicle-year / 10,917 miles per year = 3.93e-4 t CO2e per mile; / 1.609344 km per mile
        393.0 / KM_PER_MILE,
        "US EPA GHG Equivalencies Calculator (eGRID2022 edition): 3.93e-4 t CO2e per mile driven by an "
        "average gasoline passenger vehicle; km conversion ours",
        "car-km",
    ),
    Factor(
        "smartphone_charges",
        "smartphone full charges",
        # energy of one charge x US national delivered-electricity emission rate = 1.24e-5 t CO2
        12.4,
        "US EPA GHG Equivalencies Calculator (eGRID2022 edition): 1.24e-5 t CO2 per smartphone charged",
        "smartphone charges",
    ),
    Factor(
        "tree_days",
        "days of CO2 uptake by one urban tree seedling grown for 10 years",
        # 0.060 t CO2 per urban tree planted, sequestered over its first 10 years / 3652.5 days
        60000.0 / 3652.5,
        "US EPA GHG Equivalencies Calculator (eGRID2022 edition): 0.060 t CO2 per urban tree seedling "
        "grown for 10 years; per-day split ours",
        "tree-days",
    ),
)


SOURCE = "US EPA Greenhouse Gas Equivalencies Calculator, eGRID2022 edition"


def equivalents(grams: float) -> dict[str, float]:
    """`{factor name: amount}` for `grams` of CO2e."""
    return {f.name: grams / f.grams_per_unit for f in FACTORS}

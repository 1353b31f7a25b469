"""End-of-run record and the summary printed from it: energy per component with its source, emissions at
the zone's grid intensity, cost, and everyday equivalents with their cited factors."""

from __future__ import annotations

import logging
from typing import Any

from carbonwatch.equivalents import FACTORS, SOURCE, equivalents

log = logging.getLogger("carbonwatch.client")

WORLD_GRAMS_PER_KWH = 481.0  # world average, Ember 2023 (the contract's default for zone "world")
JOULES_PER_KWH = 3.6e6


def intensity_for(zone: str, intensity_cfg: dict[str, Any] | None) -> tuple[float, str]:
    """(g/kWh, source) for `zone` from the shared intensity providers; the world average if that fails."""
    try:
        from carbonwatch.intensity import provider_from_config

        reading = provider_from_config(intensity_cfg or None).current(zone)
        return float(reading.grams_per_kwh), str(reading.source)
    except Exception as exc:
        log.warning("carbonwatch: no grid intensity for zone %s (%s); using the world average", zone, exc)
        return WORLD_GRAMS_PER_KWH, "fallback:world-ember-2023"


def build_record(
    *,
    labels: dict[str, str],
    status: str,
    exit_code: int | None,
    start_time: float,
    end_time: float,
    energy_joules: dict[str, float],
    sources: dict[str, str],
    zone: str,
    grams_per_kwh: float,
    intensity_source: str,
    price_per_kwh: float | None = None,
    currency: str = "",
    budget_grams: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    total_j = sum(energy_joules.values())
    kwh = total_j / JOULES_PER_KWH
    grams = kwh * grams_per_kwh
    rec: dict[str, Any] = dict(labels)
    rec.update(
        status=status,
        exit_code=exit_code,
        start_time=round(start_time, 3),
        end_time=round(end_time, 3),
        duration_seconds=round(end_time - start_time, 3),
        energy_joules=dict(sorted(energy_joules.items())),
        sources=dict(sorted(sources.items())),
        energy_kwh=kwh,
        zone=zone,
        intensity_grams_per_kwh=grams_per_kwh,
        intensity_source=intensity_source,
        emissions_grams=grams,
        cost=None if price_per_kwh is None else kwh * price_per_kwh,
        currency=currency if price_per_kwh is not None else "",
        budget_grams=budget_grams,
        equivalents=equivalents(grams),
    )
    if extra:
        rec.update(extra)
    return rec


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{seconds:.1f}s")


def _energy(j: float) -> str:
    if j >= 3.6e5:
        return f"{j / JOULES_PER_KWH:.3f} kWh"
    return f"{j:.1f} J ({j / 3600:.3f} Wh)"


def _grams(g: float) -> str:
    return f"{g / 1000:.3f} kg" if g >= 1000 else f"{g:.4g} g"


def format_summary(rec: dict[str, Any]) -> str:
    lines = [
        f"carbonwatch run {rec.get('run_id')}: {rec.get('status')}"
        + (f" (exit code {rec['exit_code']})" if rec.get("exit_code") is not None else ""),
        f"  duration      {_duration(float(rec.get('duration_seconds') or 0.0))}",
    ]
    energy = rec.get("energy_joules") or {}
    sources = rec.get("sources") or {}
    if energy:
        for comp, j in energy.items():
            lines.append(f"  energy {comp:<7}{_energy(float(j))}  [{sources.get(comp, '?')}]")
        lines.append(f"  energy total  {_energy(sum(float(v) for v in energy.values()))}")
    else:
        lines.append("  energy        not measured here (the run ended before the first sample, or a node exporter "
                     "measures it: see Prometheus / Grafana)")
    grams = _grams(float(rec.get("emissions_grams") or 0.0))
    lines.append(
        f"  emissions     {grams} CO2e at {rec.get('intensity_grams_per_kwh'):g} g/kWh "
        f"(zone {rec.get('zone')}, {rec.get('intensity_source')})"
    )
    if rec.get("prometheus_emissions_grams") is not None:
        lines.append(f"  recorded      {_grams(rec['prometheus_emissions_grams'])} CO2e (Prometheus, all nodes)")
    if rec.get("cost") is not None:
        lines.append(f"  cost          {rec['cost']:.4f} {rec.get('currency', '')}".rstrip())
    if rec.get("budget_grams"):
        used = float(rec.get("emissions_grams") or 0.0) / float(rec["budget_grams"])
        lines.append(f"  budget        {rec['budget_grams']:g} g, {used:.1%} used")
    eq = rec.get("equivalents") or {}
    if eq:
        lines.append("  equivalent to " + ", ".join(f"{eq[f.name]:.3g} {f.short}" for f in FACTORS if f.name in eq))
        lines.append(
            "                (" + ", ".join(f"{f.grams_per_unit:.3g} g per {f.short.rstrip('s')}" for f in FACTORS)
            + f"; {SOURCE})"
        )
    return "\n".join(lines)

"""End-of-run record and the summary printed from it: energy per component with its source (or where the
node exporter's figures are), emissions at the zone's grid intensity, cost, budget, where the run's labels
went, and everyday equivalents with their cited factors."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.equivalents import FACTORS, SOURCE, equivalents

log = logging.getLogger("carbonwatch.client")

WORLD_GRAMS_PER_KWH = 481.0  # world average, Ember 2023 (the contract's default for zone "world")

# Who measured the run's energy (the record's `measurement`).
LOCAL_METER = "local meter"  # this process sampled the run's process tree
NODE_EXPORTER = "node exporter"  # a live node exporter attributes the run; no sampler ran here
NOT_MEASURED = "none"  # no exporter and the local meter turned off


def sig(x: float, digits: int = 3) -> str:
    """`x` with `digits` significant digits and no exponent: 0.00244, 47.1, 1,234."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    text = f"{x:.{digits}g}"
    if "e" in text:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
        text = f"{x:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return text


def fmt_grams(g: float) -> str:
    return f"{sig(g / 1000)} kg" if abs(g) >= 1000 else f"{sig(g)} g"


def fmt_percent(ratio: float) -> str:
    return f"{sig(ratio * 100)} %"


def budget_exceeded_message(run_id: str, grams: float, budget_grams: float) -> str:
    """One line with the figures that tell how far over: 'run R exceeded its carbon budget: 0.00244 g CO2e of
    0.001 g (244 %)'. The budget is shown as given (up to 6 significant digits)."""
    return (
        f"run {run_id} exceeded its carbon budget: {fmt_grams(grams)} CO2e of {sig(budget_grams, 6)} g "
        f"({fmt_percent(grams / budget_grams)})"
    )


def intensity_for(zone: str, intensity_cfg: Mapping[str, object] | None) -> tuple[float, str]:
    """(g/kWh, source) for `zone` from the shared intensity providers; the world average if that fails."""
    try:
        from carbonwatch.intensity.providers import provider_from_config

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
    measurement: str = LOCAL_METER,
    emissions_grams: float | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The run's record. Emissions are the energy at `grams_per_kwh`, unless `emissions_grams` is given (the
    figure Prometheus recorded at each interval's intensity). With nothing measured and no figure given,
    energy and emissions are None: unknown, never 0."""
    total_j = sum(energy_joules.values())
    known = bool(energy_joules) or measurement == LOCAL_METER
    kwh = total_j / JOULES_PER_KWH if known else None
    if emissions_grams is None and kwh is not None:
        emissions_grams = kwh * grams_per_kwh
    rec: dict[str, object] = dict(labels)
    rec.update(
        status=status,
        exit_code=exit_code,
        start_time=round(start_time, 3),
        end_time=round(end_time, 3),
        duration_seconds=round(end_time - start_time, 3),
        measurement=measurement,
        energy_joules=dict(sorted(energy_joules.items())),
        sources=dict(sorted(sources.items())),
        energy_kwh=kwh,
        zone=zone,
        intensity_grams_per_kwh=grams_per_kwh,
        intensity_source=intensity_source,
        emissions_grams=emissions_grams,
        cost=None if price_per_kwh is None or kwh is None else kwh * price_per_kwh,
        currency=currency if price_per_kwh is not None and kwh is not None else "",
        budget_grams=budget_grams,
        equivalents=equivalents(emissions_grams) if emissions_grams is not None else {},
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
        return f"{sig(j / JOULES_PER_KWH)} kWh"
    return f"{sig(j)} J ({sig(j / 3600)} Wh)"


def labels_line(rec: dict[str, Any]) -> str | None:
    """One line when the run's labels did not reach a Pushgateway (so Prometheus cannot tell whose run it
    was), else None."""
    gateway = str(rec.get("pushgateway") or "")
    if not gateway:
        if rec.get("labels_via") == "environment":
            return ("  labels        no Pushgateway: the node exporter publishes them from the command's environment "
                    "(no status, progress or budget in Prometheus)")
        return ("  labels        reached no Pushgateway (none configured: --pushgateway or CARBONWATCH_PUSHGATEWAY); "
                "kept in the runs file only")
    if rec.get("pushed") is False:
        why = str(rec.get("push_error") or "no answer")
        if not rec.get("pushes"):
            return (f"  labels        reached no Pushgateway: {gateway} did not answer ({why}); "
                    "kept in the runs file only")
        return f"  labels        pushed, but the final state did not reach {gateway} ({why}); it is in the runs file"
    return None


def command_name() -> str:
    """`carbonwatch` as it runs here (its full path when the one on PATH is not this installation)."""
    from carbonwatch.stack.launcher import command_name as name

    return name()


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def node_note(rec: dict[str, Any]) -> list[str]:
    """Where a node-mode run's figures come from and whether they are final."""
    run_id = rec.get("run_id")
    report = f"`{command_name()} report {run_id}`"
    fell = rec.get("fallback_time")
    if fell is not None:
        start = float(rec.get("start_time") or fell)
        return [f"                (the node exporter stopped {sig(float(fell) - start)} s into the run, at "
                f"{_clock(float(fell))}: measured locally from then on; its part before is as Prometheus recorded it)"]
    if rec.get("figures") == "exporter":
        others = list(rec.get("other_nodes") or [])
        out = ["                (final: the node exporter's counters for this node at the run's end)"]
        if others:
            out.append(f"                (this node's figures only: {len(others)} other node(s) measured the run too; "
                       f"the fleet total in {report} is final after their next scrape)")
        return out
    return [f"                (as recorded in Prometheus by the end of the run; {report} has the final figures "
            "after the next scrape)"]


def energy_lines(rec: dict[str, Any]) -> list[str]:
    energy = rec.get("energy_joules") or {}
    sources = rec.get("sources") or {}
    node = rec.get("measurement") == NODE_EXPORTER
    lines = []
    if energy:
        for comp, j in energy.items():
            lines.append(f"  energy {comp:<7}{_energy(float(j))}  [{sources.get(comp, '?')}]")
        lines.append(f"  energy total  {_energy(sum(float(v) for v in energy.values()))}")
        if node:
            lines += node_note(rec)
    elif node and rec.get("prometheus"):
        lines.append(f"  energy        measured by the node exporter, not yet in Prometheus at {rec['prometheus']}: "
                     f"`{command_name()} report {rec.get('run_id')}` shows it after the next scrape")
    elif node:
        lines.append("  energy        measured by the node exporter, not in this process: pass --prometheus (or set "
                     f"CARBONWATCH_PROMETHEUS) to see it here; `{command_name()} report {rec.get('run_id')}` "
                     "and the Grafana run dashboard show it")
    elif rec.get("measurement") == NOT_MEASURED:
        lines.append("  energy        not measured (no node exporter is running here and the local meter is off)")
    else:
        lines.append("  energy        none measured (the run ended before the first sample)")
    return lines


def format_summary(rec: dict[str, Any]) -> str:
    run_id = rec.get("run_id")
    lines = [
        f"carbonwatch run {run_id}: {rec.get('status')}"
        + (f" (exit code {rec['exit_code']})" if rec.get("exit_code") is not None else ""),
        f"  duration      {_duration(float(rec.get('duration_seconds') or 0.0))}",
    ]
    if int(rec.get("segment") or 1) > 1:
        first = rec.get("first_start_time")
        since = f", first started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(first)))}" if first else ""
        lines.append(f"  segment       {rec['segment']} (resumed{since}; figures of this segment)")
    lines += energy_lines(rec)
    node = rec.get("measurement") == NODE_EXPORTER
    grams = rec.get("emissions_grams")
    if grams is None and rec.get("prometheus"):
        lines.append(f"  emissions     not yet recorded in Prometheus at {rec['prometheus']} (zone {rec.get('zone')})")
    elif grams is None:
        lines.append(f"  emissions     recorded in Prometheus (pass --prometheus or set CARBONWATCH_PROMETHEUS to see "
                     f"them here; zone {rec.get('zone')})")
    elif node:
        how = "this node's exporter" if rec.get("figures") == "exporter" else "Prometheus"
        if rec.get("fallback_time") is not None:
            how = ("Prometheus up to the exporter's stop, the local meter after" if rec.get("prometheus")
                   else "the local meter, after the exporter stopped only")
        lines.append(f"  emissions     {fmt_grams(float(grams))} CO2e ({how}, at each interval's grid intensity)")
    else:
        lines.append(
            f"  emissions     {fmt_grams(float(grams))} CO2e at {rec.get('intensity_grams_per_kwh'):g} g/kWh "
            f"(zone {rec.get('zone')}, {rec.get('intensity_source')})"
        )
    if rec.get("prometheus_emissions_grams") is not None and not node:
        lines.append(f"  recorded      {fmt_grams(float(rec['prometheus_emissions_grams']))} CO2e "
                     "(Prometheus, all nodes, at each interval's grid intensity)")
    if rec.get("cost") is not None:
        lines.append(f"  cost          {rec['cost']:.4f} {rec.get('currency', '')}".rstrip())
    budget = rec.get("budget_grams")
    if budget:
        if grams is None:
            lines.append(f"  budget        {sig(float(budget), 6)} g (use: see Prometheus)")
        else:
            used = float(grams) / float(budget)
            lines.append(f"  budget        {sig(float(budget), 6)} g, {fmt_percent(used)} used"
                         + (" (exceeded)" if used >= 1 else ""))
    line = labels_line(rec)
    if line is not None:
        lines.append(line)
    eq = rec.get("equivalents") or {}
    if eq:
        lines.append("  equivalent to " + ", ".join(f"{sig(eq[f.name])} {f.short}" for f in FACTORS if f.name in eq))
        lines.append(
            "                (" + ", ".join(f"{f.grams_per_unit:.3g} g per {f.short.rstrip('s')}" for f in FACTORS)
            + f"; {SOURCE})"
        )
    return "\n".join(lines)

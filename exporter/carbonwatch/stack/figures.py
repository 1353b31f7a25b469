"""How `carbonwatch report` and `carbonwatch job` write figures: energy in J, Wh or kWh and emissions in mg, g
or kg CO2e with three significant figures (a 14 s job reads `412 J`, `47.3 mg CO2e`, never `0.000 kWh`),
durations, and times. One module, so both commands print the same figure the same way.
"""

from __future__ import annotations

import math
import time

from carbonwatch.contracts import JOULES_PER_KWH

SIGNIFICANT = 3


def significant(value: float, digits: int = SIGNIFICANT) -> str:
    """`value` with `digits` significant figures, in positional notation (0.0000417, 412, 7200000), with a
    thousands separator from 10,000 on."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}" if not math.isfinite(value) else "0"
    exponent = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - exponent)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:,.{decimals}f}" if abs(rounded) >= 10000 else f"{rounded:.{decimals}f}"


def _rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else value


def fmt_energy(joules: float | None) -> str:
    """J below 1 Wh, Wh below 1 kWh, kWh above; three significant figures."""
    if joules is None or math.isnan(joules):
        return "-"
    joules = _rounded(joules)  # 999.96 Wh is 1.00 kWh, not 1000 Wh
    if abs(joules) >= JOULES_PER_KWH:
        return f"{significant(joules / JOULES_PER_KWH)} kWh"
    if abs(joules) >= 3600:
        return f"{significant(joules / 3600)} Wh"
    return f"{significant(joules)} J"


def fmt_grams(grams: float | None, unit: str = " CO2e") -> str:
    """mg below 1 g, g below 1 kg, kg above; three significant figures."""
    if grams is None or math.isnan(grams):
        return "-"
    grams = _rounded(grams)
    if abs(grams) >= 1000:
        return f"{significant(grams / 1000)} kg{unit}"
    if abs(grams) >= 1 or grams == 0:
        return f"{significant(grams)} g{unit}"
    return f"{significant(grams * 1000)} mg{unit}"


def fmt_cost(cost: dict[str, float]) -> str:
    """Amounts per currency: cents exactly from 0.01 on, three significant figures below."""
    parts = []
    for cur, v in sorted(cost.items()):
        amount = f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else significant(v)
        parts.append(f"{amount} {cur}".strip())
    return " + ".join(parts)


def fmt_duration(seconds: float | None) -> str:
    """1h02m05s, 1m05s, 14s."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def fmt_elapsed(seconds: float | None) -> str:
    """sacct's [DD-]HH:MM:SS."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def fmt_time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def fmt_sacct_time(ts: float | None) -> str:
    """sacct's Start/End: 2026-12-04T11:06:54."""
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))

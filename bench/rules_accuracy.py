"""Accuracy of the recorded run totals against the exact Σ ΔE·I of a bursty run, through faults.

A 6-hour run on one node: GPU power changes every second (bursts between ~60 W and ~700 W, as in a
training loop with data-loading stalls, or a periodic evaluation loop), and the zone's live intensity moves
every 5 minutes (between 150 and 450 g/kWh). The exact emissions are Σ over seconds of ΔE × I(t) / 3.6e6;
the exporter integrates exactly that into its durable counters at its 1 s sample interval. Prometheus
scrapes the counters every 15 s, through an exporter restart with its state file (two failed scrapes) at
2 h and a 30-minute Prometheus outage at 4 h. promtool evaluates the real rule file over the scraped
series, once every 15 s and once with every other evaluation missed (30 s). We compare
run_id:carbonwatch_{energy_joules,emissions_grams}:total at the end with the exact values, and show what
the rule-side alternatives would give: pricing each scrape interval's energy at the intensity seen at the
scrape (the earlier design, when no evaluation is missed), and integrating the 15 s power gauge.

    .venv/bin/python -m bench.rules_accuracy [--hours 6] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
STEP = 15


def simulate(hours: float, seed: int, pattern: str) -> dict[str, Any]:
    """Per-second power and intensity, the exporter's counters at every second, and which scrapes
    happened. `random`: a new phase every 20 s (compute, stall or burst); `periodic`: 8 s at 650 W in
    every 30 s (an evaluation loop, which a 15 s gauge samples at the same phases)."""
    rng = random.Random(seed)
    seconds = int(hours * 3600)
    power, intensity = [], []
    level, grid = 300.0, 300.0
    for s in range(seconds):
        if pattern == "periodic":
            level = 650.0 if (s + 3) % 30 < 8 else 100.0
        elif s % 20 == 0:
            level = rng.choice([rng.uniform(250, 400), rng.uniform(60, 120), rng.uniform(550, 700)])
        if s % 300 == 0:
            grid = min(450.0, max(150.0, grid + rng.uniform(-80, 80)))
        power.append(level * rng.uniform(0.95, 1.05))
        intensity.append(grid)
    energy, grams = [0.0], [0.0]  # the exporter's counters after each second
    for p, i in zip(power, intensity, strict=True):
        energy.append(energy[-1] + p)
        grams.append(grams[-1] + p / 3.6e6 * i)
    n = seconds // STEP
    scraped = [True] * (n + 1)
    restart = int(2 * 3600 / STEP)
    scraped[restart] = scraped[restart + 1] = False  # the exporter restarts; its state file keeps the counters
    outage = int(4 * 3600 / STEP)
    for k in range(outage, min(n, outage + 120)):
        scraped[k] = False  # Prometheus is down for 30 minutes
    return {"power": power, "intensity": intensity, "energy": energy, "grams": grams, "n": n, "scraped": scraped}


def promtool_totals(sim: dict[str, Any], evaluation: int) -> tuple[float, float]:
    n = sim["n"]

    def vals(xs: list[float]) -> str:
        return " ".join(repr(x) if ok else "_" for x, ok in zip(xs, sim["scraped"], strict=True))

    node = 'instance="n1:9860",job="carbonwatch"'
    at = [k * STEP for k in range(n + 1)]
    test = {
        "rule_files": [str(ROOT / "prometheus" / "rules" / "carbonwatch.rules.yml")],
        "evaluation_interval": f"{evaluation}s",
        "tests": [{
            "name": "accuracy",
            "interval": f"{STEP}s",
            "input_series": [
                {"series": f'carbonwatch_node_info{{{node},zone="DE",hostname="n1",cpu_model="x",gpus="1",'
                           'cpu_source="rapl",memory_source="rapl"}', "values": vals([1.0] * (n + 1))},
                {"series": f'carbonwatch_run_energy_joules_total{{{node},run_id="b",component="gpu"}}',
                 "values": vals([sim["energy"][t] for t in at])},
                {"series": f'carbonwatch_run_emissions_grams_total{{{node},run_id="b",component="gpu"}}',
                 "values": vals([sim["grams"][t] for t in at])},
            ],
            "promql_expr_test": [
                {"expr": 'run_id:carbonwatch_energy_joules:total{run_id="b"}', "eval_time": f"{n * STEP}s",
                 "exp_samples": [{"labels": '{run_id="b"}', "value": -1}]},
                {"expr": 'run_id:carbonwatch_emissions_grams:total{run_id="b"}', "eval_time": f"{n * STEP}s",
                 "exp_samples": [{"labels": '{run_id="b"}', "value": -1}]},
            ],
        }],
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "accuracy.test.yml"
        path.write_text(yaml.safe_dump(test, width=10**9))
        res = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=900)
    got = [float(v) for v in re.findall(r"got: \{[^}]*\} (\S+)", res.stdout + res.stderr)]
    if len(got) != 2:
        raise SystemExit(f"promtool gave no values:\n{res.stdout}\n{res.stderr}")
    return got[0], got[1]


def run(hours: float, seed: int, pattern: str) -> dict[str, Any]:
    sim = simulate(hours, seed, pattern)
    n, end = sim["n"], sim["n"] * STEP
    e_exact, g_exact = sim["energy"][end], sim["grams"][end]
    out: dict[str, Any] = {"pattern": pattern, "hours": hours, "scrapes": sum(sim["scraped"]),
                           "energy_exact_j": e_exact, "emissions_exact_g": g_exact}
    for name, evaluation in (("every_15s", STEP), ("every_other_missed", 2 * STEP)):
        e, g = promtool_totals(sim, evaluation)
        out[name] = {"energy_j": e, "emissions_g": g, "energy_error": (e - e_exact) / e_exact,
                     "emissions_error": (g - g_exact) / g_exact}
    # Rule-side pricing: each scrape interval's energy at the intensity seen when it was scraped (an outage's
    # energy at the intensity after it).
    priced, last = 0.0, 0
    for k in range(1, n + 1):
        if sim["scraped"][k]:
            t = k * STEP
            priced += (sim["energy"][t] - sim["energy"][last * STEP]) / 3.6e6 * sim["intensity"][t - 1]
            last = k
    gauge_e = sum(sim["power"][k * STEP - 1] * STEP for k in range(1, n + 1) if sim["scraped"][k])
    gauge_g = sum(sim["power"][k * STEP - 1] * STEP / 3.6e6 * sim["intensity"][k * STEP - 1]
                  for k in range(1, n + 1) if sim["scraped"][k])
    out["rule_side_pricing_error"] = (priced - g_exact) / g_exact
    out["gauge_energy_error"] = (gauge_e - e_exact) / e_exact
    out["gauge_emissions_error"] = (gauge_g - g_exact) / g_exact
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=1)
    args, _ = ap.parse_known_args()
    ok = True
    results = []
    for pattern in ("random", "periodic"):
        r = run(args.hours, args.seed, pattern)
        results.append(r)
        print(f"{pattern} run, {r['hours']:g} h, {r['scrapes']} scrapes at {STEP} s (exporter restart with its "
              "state at 2 h, Prometheus down 30 min at 4 h), intensity moving every 5 min")
        print(f"  exact            {r['energy_exact_j'] / 3.6e6:.6f} kWh  {r['emissions_exact_g']:.4f} g")
        for name in ("every_15s", "every_other_missed"):
            x = r[name]
            print(f"  rules {name:18} {x['energy_j'] / 3.6e6:.6f} kWh  {x['emissions_g']:.4f} g   errors "
                  f"{x['energy_error']:+.1e} / {x['emissions_error']:+.1e}")
            ok = ok and abs(x["energy_error"]) < 0.001 and abs(x["emissions_error"]) < 0.001
        print(f"  pricing each scrape interval at the intensity at the scrape instead: emissions "
              f"{r['rule_side_pricing_error']:+.3%}; integrating the 15 s power gauge (which cannot recover the "
              f"outage): energy {r['gauge_energy_error']:+.2%}, emissions {r['gauge_emissions_error']:+.2%}")
    print("rules within 0.1 %:", "yes" if ok else "NO")
    out = ROOT / "bench" / "results" / "rules_accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"within_0_1_percent": ok, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

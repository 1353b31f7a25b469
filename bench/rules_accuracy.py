"""Accuracy of the recording rules on a bursty run whose exact energy is known.

A 6-hour run on one node: GPU power changes every second (bursts between ~60 W and ~700 W, as in a
training loop with data-loading stalls), the exporter's counter is the exact integral, scraped every 15 s,
and the exporter restarts once mid-run (a counter reset). The zone's live intensity changes every 30
minutes (a drop from 420 to 150 g/kWh over the day). promtool evaluates our real rule file over these
series; we compare run_id:carbonwatch_energy_joules:total and run_id:carbonwatch_emissions_grams:total with
the exact values (energy = the integral, emissions = sum of dE x I over scrape intervals), and show what
integrating the 15 s power gauge (sum_over_time(power) x 15 s) would have given.

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

import yaml

ROOT = Path(__file__).resolve().parents[1]
STEP = 15


def simulate(hours: float, seed: int, pattern: str = "random") -> dict[str, list[float]]:
    """`random`: a new phase every 20 s (compute, stall or burst); `periodic`: a 30 s cycle of 8 s at
    650 W and 22 s at 100 W (an evaluation loop), which a 15 s gauge samples at the same phases."""
    rng = random.Random(seed)
    seconds = int(hours * 3600)
    power = []
    level = 300.0
    for s in range(seconds):
        if pattern == "periodic":
            level = 650.0 if (s + 3) % 30 < 8 else 100.0
        elif s % 20 == 0:
            level = rng.choice([rng.uniform(250, 400), rng.uniform(60, 120), rng.uniform(550, 700)])
        power.append(level * rng.uniform(0.95, 1.05))
    n = seconds // STEP
    restart = n // 2
    counter, gauge, intensity = [], [], []
    e = 0.0
    for k in range(n + 1):
        if k > 0:
            e += sum(power[(k - 1) * STEP : k * STEP])
        if k == restart:
            e = sum(power[(k - 1) * STEP : k * STEP]) * 0.4  # restarted 6 s before the scrape
        counter.append(e)
        gauge.append(power[min(k * STEP, seconds - 1)])
        intensity.append(420.0 - 270.0 * ((k * STEP) // 1800) / max(1, (seconds // 1800)))
    return {"counter": counter, "gauge": gauge, "intensity": intensity, "power": power}


def exact(sim: dict[str, list[float]]) -> tuple[float, float]:
    c, i = sim["counter"], sim["intensity"]
    energy = grams = 0.0
    for k in range(1, len(c)):
        d = c[k] - c[k - 1] if c[k] >= c[k - 1] else c[k]
        energy += d
        grams += d / 3.6e6 * i[k]
    return energy, grams


def run(hours: float, seed: int, pattern: str = "random") -> dict[str, float]:
    sim = simulate(hours, seed, pattern)
    n = len(sim["counter"]) - 1
    t_end = f"{n * STEP}s"
    e_exact, g_exact = exact(sim)
    gauge_energy = sum(sim["gauge"][1:]) * STEP
    gauge_grams = sum(p * STEP / 3.6e6 * i for p, i in zip(sim["gauge"][1:], sim["intensity"][1:], strict=True))

    def vals(xs: list[float]) -> str:
        return " ".join(repr(x) for x in xs)

    node = 'instance="n1:9860",job="carbonwatch"'
    test = {
        "rule_files": [str(ROOT / "prometheus" / "rules" / "carbonwatch.rules.yml")],
        "evaluation_interval": f"{STEP}s",
        "group_eval_order": ["carbonwatch-accounting", "carbonwatch-runs", "carbonwatch-nodes", "carbonwatch-periods"],
        "tests": [{
            "name": "accuracy",
            "interval": f"{STEP}s",
            "input_series": [
                {"series": f'carbonwatch_node_info{{{node},zone="DE",hostname="n1",cpu_model="x",gpus="1",'
                           'cpu_source="rapl",memory_source="rapl"}', "values": f"1x{n}"},
                {"series": "carbonwatch_grid_carbon_intensity_grams_per_kwh"
                           f'{{{node},zone="DE",source="electricitymaps"}}',
                 "values": vals(sim["intensity"])},
                {"series": f'carbonwatch_run_energy_joules_total{{{node},run_id="b",component="gpu"}}',
                 "values": vals(sim["counter"])},
                {"series": f'carbonwatch_run_power_watts{{{node},run_id="b",component="gpu"}}',
                 "values": vals(sim["gauge"])},
            ],
            "promql_expr_test": [
                {"expr": 'run_id:carbonwatch_energy_joules:total{run_id="b"}', "eval_time": t_end,
                 "exp_samples": [{"labels": '{run_id="b"}', "value": -1}]},
                {"expr": 'run_id:carbonwatch_emissions_grams:total{run_id="b"}', "eval_time": t_end,
                 "exp_samples": [{"labels": '{run_id="b"}', "value": -1}]},
            ],
        }],
    }
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "accuracy.test.yml"
        path.write_text(yaml.safe_dump(test, width=10**9))
        res = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=600)
    got = [float(v) for v in re.findall(r"got: \{[^}]*\} (\S+)", res.stdout + res.stderr)]
    if len(got) != 2:
        raise SystemExit(f"promtool gave no values:\n{res.stdout}\n{res.stderr}")
    e_rules, g_rules = got
    true_energy = sum(sim["power"][: n * STEP]) - (sum(sim["power"][(n // 2 - 1) * STEP : (n // 2) * STEP]) * 0.6)
    return {
        "hours": hours,
        "scrapes": n,
        "energy_exact_j": e_exact,
        "energy_rules_j": e_rules,
        "energy_error": (e_rules - e_exact) / e_exact,
        "emissions_exact_g": g_exact,
        "emissions_rules_g": g_rules,
        "emissions_error": (g_rules - g_exact) / g_exact,
        "energy_gauge_j": gauge_energy,
        "energy_gauge_error": (gauge_energy - true_energy) / true_energy,
        "emissions_gauge_g": gauge_grams,
        "emissions_gauge_error": (gauge_grams - g_exact) / g_exact,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=1)
    args, _ = ap.parse_known_args()
    ok = True
    results = []
    for pattern in ("random", "periodic"):
        r = run(args.hours, args.seed, pattern)
        results.append({"pattern": pattern, **r})
        print(f"{pattern} bursty run, {r['hours']:g} h, {int(r['scrapes'])} scrapes at {STEP} s, one exporter "
              "restart, intensity 420 -> 150 g/kWh in 30-minute steps")
        print(f"  energy    exact {r['energy_exact_j'] / 3.6e6:.6f} kWh  rules {r['energy_rules_j'] / 3.6e6:.6f}"
              f" kWh  error {r['energy_error']:+.2e}")
        print(f"  emissions exact {r['emissions_exact_g']:.4f} g    rules {r['emissions_rules_g']:.4f} g"
              f"    error {r['emissions_error']:+.2e}")
        print(f"  integrating the 15 s power gauge instead: energy error {r['energy_gauge_error']:+.2%}, "
              f"emissions error {r['emissions_gauge_error']:+.2%}")
        ok = ok and abs(r["energy_error"]) < 0.005 and abs(r["emissions_error"]) < 0.005
    print("rules within 0.5 %:", "yes" if ok else "NO")
    out = ROOT / "bench" / "results" / "rules_accuracy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"within_0_5_percent": ok, "runs": results}, indent=2) + "\n")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

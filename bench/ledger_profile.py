"""Profile of the ledger's sync cycles in-process (cProfile per cycle, RSS after each) against bench.ledger_cost's
fleet scraped by a real Prometheus: where a cycle's time goes at 1,000 nodes x 10,000 runs.

    .venv/bin/python -m bench.ledger_profile [--fleet 1000x10000] [--cycles 3] [--top 25] [--memory]

--memory: instead of cProfile, tracemalloc's peak of Python allocations in each phase of a cycle (the
metadata read, the counters read and accumulated, the commit).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ledger_cost import fleet_prometheus, serve_fleet, stop
from bench.rules_cost import Fleet, query
from carbonwatch.ledger import db, store, sync
from carbonwatch.ledger.source import Source
from carbonwatch.ledger.sync import Syncer
from carbonwatch.promql import Prometheus

PEAKS: dict[str, float] = {}


def traced(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            return fn(*args, **kwargs)
        finally:
            PEAKS[name] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
            tracemalloc.reset_peak()
    return wrapper


def rss_mb() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", default="1000x10000")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args()
    nodes, runs = (int(x) for x in args.fleet.split("x"))
    fleet = Fleet(nodes, runs)
    server = serve_fleet(fleet)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prom, base = fleet_prometheus(tmp, server)
        try:
            while True:
                time.sleep(5)
                try:
                    got = query(base, "count(count_over_time(carbonwatch_run_energy_joules_total[1m]) >= 2)")
                except OSError:
                    continue
                if got and int(float(got[0]["value"][1])) >= runs * 3:
                    break
            engine = db.connect(f"sqlite:///{tmp / 'ledger.db'}")
            db.migrate(engine)
            syncer = Syncer(engine, Source(Prometheus(base, timeout=120)), delay=15.0)
            if args.memory:
                tracemalloc.start()
                syncer.source.latest = traced("metadata", syncer.source.latest)  # type: ignore[method-assign]
                sync.build_batch = traced("counters", sync.build_batch)  # type: ignore[assignment]
                store.commit = traced("commit", store.commit)  # type: ignore[assignment]
            for cycle in range(args.cycles):
                if cycle:
                    time.sleep(max(0.0, 30 - syncer.health.duration))
                prof = cProfile.Profile()
                began = time.monotonic()
                if args.memory:
                    tracemalloc.reset_peak()
                    held = tracemalloc.get_traced_memory()[0] / 2**20
                else:
                    prof.enable()
                ok = syncer.sync()
                prof.disable()
                took = time.monotonic() - began
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"=== cycle {cycle + 1}: ok={ok} {took:.2f} s, RSS {rss_mb():.0f} MB (peak {peak:.0f} MB), "
                      f"states {len(syncer.states)}", flush=True)
                if args.memory:
                    print(f"  Python heap before {held:.1f} MB, after {tracemalloc.get_traced_memory()[0] / 2**20:.1f}"
                          " MB; peak above it: " + ", ".join(f"{k} {v:.1f} MB" for k, v in PEAKS.items()))
                    continue
                pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
        finally:
            stop(prom)
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

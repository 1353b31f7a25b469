"""The ledger under faults, against real Prometheus (blocks made by promtool), VictoriaMetrics, SQLite and
PostgreSQL: each scenario's figures, read from the ledger's HTTP API and /metrics, within 0.1 % of the
exact figures the fleet's description gives (power x time, tests/ledgerfakes.py) per run, user, project,
zone, calendar day and 30 days."""

from __future__ import annotations

import calendar
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests import ledgerfakes as lf
from tests.ledgerharness import Ledger, VictoriaMetrics
from tests.support import Prometheus, eventually

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None, reason="prometheus/promtool not installed")]

TOLERANCE = 1e-3
SCOPES = ("user", "project", "zone")
NOW = time.time()


def rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want) if want else abs(got)


class Check:
    """Compares what a ledger serves with the fleet's exact figures and keeps the largest error."""

    def __init__(self, name: str, ledger: Ledger, fleet: lf.Fleet) -> None:
        self.name, self.ledger, self.fleet = name, ledger, fleet
        self.worst = 0.0
        self.failures: list[str] = []

    def same(self, what: str, got: float, want: float) -> None:
        e = rel(got, want)
        self.worst = max(self.worst, e)
        if e > TOLERANCE:
            self.failures.append(f"{what}: ledger {got:.6g}, exact {want:.6g} ({e:+.3%})")

    def done(self) -> None:
        print(f"\n{self.name}: largest relative error {self.worst:.2e}")
        assert not self.failures, f"{self.name}:\n" + "\n".join(self.failures)

    def runs(self) -> None:
        truth = self.fleet.truth()
        served = self.ledger.metrics()
        window_start = self.ledger.cursor() - 7 * lf.DAY  # --metrics.window's default
        for r in self.fleet.runs:
            one = self.ledger.get(f"/api/v1/runs/{quote(r.run_id, safe='')}")
            j, g = truth[("run", r.run_id)]
            self.same(f"run {r.run_id} energy (API)", float(one["energy_joules"]), j)
            self.same(f"run {r.run_id} emissions (API)", float(one["emissions_grams"]), g)
            got = [v for (n, lab), v in served.items()
                   if n == "carbonwatch_ledger_run_energy_joules" and ("run_id", r.run_id) in lab]
            ended = max(s.end for s in self.fleet.stays if s.run_id == r.run_id)
            want = 1 if ended >= window_start else 0
            assert len(got) == want, f"{self.name}: run {r.run_id} on /metrics {len(got)} times, not {want}"
            if got:
                self.same(f"run {r.run_id} energy (/metrics)", got[0], j)
            nodes = {n["instance"] for n in one["nodes"]}
            assert nodes == set(self.fleet.run_joules(r.run_id, -1e18, 1e18)), f"run {r.run_id} nodes {nodes}"

    def days(self) -> None:
        """Per user, project and zone and calendar day (UTC): /api/v1/usage?period=day."""
        day0 = self.fleet.start // lf.DAY * lf.DAY
        for scope in SCOPES:
            rows = usage(self.ledger, scope, day0, self.fleet.end + 1)
            d = day0
            while d < self.fleet.end:
                truth = self.fleet.truth(d, d + lf.DAY)
                for (kind, value), (j, g) in truth.items():
                    if kind == scope:
                        got = rows.get((value, d), (0.0, 0.0))
                        self.same(f"{scope} {value} day {time.strftime('%F', time.gmtime(d))} energy", got[0], j)
                        self.same(f"{scope} {value} day {time.strftime('%F', time.gmtime(d))} emissions", got[1], g)
                d += lf.DAY

    def rolling(self) -> None:
        """30 days ending at the cursor (all the data is within it) and the calendar day so far, on /metrics."""
        served = self.ledger.metrics()
        cursor = self.ledger.cursor()
        today = cursor // lf.DAY * lf.DAY
        for period, (a, b) in (("30d", (cursor - 30 * lf.DAY, cursor)), ("day", (today, cursor))):
            truth = self.fleet.truth(a, b)
            for scope in SCOPES:
                for (kind, value), (j, g) in truth.items():
                    if kind != scope or j == 0:
                        continue
                    for unit, want in (("energy_joules", j), ("emissions_grams", g)):
                        name = f"carbonwatch_ledger_{scope}_{unit}"
                        got = [v for (n, lab), v in served.items()
                               if n == name and (scope, value) in lab and ("period", period) in lab]
                        assert len(got) == 1, f"{name}{{{scope}={value!r},period={period!r}}}: {len(got)} samples"
                        self.same(f"{name} {value} {period}", got[0], want)

    def all(self) -> None:
        self.runs()
        self.days()
        self.rolling()
        self.done()


def usage(ledger: Ledger, scope: str, a: float, b: float) -> dict[tuple[str, float], tuple[float, float]]:
    """(group value, day start) -> (joules, grams) from /api/v1/usage."""
    body = ledger.get("/api/v1/usage", group_by=scope, period="day", **{"from": iso(a), "to": iso(b)})
    out: dict[tuple[str, float], tuple[float, float]] = {}
    for row in body["rows"]:
        day = float(calendar.timegm(time.strptime(row["period"][:10], "%Y-%m-%d")))
        out[(row[scope], day)] = (float(row["energy_joules"]), float(row["emissions_grams"]))
    return out


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faults() -> lf.Fleet:
    return lf.faults_fleet(NOW)


@pytest.fixture(scope="module")
def prometheus(faults: lf.Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prom")
    prom = Prometheus.serving(tmp, lf.backfill(faults.samples(), tmp))
    yield prom
    prom.stop()


def database(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database: a SQLite file, or one on the throwaway PostgreSQL cluster (tests/ledger/conftest.py)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'ledger.db'}"
    return str(request.getfixturevalue("pg_cluster").new_database())


def stored_cursor(url: str) -> float:
    """The cursor as the database holds it (0 when none was committed yet)."""
    from carbonwatch.ledger import db, store

    engine = db.connect(url)
    try:
        return store.load_cursor(engine) or 0.0
    finally:
        engine.dispose()


def synced(ledger: Ledger, fleet: lf.Fleet) -> None:
    ledger.wait_synced(fleet.end + 1, timeout=180)


# -- scenarios ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_every_fault_at_once_gives_exact_figures(db: str, faults: lf.Fleet, prometheus: Prometheus,
                                                 tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Requeue, a run ending in a 14-minute gap, a node unreachable 90 minutes across midnight, a state file
    lost, a 30-minute Prometheus outage: every run, user, project and zone exact, per day and for 30 days."""
    ledger = Ledger(tmp_path, prometheus.url, database(db, tmp_path, request))
    try:
        synced(ledger, faults)
        check = Check(f"all faults ({db})", ledger, faults)
        check.all()
        served = ledger.metrics()
        resets = {dict(lab)["instance"]: v for (n, lab), v in served.items()
                  if n == "carbonwatch_ledger_counter_resets_total"}
        assert resets.get("d1:9860", 0) > 0 and not any(v for i, v in resets.items() if i != "d1:9860"), resets
        estimated = {dict(lab)["instance"]: v for (n, lab), v in served.items()
                     if n == "carbonwatch_ledger_estimated_joules"}
        assert estimated.get("c1:9860", 0) > 0, estimated
        unreach = ledger.get("/api/v1/runs/unreach")
        stay = next(x for x in faults.stays if x.run_id == "unreach")
        spread = sum(stay.watts.values()) * 90 * lf.MIN  # all of the run's energy in c1's 90-minute gap
        assert abs(unreach["quality"]["estimated_joules"] - spread) <= TOLERANCE * spread, unreach["quality"]
        requeued = ledger.get(f"/api/v1/runs/{quote(lf.REQUEUED, safe='')}")
        assert len(requeued["segments"]) >= 2, requeued["segments"]
    finally:
        ledger.stop()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_killed_during_syncs_loses_and_doubles_nothing(db: str, faults: lf.Fleet, prometheus: Prometheus,
                                                       tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """SIGKILL three times at random moments of a catch-up in 5-minute chunks (288 commits), restarted
    each time; the cursor in the database after each kill shows the catch-up was under way."""
    url = database(db, tmp_path, request)
    ledger = Ledger(tmp_path, prometheus.url, url, ["--sync.chunk", "5m"])
    rng = random.Random(16)
    cursors = []
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 1.2))
            ledger.kill()
            cursors.append(stored_cursor(url))
            if cursors[-1] >= faults.end:
                break
            ledger.start()
        during = [c for c in cursors if faults.start < c < faults.end]
        assert len(during) >= 2, f"the catch-up was not under way at two kills: cursors {cursors}"
        if ledger.proc is not None and ledger.proc.poll() is not None:
            ledger.start()
        synced(ledger, faults)
        Check(f"killed {len(during)}x during a catch-up ({db})", ledger, faults).all()
    finally:
        ledger.stop()


def test_down_two_hours_catches_up(faults: lf.Fleet, prometheus: Prometheus, tmp_path: Path) -> None:
    """The ledger stopped with the last 2 h 30 min of the data not synced (its delay held it back), then
    started again: it catches up in 1-hour chunks and every figure is exact."""
    behind = f"{int(time.time() - (faults.end - 2.5 * lf.HOUR))}s"
    ledger = Ledger(tmp_path, prometheus.url, f"sqlite:///{tmp_path / 'ledger.db'}", ["--sync.delay", behind])
    try:
        held = ledger.wait_synced(faults.end - 2.5 * lf.HOUR - 60, timeout=180)
        assert held < faults.end - 2 * lf.HOUR, "the delay did not hold the ledger back"
        ledger.stop()
        ledger.args = []
        ledger.start()
        synced(ledger, faults)
        Check("down 2 hours", ledger, faults).all()
    finally:
        ledger.stop()


def test_ha_pair_counts_once(faults: lf.Fleet, tmp_path: Path) -> None:
    """Both replicas' series through one query API (label replica="a"/"b", b scraping 7 s later, a missing
    10 minutes of one hour): every figure once."""
    faults.replicas = ("a", "b")
    faults.replica_misses = [("a", faults.start + 14 * lf.HOUR, faults.start + 14 * lf.HOUR + 10 * lf.MIN)]
    try:
        prom = Prometheus.serving(tmp_path, lf.backfill(faults.samples(), tmp_path))
    finally:
        faults.replicas, faults.replica_misses = (), []
    ledger = Ledger(tmp_path, prom.url, f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        synced(ledger, faults)
        Check("HA pair (replica a/b)", ledger, faults).all()
    finally:
        ledger.stop()
        prom.stop()


@pytest.mark.skipif(shutil.which("victoria-metrics") is None, reason="victoria-metrics not installed")
def test_victoriametrics_as_the_input(faults: lf.Fleet, tmp_path: Path) -> None:
    vm = VictoriaMetrics(tmp_path)
    ledger = None
    try:
        lf.vm_import(faults.samples(), vm.url)
        eventually(lambda: requests.get(f"{vm.url}/api/v1/query", timeout=10, params={
            "query": f"count(last_over_time({lf.RUN_J}[1d]))", "time": faults.end}).json()["data"]["result"],
            60, "victoria-metrics has the import")
        ledger = Ledger(tmp_path, vm.url, f"sqlite:///{tmp_path / 'ledger.db'}")
        synced(ledger, faults)
        Check("VictoriaMetrics input", ledger, faults).all()
    finally:
        if ledger:
            ledger.stop()
        vm.stop()

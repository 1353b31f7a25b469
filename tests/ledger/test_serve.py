"""The real `carbonwatch ledger serve` against a real Prometheus holding a requeued run seen through an HA
pair: exact totals on /metrics and the API (filters, paging, CSV, URL-encoded run ids, 404), the export
CLI, a garbage-answering server, and SIGKILL during syncs; on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.ledger.ledger_proc import REPO, start_ledger
from tests.ledger.scenario import G_PER_J, OTHER, OTHER_JOULES, RUN, RUN_JOULES, ZONE_JOULES, History
from tests.support import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    h = History(int(time.time()) // 60 * 60 - 3 * 3600).build()
    prom = h.prometheus(tmp_path_factory.mktemp("prom"))
    yield h, prom
    prom.stop()


def synced(ledger, h: History) -> None:
    eventually(lambda: ledger.synced_until() >= h.start + 7200, 120, "the ledger caught up")


def test_api_and_metrics_give_the_exact_totals(history, database_url, tmp_path):
    h, prom = history
    ledger = start_ledger(tmp_path, prom.url, database_url, "--sync.chunk", "20m", "--sync.interval", "1s")
    try:
        synced(ledger, h)
        r = ledger.run(RUN)
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["energy_joules"] == pytest.approx(RUN_JOULES, rel=1e-9)
        assert run["emissions_grams"] == pytest.approx(RUN_JOULES * G_PER_J, rel=1e-9)
        assert (run["user"], run["project"], run["status"], run["budget_grams"]) == ("ann", "vision", "succeeded", 5)
        assert {(n["instance"], n["component"]) for n in run["nodes"]} == {("a:9860", "gpu"), ("a:9860", "cpu"),
                                                                          ("b:9860", "gpu")}
        assert [s["instance"] for s in run["segments"]] == ["a:9860", "b:9860"]
        a_joules = sum(n["energy_joules"] for n in run["nodes"] if n["zone"] == "DE")
        assert run["cost"] == pytest.approx(a_joules / 3.6e6 * 0.3) and run["currency"] == "EUR"
        assert any("2 nodes" in note for note in run["quality"]["notes"])

        missing = ledger.get("/api/v1/runs/" + "no%2Fsuch%23run")
        assert missing.status_code == 404 and "no/such#run" in missing.json()["error"]

        m = ledger.metrics()
        labels = (("model", "vit"), ("project", "vision"), ("run_id", RUN), ("status", "succeeded"), ("team", "ml"),
                  ("user", "ann"))
        assert m[("carbonwatch_ledger_run_energy_joules", labels)] == pytest.approx(RUN_JOULES, rel=1e-9)
        assert m[("carbonwatch_ledger_run_budget_grams", (("run_id", RUN),))] == 5
        assert m[("carbonwatch_ledger_user_energy_joules", (("period", "30d"), ("user", "ann")))] == \
            pytest.approx(RUN_JOULES, rel=1e-9)
        for zone in ("DE", "FR"):
            assert m[("carbonwatch_ledger_zone_energy_joules", (("period", "30d"), ("zone", zone)))] == \
                pytest.approx(ZONE_JOULES, rel=1e-9)
        assert m[("carbonwatch_ledger_schema_version", ())] == 1
        assert m[("carbonwatch_ledger_sync_errors_total", ())] == 0
        _filters_paging_csv(ledger)
        _export_cli(ledger)
    finally:
        ledger.stop()


def _filters_paging_csv(ledger) -> None:
    assert ledger.get("/api/v1/runs").json()["total"] == 2
    assert [r["run_id"] for r in ledger.get("/api/v1/runs", user="ann").json()["runs"]] == [RUN]
    assert [r["run_id"] for r in ledger.get("/api/v1/runs", zone="FR").json()["runs"]] == [RUN]
    assert [r["run_id"] for r in ledger.get("/api/v1/runs", user="bob", node="a:9860").json()["runs"]] == [OTHER]
    assert ledger.get("/api/v1/runs", project="none").json() == {"runs": [], "total": 0, "next_offset": None}
    page1 = ledger.get("/api/v1/runs", limit=1).json()
    page2 = ledger.get("/api/v1/runs", limit=1, offset=page1["next_offset"]).json()
    assert page1["next_offset"] == 1 and page2["next_offset"] is None
    assert {page1["runs"][0]["run_id"], page2["runs"][0]["run_id"]} == {RUN, OTHER}
    bad = ledger.get("/api/v1/runs", limit="many")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    assert ledger.get("/api/v1/runs", colour="red").status_code == 400
    rows = list(csv.DictReader(io.StringIO(ledger.get("/api/v1/runs", format="csv").text)))
    by_id = {r["run_id"]: r for r in rows}
    assert float(by_id[RUN]["energy_joules"]) == pytest.approx(RUN_JOULES, rel=1e-9)
    assert float(by_id[OTHER]["energy_joules"]) == pytest.approx(OTHER_JOULES, rel=1e-9)
    usage = ledger.get("/api/v1/usage", group_by="zone", period="month").json()["rows"]
    assert sum(r["energy_joules"] for r in usage if r["zone"] == "DE") == pytest.approx(ZONE_JOULES, rel=1e-9)
    assert ledger.get("/api/v1/openapi.json").json()["openapi"].startswith("3.")
    assert ledger.get("/-/ready").status_code == 200 and ledger.get("/-/healthy").status_code == 200


def _export_cli(ledger) -> None:
    out = subprocess.run([sys.executable, "-m", "carbonwatch", "ledger", "export", "--ledger", ledger.url,
                          "--group-by", "user", "--format", "json"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["user"]: r for r in json.loads(out.stdout)["rows"]}
    assert rows["ann"]["energy_joules"] == pytest.approx(RUN_JOULES, rel=1e-9) and rows["ann"]["runs"] == 1
    out = subprocess.run([sys.executable, "-m", "carbonwatch", "ledger", "export", "--ledger", ledger.url,
                          "--group-by", "run", "--from", "2000-01-01"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    rows = {r["run_id"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert float(rows[RUN]["energy_joules"]) == pytest.approx(RUN_JOULES, rel=1e-9)
    assert rows[RUN]["user"] == "ann" and rows[RUN]["currency"] == "EUR"
    bad = subprocess.run([sys.executable, "-m", "carbonwatch", "ledger", "export", "--ledger", ledger.url,
                          "--group-by", "user", "--from", "yesterday"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--from" in bad.stderr


def test_sigkill_during_syncs_loses_and_doubles_nothing(history, database_url, tmp_path):
    h, prom = history
    rng = random.Random(7)
    for _ in range(4):
        ledger = start_ledger(tmp_path, prom.url, database_url, "--sync.chunk", "60s", "--sync.interval", "1s")
        time.sleep(rng.uniform(0.5, 2.5))
        ledger.proc.send_signal(signal.SIGKILL)
        ledger.proc.wait()
    ledger = start_ledger(tmp_path, prom.url, database_url, "--sync.chunk", "60s", "--sync.interval", "1s")
    try:
        synced(ledger, h)
        run = ledger.run(RUN).json()
        assert run["energy_joules"] == pytest.approx(RUN_JOULES, rel=1e-9)
        assert ledger.run(OTHER).json()["energy_joules"] == pytest.approx(OTHER_JOULES, rel=1e-9)
        m = ledger.metrics()
        assert m[("carbonwatch_ledger_zone_energy_joules", (("period", "30d"), ("zone", "FR")))] == \
            pytest.approx(ZONE_JOULES, rel=1e-9)
    finally:
        ledger.stop()


def test_a_garbage_answering_server_is_counted_and_retried(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        port = int(line.split(" port ")[1].split()[0])
        ledger = start_ledger(tmp_path, f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path / 'l.db'}",
                              "--sync.interval", "0.5s")
        try:
            eventually(lambda: ledger.metrics().get(("carbonwatch_ledger_sync_errors_total", ()), 0) >= 2, 30,
                       "sync errors counted")
            assert "without JSON; is it Prometheus?" in ledger.log()
            assert ledger.proc.poll() is None
            assert requests.get(ledger.url + "/-/healthy", timeout=5).status_code == 200
        finally:
            ledger.stop()
    finally:
        server.terminate()
        server.wait()


def test_chunks_shrink_when_the_server_refuses_too_many_samples(tmp_path):
    """Prometheus with --query.max-samples=400 refuses an hour of the scenario at once; the ledger halves
    its chunk until the answers fit, and the totals stay exact."""
    import shutil as _shutil

    from tests.support import free_port, http_ok, stop_process

    h = History(int(time.time()) // 60 * 60 - 3 * 3600).build()
    (tmp_path / "p1").mkdir()
    first = h.prometheus(tmp_path / "p1")  # writes the blocks
    first.stop()
    tsdb = tmp_path / "tsdb"
    _shutil.copytree(tmp_path / "p1" / "data", tsdb)
    (tmp_path / "prometheus.yml").write_text("global: {}\n")
    port = free_port()
    with open(tmp_path / "prometheus.log", "w") as log:
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tsdb}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--query.max-samples=400"], stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), 60, "prometheus ready")
        ledger = start_ledger(tmp_path, f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path / 'l.db'}",
                              "--sync.interval", "1s")
        try:
            synced(ledger, h)
            assert ledger.run(RUN).json()["energy_joules"] == pytest.approx(RUN_JOULES, rel=1e-9)
            assert "refused" in ledger.log() and "too many" in ledger.log()
        finally:
            ledger.stop()
    finally:
        stop_process(prom)

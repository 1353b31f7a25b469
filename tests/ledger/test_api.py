"""The HTTP API over a database filled from known windows, served by node/web.py's server on 127.0.0.1:
filters, paging, CSV, URL-encoded run ids, 404, usage per day and month, export, OpenAPI; on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote

import pytest
import requests

from carbonwatch.ledger import db
from carbonwatch.ledger.api import Api, parse_time
from carbonwatch.ledger.sync import Health
from carbonwatch.node import web
from tests.ledger.test_store import T0, H, sync_window

RUN = "sweep/lr=3e-4&bs=64#2"
RUN_J = 2.0 * 4 * H + 2.0 * 1785 + 2.0 * (4 * H - 1800)  # both nodes, b's counter started again once


@pytest.fixture
def api(database_url):
    engine = db.connect(database_url)
    sync_window(engine, T0 - 1, T0 + 4 * H)
    server = web.serve("127.0.0.1", 0, [], routes=Api(engine, Health(cursor=T0 + 4 * H, ready=True), "t").routes())
    yield server.url
    server.shutdown()
    server.server_close()
    engine.dispose()


def test_one_run_by_its_url_encoded_id(api):
    r = requests.get(f"{api}/api/v1/runs/{quote(RUN, safe='')}", timeout=10)
    assert r.status_code == 200
    run = r.json()
    assert run["run_id"] == RUN and run["energy_joules"] == pytest.approx(RUN_J)
    assert {n["instance"] for n in run["nodes"]} == {"a:9860", "b:9860"}
    assert len(run["quality"]["counter_resets"]) == 1 and run["quality"]["notes"]
    rows = list(csv.DictReader(io.StringIO(requests.get(f"{api}/api/v1/runs/{quote(RUN, safe='')}",
                                                        params={"format": "csv"}, timeout=10).text)))
    assert sum(float(x["energy_joules"]) for x in rows) == pytest.approx(RUN_J)
    missing = requests.get(f"{api}/api/v1/runs/{quote('sweep/lr=3e-4&bs=64#3', safe='')}", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "no run 'sweep/lr=3e-4&bs=64#3' in the ledger"


def test_list_filters_paging_and_csv(api):
    def ids(**params):
        return [r["run_id"] for r in requests.get(f"{api}/api/v1/runs", params=params, timeout=10).json()["runs"]]

    assert ids() == [RUN]
    assert ids(user="ann", zone="FR", node="b:9860", status="running") == [RUN]
    assert ids(user="x") == [] and ids(zone="PL") == [] and ids(status="ended") == []
    assert ids(**{"from": str(T0 + 5 * H)}) == [] and ids(to="2000-01-01") == []
    page = requests.get(f"{api}/api/v1/runs", params={"limit": 0}, timeout=10).json()
    assert page == {"runs": [], "total": 1, "next_offset": 0}
    text = requests.get(f"{api}/api/v1/runs", params={"format": "csv"}, timeout=10).text
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["run_id"] == RUN and float(row["energy_joules"]) == pytest.approx(RUN_J) and row["currency"] == "EUR"
    for bad, names in (({"limit": "-1"}, "limit"), ({"format": "xml"}, "format"), ({"from": "soon"}, "from"),
                       ({"sort": "x"}, "sort")):
        r = requests.get(f"{api}/api/v1/runs", params=bad, timeout=10)
        assert r.status_code == 400 and names in r.json()["error"]


def test_usage_and_export(api):
    day = requests.get(f"{api}/api/v1/usage", params={"group_by": "zone", "period": "day"}, timeout=10).json()
    assert sum(r["energy_joules"] for r in day["rows"]) == pytest.approx(2 * 5.0 * 4 * H)  # two nodes at 5 W
    month = requests.get(f"{api}/api/v1/usage", params={"group_by": "user", "period": "month"}, timeout=10).json()
    assert [(r["user"], r["runs"]) for r in month["rows"]] == [("ann", 1)]
    assert month["rows"][0]["energy_joules"] == pytest.approx(RUN_J)
    part = requests.get(f"{api}/api/v1/export", params={"group_by": "run", "from": str(T0 + H), "to": str(T0 + 2 * H)},
                        timeout=10).json()["rows"]  # fmt: skip
    assert part[0]["energy_joules"] == pytest.approx(2 * 2.0 * H)  # one hour on two nodes
    nodes = requests.get(f"{api}/api/v1/export", params={"group_by": "node", "format": "csv"}, timeout=10).text
    assert nodes.splitlines()[0] == "node,energy_joules,emissions_grams,cost,currency,runs,estimated_joules"
    bad = requests.get(f"{api}/api/v1/usage", params={"group_by": "colour"}, timeout=10)
    assert bad.status_code == 400 and "group_by" in bad.json()["error"]
    doc = requests.get(f"{api}/api/v1/openapi.json", timeout=10).json()
    assert "/api/v1/runs/{run_id}" in doc["paths"] and doc["openapi"] == "3.0.3"


def test_dates():
    assert parse_time("2026-12-01", "from") == 1796083200.0
    assert parse_time("2026-12-01T01:00:00Z", "from") == 1796083200.0 + 3600
    assert parse_time("1796083200", "from") == 1796083200.0
    with pytest.raises(ValueError, match="from: 'Dec 1' is not a date"):
        parse_time("Dec 1", "from")

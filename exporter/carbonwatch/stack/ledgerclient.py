"""Read one run from the ledger (`GET /api/v1/runs/{run_id}`, the run id URL-encoded; docs/ledger.md): exact
figures long after the TSDB forgot the run, with the ledger's data-quality notes (estimated parts, counter
resets). `carbonwatch report --ledger URL` and `carbonwatch job --ledger URL` read it; without the flag, the
ledger named by CARBONWATCH_LEDGER (the environment, else the stack settings file) is used, else Prometheus.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from urllib.parse import quote

import requests

from carbonwatch.errors import ConfigError, NetworkError
from carbonwatch.promql import reason
from carbonwatch.stack.reportdata import ComponentReport, Report, UnknownRunError, derive
from carbonwatch.stack.runseries import Segment

LEDGER_ENV = "CARBONWATCH_LEDGER"
PROMETHEUS_ENV = "CARBONWATCH_PROMETHEUS"


def stack_setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """`name` from the environment, else from the stack settings file of `carbonwatch stack up`."""
    env = os.environ if environ is None else environ
    if env.get(name):
        return env[name]
    from carbonwatch.client.settings import read_stack_file, stack_file_path

    path = stack_file_path(env)
    return (read_stack_file(path, env).get(name) or None) if path is not None else None


def ledger_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The ledger to read: --ledger, else CARBONWATCH_LEDGER (environment, then stack settings); None: read
    Prometheus."""
    return flag or stack_setting(LEDGER_ENV, environ)


def prometheus_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """--prometheus, else CARBONWATCH_PROMETHEUS (environment, then stack settings); None: the default."""
    return flag or stack_setting(PROMETHEUS_ENV, environ)


def fetch_run(url: str, run_id: str, timeout: float = 10.0) -> dict[str, object] | None:
    """The ledger's record of `run_id`; None when the ledger does not know it (404)."""
    base = url if "://" in url else f"http://{url}"
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--ledger: {url!r} is not an http(s) URL")
    target = f"{base.rstrip('/')}/api/v1/runs/{quote(run_id, safe='')}"
    try:
        r = requests.get(target, timeout=timeout, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise NetworkError(f"--ledger: cannot reach the ledger at {base}: {reason(exc)}") from None
    if r.status_code == 404:
        return None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code != 200 or not isinstance(body, dict):
        raise NetworkError(f"--ledger: {base} answered HTTP {r.status_code} without a run record; is it the ledger?")
    return body


def _num(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        return float(value)
    raise NetworkError(f"--ledger: the run record holds {value!r} where a number belongs")


def _maps(value: object) -> list[Mapping[str, object]]:
    """The mappings of a list in the run record (parsed JSON); [] when absent."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _components(data: Mapping[str, object]) -> dict[str, ComponentReport]:
    raw = data.get("components")
    rows = [{**v, "component": k} for k, v in raw.items() if isinstance(v, Mapping)] \
        if isinstance(raw, Mapping) else _maps(raw)
    nodes = _maps(data.get("nodes"))
    out: dict[str, ComponentReport] = {}
    for row in rows:
        sources = sorted({str(n.get("source")) for n in nodes
                          if n.get("component") == row["component"] and n.get("source")})
        out[str(row["component"])] = ComponentReport(_num(row.get("energy_joules")),
                                                     _num(row.get("emissions_grams")), sources)
    return out


def _segments(data: Mapping[str, object]) -> list[Segment]:
    segs = [Segment(int(_num(s.get("number") or s.get("segment") or i) or i), _num(s.get("start")),
                    _num(s.get("end")), str(s.get("instance") or ""))
            for i, s in enumerate(_maps(data.get("segments")), 1)]
    return segs if len(segs) > 1 else []


def quality_notes(data: Mapping[str, object]) -> list[str]:
    """The ledger's data-quality notes, plus how much of the energy is an estimate."""
    q = data.get("quality") or {}
    found = q.get("notes") if isinstance(q, Mapping) else q
    notes = [str(n) for n in found] if isinstance(found, list) else []
    estimated = _num(data.get("estimated"))
    if estimated:
        notes.insert(0, f"{estimated * 100:.3g} % of the energy is estimated (spread over scrape gaps)")
    return notes


def report_from_ledger(url: str, data: Mapping[str, object]) -> Report:
    """A Report from the ledger's run record."""
    given = data.get("labels")
    labels = {**{k: data.get(k) or "" for k in ("user", "project", "model", "team")},
              **(given if isinstance(given, Mapping) else {})}
    rep = Report(run_id=str(data["run_id"]), prometheus=url, generated_at=time.time(),
                 status=str(data.get("status") or "unknown"), source="ledger")
    rep.user, rep.project = str(labels.get("user") or ""), str(labels.get("project") or "")
    rep.model, rep.team = str(labels.get("model") or ""), str(labels.get("team") or "")
    rep.zones = sorted({str(n["zone"]) for n in _maps(data.get("nodes")) if n.get("zone")})
    rep.start_time_seconds, rep.end_time_seconds = _num(data.get("start")), _num(data.get("end"))
    rep.energy_joules, rep.emissions_grams = _num(data.get("energy_joules")), _num(data.get("emissions_grams"))
    rep.components = _components(data)
    cost = _num(data.get("cost"))
    if cost is not None:
        rep.cost = {str(data.get("currency") or ""): cost}
    rep.budget_grams = _num(data.get("budget_grams"))
    rep.epochs, rep.samples = _num(data.get("epochs")), _num(data.get("samples"))
    rep.segments = _segments(data)
    rep.quality = quality_notes(data)
    derive(rep)
    return rep


def collect(url: str, run_id: str, timeout: float = 10.0) -> Report:
    data = fetch_run(url, run_id, timeout)
    if data is None:
        raise UnknownRunError(f"run {run_id!r} is unknown to the ledger at {url}; check the id (`carbonwatch runs`)")
    return report_from_ledger(url, data)

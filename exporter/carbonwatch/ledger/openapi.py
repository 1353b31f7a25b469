"""The OpenAPI 3 document of the ledger's HTTP API, served at /api/v1/openapi.json."""

from __future__ import annotations

from collections.abc import Mapping

from carbonwatch.ledger.queries import GROUPS


def _param(name: str, desc: str, schema: Mapping[str, object] | None = None, where: str = "query") -> dict[str, object]:
    return {"name": name, "in": where, "required": where == "path", "description": desc,
            "schema": schema or {"type": "string"}}


_FMT = _param("format", "json (default) or csv", {"type": "string", "enum": ["json", "csv"]})
_FROM = _param("from", "start: 2026-12-01, RFC 3339 or Unix seconds (whole hours: the hour holding it)")
_TO = _param("to", "end, exclusive, as `from`")
_NUM = {"type": "number"}
_RUN = {"type": "object", "properties": {
    **{k: {"type": "string"} for k in ("run_id", "user", "project", "model", "team", "status", "currency")},
    **{k: _NUM for k in ("start", "end", "energy_joules", "emissions_grams", "cost", "budget_grams", "samples",
                         "epochs")},
    "estimated": {"type": "number", "description": "fraction of the energy spread over scrape gaps"}}}


def _ok(schema: Mapping[str, object], csv: bool = True) -> dict[str, object]:
    content: dict[str, object] = {"application/json": {"schema": schema}}
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    return {"200": {"description": "OK", "content": content},
            "400": {"description": "a bad parameter, named in `error`"}}


def document(version: str) -> dict[str, object]:
    group = _param("group_by", "what rows are grouped by", {"type": "string", "enum": list(GROUPS)})
    filters = [_param(k, f"only runs with this {k}") for k in ("user", "project", "model", "team", "zone",
                                                                "node", "status")]  # fmt: skip
    paging = [_param("limit", "rows per page (<= 10000, default 100)", {"type": "integer"}),
              _param("offset", "rows to skip", {"type": "integer"})]
    return {
        "openapi": "3.0.3",
        "info": {"title": "carbonwatch ledger", "version": version or "unknown",
                 "description": "Every run's energy (J), emissions (g CO2e) and cost, from hourly buckets."},
        "paths": {
            "/api/v1/runs": {"get": {"summary": "runs, newest first", "parameters": filters + [_FROM, _TO] + paging
                                     + [_FMT], "responses": _ok({"type": "object", "properties": {
                                         "runs": {"type": "array", "items": _RUN}, "total": {"type": "integer"},
                                         "next_offset": {"type": "integer", "nullable": True}}})}},
            "/api/v1/runs/{run_id}": {"get": {
                "summary": "one run with nodes, components, segments and quality notes",
                "parameters": [_param("run_id", "the run id, URL-encoded", where="path"), _FMT],
                "responses": _ok(_RUN) | {"404": {"description": "no such run"}}}},
            "/api/v1/usage": {"get": {"summary": "energy, emissions and cost per group and period", "parameters": [
                group, _param("period", "day or month (UTC)", {"type": "string", "enum": ["day", "month"]}), _FROM,
                _TO, _FMT], "responses": _ok({"type": "object"})}},
            "/api/v1/export": {"get": {"summary": "one row per run or per group over [from, to)",
                                       "parameters": [group, _FROM, _TO, _FMT], "responses": _ok({"type": "object"})}},
            "/-/healthy": {"get": {"summary": "the process serves", "responses": {"200": {"description": "OK"}}}},
            "/-/ready": {"get": {"summary": "the database is open and migrated",
                                 "responses": {"200": {"description": "ready"}, "503": {"description": "not yet"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK"}}}},
        },
    }

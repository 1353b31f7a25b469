"""The local runs file: one JSON object per line, one line per finished run (append only)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("carbonwatch.client")

CSV_COLUMNS = (
    "run_id", "user", "model", "project", "team", "host", "status", "exit_code", "start_time", "end_time",
    "duration_seconds", "energy_kwh", "energy_cpu_joules", "energy_gpu_joules", "energy_memory_joules",
    "zone", "intensity_grams_per_kwh", "intensity_source", "emissions_grams", "cost", "currency",
    "budget_grams", "car_km", "smartphone_charges", "tree_days", "samples", "epoch", "mode",
)


def append(path: Path, record: Mapping[str, object]) -> None:
    """Append `record` as one line. A single write on an O_APPEND descriptor, so concurrent runs do not
    interleave their lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, object]]:
    """Every well-formed record; broken lines (a run killed mid-write) are skipped with a warning."""
    out: list[dict[str, object]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("carbonwatch: %s line %d is not JSON; skipped", path, n)
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _section(rec: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = rec.get(key)
    return value if isinstance(value, Mapping) else {}


def number(value: object, default: float = 0.0) -> float:
    """A number of a record (JSON: a number, a numeric string, or null/absent for `default`)."""
    return float(value) if isinstance(value, (int, float, str)) and value != "" else default


def flat(rec: Mapping[str, object]) -> dict[str, object]:
    """One record as a flat row of CSV_COLUMNS."""
    row = {k: rec.get(k, "") for k in CSV_COLUMNS}
    energy = _section(rec, "energy_joules")
    for comp in ("cpu", "gpu", "memory"):
        row[f"energy_{comp}_joules"] = energy.get(comp, "")
    for k, v in _section(rec, "equivalents").items():
        if k in row:
            row[k] = v
    return {k: ("" if v is None else v) for k, v in row.items()}


def to_csv(records: Iterable[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow(flat(rec))
    return buf.getvalue()

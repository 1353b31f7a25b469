"""The exporter's durable counters: one JSON state file under `storage.path`, written atomically.

Counters that can be lost do not belong in an exporter that carries budgets and invoices: the node, device,
run and container energy and emissions counters are written every `storage.interval` (default 2 s; a
`kill -9` loses at most that much of counting, never what was already written) and read back at start,
so a restarted exporter continues each counter where it stopped.

Write: a temporary file in the same directory, flushed and fsync'd, then `os.replace` over the old one and
the directory fsync'd; a crash or power loss at any point leaves either the old or the new file, never half
of one.

Read: a missing file (first start) starts fresh; an unreadable or corrupt one starts fresh too, with one
log line naming the file and why, the bad file kept beside it as `state.json.corrupt` for inspection, and
`carbonwatch_state_restore_status{status="corrupt"|"unreadable"}` so the alert
`CarbonwatchExporterStateLost` fires. It never stops the exporter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carbonwatch.node.stateschema import ContainerRecord, CountersRecord, DeviceRecord, RunRecord, StateRecord

log = logging.getLogger("carbonwatch.node.state")

FORMAT = "carbonwatch-state"
VERSION = 1
FILE_NAME = "state.json"
MAX_BYTES = 64 << 20  # far above any real node (100,000 runs); a larger file is not ours

RESTORED = "restored"
MISSING = "missing"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"


class StateError(ValueError):
    """The state file's content is not a state this exporter wrote."""


@dataclass
class Restore:
    status: str  # restored | missing | corrupt | unreadable
    state: StateRecord | None
    detail: str = ""


class StateStore:
    """Reads and writes `<directory>/state.json`. `write` may be called from the sampler thread while a
    scrape reads `status()`; both are cheap and never block on each other for long."""

    def __init__(self, directory: str | os.PathLike[str], wall: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILE_NAME
        self.wall = wall
        self.restore_status = MISSING
        self.write_failures = 0
        self.last_write: float | None = None
        self._lock = threading.Lock()
        self._logged_failure = False

    # -- read -------------------------------------------------------------------------------------

    def load(self) -> Restore:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            log.info("no state file at %s: counters start from 0 (first start)", self.path)
            return self._done(Restore(MISSING, None))
        except OSError as exc:
            log.error("state file %s is unreadable (%s): counters start again from 0", self.path,
                      exc.strerror or exc)
            return self._done(Restore(UNREADABLE, None, str(exc.strerror or exc)))
        try:
            if len(raw) > MAX_BYTES:
                raise StateError(f"larger than {MAX_BYTES} bytes")
            state = parse(raw)
        except (StateError, ValueError) as exc:
            kept = self.path.with_name(FILE_NAME + ".corrupt")
            try:
                os.replace(self.path, kept)
            except OSError:
                kept = self.path
            log.error("state file %s is corrupt (%s): counters start again from 0; the file is kept as %s",
                      self.path, exc, kept)
            return self._done(Restore(CORRUPT, None, str(exc)))
        log.info("restored %d runs and the node counters from %s (written %.0f s ago)",
                 len(state["runs"]), self.path, max(0.0, self.wall() - float(state["saved_at"])))
        return self._done(Restore(RESTORED, state))

    def _done(self, r: Restore) -> Restore:
        self.restore_status = r.status
        return r

    # -- write ------------------------------------------------------------------------------------

    def write(self, state: CountersRecord) -> bool:
        """Atomically replace the state file. False (logged once per failure streak, counted) on error."""
        saved_at = self.wall()
        body = {**state, "format": FORMAT, "version": VERSION, "saved_at": saved_at}
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        with self._lock:
            tmp = None
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.dir)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                tmp = None
                fsync_dir(self.dir)  # the rename itself survives a power loss
            except OSError as exc:
                self.write_failures += 1
                if not self._logged_failure:
                    log.error("cannot write state file %s (%s): counters keep counting in memory but a restart "
                              "now would lose them", self.path, exc.strerror or exc)
                    self._logged_failure = True
                return False
            finally:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
            if self._logged_failure:
                log.info("state file %s written again", self.path)
            self._logged_failure = False
            self.last_write = saved_at
            return True

    def status(self) -> tuple[str, int, float | None]:
        return self.restore_status, self.write_failures, self.last_write


# -- validation -------------------------------------------------------------------------------------


def _number(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise StateError(f"{what}: {v!r} is not a finite number >= 0")
    return float(v)


def _counters(v: object, what: str) -> dict[str, float]:
    if not isinstance(v, dict):
        raise StateError(f"{what}: expected an object")
    return {str(k): _number(x, f"{what}.{k}") for k, x in v.items()}


def _strings(v: object, what: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise StateError(f"{what}: expected an object of strings")
    return dict(v)


def parse(raw: bytes) -> StateRecord:
    """Validate a state file's bytes; raise StateError naming the first thing wrong."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise StateError(f"version {data.get('version')!r}, this exporter reads version {VERSION}")
    devices = data.get("devices", [])
    if not isinstance(devices, list):
        raise StateError("devices: expected a list")
    out_devices: list[DeviceRecord] = []
    for i, d in enumerate(devices):
        if not (isinstance(d, list) and len(d) == 4 and all(isinstance(x, str) for x in d[:3])):
            raise StateError(f"devices[{i}]: expected [component, key, source, joules]")
        out_devices.append((d[0], d[1], d[2], _number(d[3], f"devices[{i}]")))
    runs = data.get("runs", {})
    if not isinstance(runs, dict):
        raise StateError("runs: expected an object")
    containers = data.get("containers", [])
    if not isinstance(containers, list):
        raise StateError("containers: expected a list")
    return {
        "saved_at": _number(data.get("saved_at"), "saved_at"),
        "devices": out_devices,
        "node_energy_joules": _counters(data.get("node_energy_joules", {}), "node_energy_joules"),
        "node_emissions_grams": _counters(data.get("node_emissions_grams", {}), "node_emissions_grams"),
        "unattributed_energy_joules": _counters(data.get("unattributed_energy_joules", {}),
                                                "unattributed_energy_joules"),
        "runs": {str(rid): _run(r, f"runs[{rid!r}]") for rid, r in runs.items()},
        "containers": [_container(c, f"containers[{i}]") for i, c in enumerate(containers)],
    }


def _run(r: object, what: str) -> RunRecord:
    if not isinstance(r, dict):
        raise StateError(f"{what}: expected an object")
    return {
        "energy_joules": _counters(r.get("energy_joules", {}), f"{what}.energy_joules"),
        "emissions_grams": _counters(r.get("emissions_grams", {}), f"{what}.emissions_grams"),
        "sources": _strings(r.get("sources", {}), f"{what}.sources"),
        "origin": str(r.get("origin", "")),
        "labels": _strings(r.get("labels", {}), f"{what}.labels"),
        "last_seen_wall": _number(r.get("last_seen_wall", 0.0), f"{what}.last_seen_wall"),
    }


def _container(c: object, what: str) -> ContainerRecord:
    if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("namespace", "pod", "container")):
        raise StateError(f"{what}: expected namespace, pod and container")
    return {
        "namespace": c["namespace"], "pod": c["pod"], "container": c["container"],
        "energy_joules": _counters(c.get("energy_joules", {}), f"{what}.energy_joules"),
        "emissions_grams": _counters(c.get("emissions_grams", {}), f"{what}.emissions_grams"),
        "last_seen_wall": _number(c.get("last_seen_wall", 0.0), f"{what}.last_seen_wall"),
    }


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry is written with the directory)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

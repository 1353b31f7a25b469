"""Local registration of a run's root process, for the in-code run API.

`/proc/PID/environ` is the environment at exec time, so a training script that calls
`carbonwatch.run(...)` cannot put CARBONWATCH_RUN_ID into its own process's record. Instead it drops a
small JSON file into a spool directory; the exporter reads it each sample and counts the registered pid
and all its descendants in the run.

Validation (the spool directory may be shared by several users):
- file names `<anything>.json`, at most 4 KiB, keys `run_id`, `pid`, optional `start_time`;
- `run_id` must be a safe label value; `pid` a positive integer;
- the file's owner must be root or the owner of the process (nobody can claim another user's process);
- `start_time` (seconds since boot, as in /proc/PID/stat) guards against pid reuse;
- at most `max_registrations` files are read; files of dead processes are removed when possible.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from carbonwatch.errors import ConfigError
from carbonwatch.labels import RUN_ID_RE, validate_run_id
from carbonwatch.node.config import DEFAULT_SPOOL_DIR
from carbonwatch.node.sources.procs import Stat, parse_stat

__all__ = ["RUN_ID_RE", "Registration", "RegistrationReader", "register", "unregister", "validate_run_id"]

MAX_FILE_BYTES = 4096
HEARTBEAT = "exporter.alive"  # touched by the node exporter every few seconds while it measures this node


def spool_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("CARBONWATCH_SPOOL_DIR") or DEFAULT_SPOOL_DIR)


def process_start_time(pid: int, proc_root: str = "/proc") -> float | None:
    stat = _process_stat(pid, proc_root)
    return stat[4] if stat is not None else None


def _process_stat(pid: int, proc_root: str) -> Stat | None:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            return parse_stat(pid, f.read())
    except (OSError, ValueError, IndexError):
        return None


def register(run_id: str, pid: int | None = None, spool: str | None = None) -> Path:
    """Register `pid` (default: this process) as the root of run `run_id`. Returns the file to unregister."""
    validate_run_id(run_id)
    pid = os.getpid() if pid is None else pid
    d = spool_dir(spool)
    d.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(d, 0o1777)  # shared by users, like /tmp: sticky, so only owners remove their files
    except PermissionError:
        pass
    stat = _process_stat(pid, "/proc")
    body = {"run_id": run_id, "pid": pid, "start_time": stat[4] if stat else None,
            "cpu_seconds": stat[2] if stat else None}
    fd, tmp = tempfile.mkstemp(prefix=".reg-", dir=d)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.chmod(tmp, 0o644)
    final = d / f"{run_id}.{pid}.json"
    os.replace(tmp, final)
    return final


def unregister(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def end(path: Path, pid: int | None = None) -> None:
    """The run ends now for the registered process: record its CPU time in the registration, so the exporter
    counts the run up to this point exactly (also when the process exits before its next sample) and the
    process's later CPU time no longer goes to the run. The exporter removes the file once it has counted it
    (or, without the right to, ignores it once the process is gone); a file nobody removes is harmless."""
    pid = os.getpid() if pid is None else pid
    stat = _process_stat(pid, "/proc")
    if stat is None:
        unregister(path)
        return
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read(MAX_FILE_BYTES))
    except (OSError, ValueError):
        return
    body["end_cpu_seconds"] = stat.cpu_seconds + stat.children_cpu_seconds
    fd, tmp = tempfile.mkstemp(prefix=".reg-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Registration:
    run_id: str
    pid: int
    start_time: float | None
    cpu_seconds: float | None = None  # the process's CPU time when it registered: the run counts from there
    # its CPU time (own + waited-for children) when the run ended: the run counts up to there, then it leaves
    end_cpu_seconds: float | None = None


class RegistrationReader:
    """Reads and validates the spool directory (the exporter side)."""

    ended_grace = 60.0  # seconds an ended registration of an exited process is offered to the sampler

    def __init__(self, spool: str, proc_root: str = "/proc", max_registrations: int = 1024) -> None:
        self.dir = spool
        self.proc_root = proc_root
        self.max = max_registrations
        self.rejected: dict[str, str] = {}  # file name -> why (last read), for logs and tests

    def read(self) -> list[Registration]:
        out: list[Registration] = []
        self.rejected = {}
        try:
            entries = os.scandir(self.dir)
        except OSError:
            return out  # no spool directory: nothing registered
        with entries:
            for n, entry in enumerate(entries):
                if n >= self.max * 2 or len(out) >= self.max:
                    break
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                reg, why = self._read_one(entry)
                if reg is not None:
                    out.append(reg)
                elif why:
                    self.rejected[entry.name] = why
        return out

    def _read_one(self, entry: os.DirEntry[str]) -> tuple[Registration | None, str]:
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False):
                return None, "not a regular file"
            if st.st_size > MAX_FILE_BYTES:
                return None, f"larger than {MAX_FILE_BYTES} bytes"
            with open(entry.path, "rb") as f:
                data = json.loads(f.read(MAX_FILE_BYTES))
        except (OSError, ValueError) as exc:
            return None, f"unreadable: {exc}"
        if not isinstance(data, dict):
            return None, "not a JSON object"
        run_id, pid, start = data.get("run_id"), data.get("pid"), data.get("start_time")
        cpu, end_cpu = data.get("cpu_seconds"), data.get("end_cpu_seconds")
        try:
            validate_run_id(run_id)
        except ConfigError as exc:
            return None, str(exc)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None, f"pid: {pid!r} is not a positive integer"
        if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float))):
            return None, f"start_time: {start!r} is not a number"
        for key, v in (("cpu_seconds", cpu), ("end_cpu_seconds", end_cpu)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                return None, f"{key}: {v!r} is not a number >= 0"
        try:
            proc_uid = os.stat(f"{self.proc_root}/{pid}").st_uid
        except OSError:
            if end_cpu is not None and start is not None and time.time() - st.st_mtime < self.ended_grace:
                # ended and exited since: its last CPU time is still to count, once, by the sampler
                assert isinstance(run_id, str)
                return Registration(run_id, pid, float(start), _num(cpu), float(end_cpu)), ""
            self._remove_stale(entry.path)
            return None, ""  # process gone: the run ended
        if st.st_uid not in (0, proc_uid):
            return None, f"owned by uid {st.st_uid}, but pid {pid} belongs to uid {proc_uid}"
        actual = process_start_time(pid, self.proc_root)
        if start is not None and actual is not None and abs(actual - float(start)) > 0.05:
            self._remove_stale(entry.path)
            return None, ""  # pid reused by another process
        assert isinstance(run_id, str)
        return Registration(run_id, pid, actual, _num(cpu), _num(end_cpu)), ""

    def consumed(self, reg: Registration) -> None:
        """The sampler counted an ended registration: remove its file (where we may)."""
        self._remove_stale(os.path.join(self.dir, f"{reg.run_id}.{reg.pid}.json"))

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

"""Processes and system CPU time from /proc (root injectable, like client_python's ProcessCollector).

One small read per process per sample (/proc/PID/stat gives ppid, comm, CPU time, start time and RSS);
the environment (CARBONWATCH_RUN_ID and the other CARBONWATCH_* and SLURM_* variables) and the cgroup
(/proc/PID/cgroup: which pod, container or SLURM job) are read once per process lifetime and cached, keyed
by (pid, start time): /proc/PID/environ is fixed at exec time, and a container's or job's processes stay in
its cgroup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

from carbonwatch.labels import RUN_ID_RE
from carbonwatch.node.model import CpuTimes, ProcessReading, SourceError

RUN_ENV = b"CARBONWATCH_RUN_ID="
ENV_PREFIXES = (b"CARBONWATCH_", b"SLURM_")  # the variables kept in ProcessReading.environ
MAX_ENV_VARS = 256  # per process: an environment with more of them keeps the first
MAX_ENV_VALUE = 1024  # characters kept of one value (label validation rejects anything near that long)
MAX_CGROUP_BYTES = 16384
_TICKS = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read(path: str, limit: int = 65536) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


class Stat(NamedTuple):
    ppid: int
    comm: str
    cpu_seconds: float  # utime + stime
    rss_bytes: int
    start_time: float  # seconds since boot
    children_cpu_seconds: float  # cutime + cstime: CPU time of the children it has waited for


def parse_stat(pid: int, raw: bytes) -> Stat:
    """What we use of /proc/PID/stat."""
    lpar = raw.index(b"(")
    rpar = raw.rindex(b")")  # comm may itself contain ')' and spaces
    comm = raw[lpar + 1 : rpar].decode("utf-8", "replace")
    rest = raw[rpar + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]
    ppid = int(rest[1])
    cpu = (int(rest[11]) + int(rest[12])) / _TICKS  # utime (14) + stime (15)
    children = (int(rest[13]) + int(rest[14])) / _TICKS  # cutime (16) + cstime (17)
    start = int(rest[19]) / _TICKS  # starttime (22)
    rss = int(rest[21]) * _PAGE  # rss (24), pages
    return Stat(ppid, comm, cpu, rss, start, children)


def run_id_from_environ(raw: bytes) -> str | None:
    """CARBONWATCH_RUN_ID from a NUL-separated environment block, or None (absent or not a safe label)."""
    for entry in raw.split(b"\0"):
        if entry.startswith(RUN_ENV):
            value = entry[len(RUN_ENV) :].decode("utf-8", "replace")
            return value if RUN_ID_RE.match(value) else None  # the rule the run client enforces
    return None


def selected_environ(raw: bytes) -> tuple[tuple[str, str], ...]:
    """The CARBONWATCH_* and SLURM_* variables of a NUL-separated environment block, in order. Invalid UTF-8
    becomes U+FFFD (label validation rejects such values, naming the reason); values are cut at
    MAX_ENV_VALUE characters, and at most MAX_ENV_VARS variables are kept."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in raw.split(b"\0"):
        if not entry.startswith(ENV_PREFIXES):
            continue
        name_b, sep, value_b = entry.partition(b"=")
        if not sep:
            continue
        name = name_b.decode("ascii", "replace")
        if name in seen:  # the first wins, as getenv(3) finds it
            continue
        seen.add(name)
        out.append((name, value_b[: MAX_ENV_VALUE * 4].decode("utf-8", "replace")[:MAX_ENV_VALUE]))
        if len(out) >= MAX_ENV_VARS:
            break
    return tuple(out)


class ProcScanner:
    """Scans every process under `proc_root` on each call to `read()`."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        # (pid, start) -> (run id, selected environment, cgroup): read once per process
        self._env_cache: dict[tuple[int, float], tuple[str | None, tuple[tuple[str, str], ...], str]] = {}
        self._denied: set[tuple[int, float]] = set()
        self.environ_denied = 0  # live processes whose environment could not be read (last scan)

    def cpu_times(self) -> CpuTimes:
        try:
            raw = _read(os.path.join(self.proc_root, "stat"), 1 << 20)
        except OSError as exc:
            raise SourceError(f"cannot read {self.proc_root}/stat: {exc.strerror}") from None
        ncpu = 0
        total = busy = 0.0
        for line in raw.split(b"\n"):
            if line.startswith(b"cpu "):
                vals = [int(v) for v in line.split()[1:]]
                # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
                vals = vals[:8]
                total = sum(vals) / _TICKS
                idle = (vals[3] + (vals[4] if len(vals) > 4 else 0)) / _TICKS
                busy = total - idle
            elif line.startswith(b"cpu"):
                ncpu += 1
        if total <= 0:
            raise SourceError(f"{self.proc_root}/stat has no aggregate cpu line")
        return CpuTimes(total=total, busy=busy, ncpu=max(ncpu, 1))

    def list_pids(self) -> set[int]:
        """Every pid under proc_root (its numeric entries), without reading any process."""
        try:
            return {int(n) for n in os.listdir(self.proc_root) if n.isdigit()}
        except OSError as exc:
            raise SourceError(f"cannot list {self.proc_root}: {exc.strerror}") from None

    def children(self, pids: Iterable[int]) -> set[int]:
        """Direct children of `pids` (their main thread's /proc/PID/task/PID/children): how new
        processes of a run (DataLoader workers, ranks) are found between full scans."""
        out: set[int] = set()
        for pid in pids:
            try:
                raw = _read(f"{self.proc_root}/{pid}/task/{pid}/children")
            except OSError:
                continue
            out.update(int(c) for c in raw.split())
        return out

    def read(self, pids: Iterable[int] | None = None) -> list[ProcessReading]:
        """Every process (`pids` None: a full scan), or only `pids` (the fast path between full scans)."""
        out: list[ProcessReading] = []
        seen: set[tuple[int, float]] = set()
        full = pids is None
        if pids is None:
            try:
                entries = os.listdir(self.proc_root)
            except OSError as exc:
                raise SourceError(f"cannot list {self.proc_root}: {exc.strerror}") from None
        else:
            entries = [str(p) for p in pids]
        base = self.proc_root
        for name in entries:
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                ppid, comm, cpu, rss, start, children = parse_stat(pid, _read(f"{base}/{name}/stat", 4096))
            except (OSError, ValueError, IndexError):
                continue  # vanished mid-read, or a kernel oddity: skip this process this time
            key = (pid, start)
            seen.add(key)
            cached = self._env_cache.get(key)
            if cached is None:
                try:
                    raw_env = _read(f"{base}/{name}/environ", 1 << 20)
                    run_id, environ = run_id_from_environ(raw_env), selected_environ(raw_env)
                except PermissionError:
                    # without root / same uid / CAP_SYS_PTRACE; run membership then comes from the parent, a
                    # registration, the cgroup (pod, SLURM job) or the kubelet
                    run_id, environ = None, ()
                    self._denied.add(key)
                except OSError:
                    continue
                try:  # world-readable; what is unreadable here is a process that just ended
                    cgroup = _read(f"{base}/{name}/cgroup", MAX_CGROUP_BYTES).decode("utf-8", "replace")
                except OSError:
                    cgroup = ""
                cached = self._env_cache[key] = (run_id, environ, cgroup)
            run_id, environ, cgroup = cached
            out.append(ProcessReading(pid, ppid, comm, cpu, rss, start, run_id, environ, cgroup, children))
        if full and len(self._env_cache) > len(seen):
            self._env_cache = {k: v for k, v in self._env_cache.items() if k in seen}
            self._denied &= seen
        self.environ_denied = len(self._denied)
        return out

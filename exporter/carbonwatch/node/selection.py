"""Which processes a sample reads. Every process at a full scan (every `process.scan_interval`); in between,
the processes of runs, the top N outside runs (ranked by CPU rate at the last full scan), GPU processes,
children of run processes, registered processes and every process that is new since the previous sample. The
processes not read between full scans fold into pid="other" by their RSS at the last full scan."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable

from carbonwatch.node.meters import ProcKey
from carbonwatch.node.model import GpuReading, ProcessReading
from carbonwatch.node.registration import Registration
from carbonwatch.node.sources.procs import ProcScanner


def list_pids(proc_root: str) -> set[int]:
    """The pids under `proc_root`: one directory listing, cheap enough for every sample."""
    try:
        return {int(n) for n in os.listdir(proc_root) if n.isdigit()}
    except OSError:
        return set()


class ProcessSelection:
    """The selection's state between samples; the sampler asks it which pids to read and tells it what it
    read."""

    def __init__(self, scanner: ProcScanner | None, scan_interval: float, top_n: int,
                 static_pids: Iterable[int] = ()) -> None:  # fmt: skip
        self.scanner = scanner
        self.scan_interval = scan_interval
        self.top_n = top_n
        self.static_pids = set(static_pids)  # registered roots that are always read (the local meter's)
        self.last_full: float | None = None  # monotonic time of the last full /proc scan
        self.full_cpu: dict[ProcKey, float] = {}  # CPU seconds of every process at the last full scan
        self.top: set[ProcKey] = set()  # processes outside runs shown individually (top N at the last full scan)
        self.folded_rss = 0.0  # RSS of the processes not read between full scans
        self.listed: set[int] = set()  # pids listed at the previous sample: any other pid is new

    def is_full(self, t: float) -> bool:
        return self.last_full is None or t - self.last_full >= self.scan_interval

    def tracked(self, in_runs: Collection[ProcKey], known: Iterable[ProcKey]) -> set[int]:
        """Processes read between full scans: those of runs, the top N, and registered roots."""
        return {k[0] for k in known if k in in_runs or k in self.top} | self.static_pids

    def between_scans(self, in_runs: Collection[ProcKey], known: Iterable[ProcKey], gpus: list[GpuReading],
                      regs: list[Registration]) -> tuple[set[int], set[int]]:  # fmt: skip
        """(the pids to read, the pids listed now)."""
        listed = list_pids(self.scanner.proc_root) if self.scanner is not None else set()
        pids = self.tracked(in_runs, known) | {p.pid for g in gpus for p in g.processes} | {r.pid for r in regs}
        pids |= listed - self.listed  # every new process is read in the sample after it started
        if self.scanner is not None:
            pids |= self.scanner.children(k[0] for k in in_runs)
        return pids, listed

    def read(self, procs: Iterable[ProcKey], listed: set[int] | None) -> None:
        """What this sample listed (a full scan lists what it read)."""
        self.listed = listed if listed is not None else {k[0] for k in procs}

    def after_scan(self, procs: dict[ProcKey, ProcessReading], in_runs: Collection[ProcKey], t: float,
                   full: bool) -> None:  # fmt: skip
        """After a full scan: rank the processes outside runs by CPU rate since the previous full scan and
        choose the top N to follow until the next one."""
        if not full:
            return
        span = t - self.last_full if self.last_full is not None else 0.0
        rates: list[tuple[float, ProcKey]] = []
        folded_rss = 0.0
        for k, p in procs.items():
            if k in in_runs:
                continue
            before = self.full_cpu.get(k)
            # CPU rate since the previous full scan; at the first one, lifetime CPU seconds as the best guess
            rate = (p.cpu_seconds - before) / span if (before is not None and span > 0) else p.cpu_seconds
            rates.append((rate, k))
            folded_rss += p.rss_bytes
        rates.sort(reverse=True)
        self.top = {k for _, k in rates[: self.top_n]}
        self.folded_rss = folded_rss - sum(procs[k].rss_bytes for k in self.top)
        self.full_cpu = {k: p.cpu_seconds for k, p in procs.items()}
        self.last_full = t

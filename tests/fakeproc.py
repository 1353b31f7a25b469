"""A writable fake /proc for sampler tests: system CPU time, meminfo and processes whose CPU time,
RSS and environment the test controls. The real ProcScanner reads it through its normal code path."""

from __future__ import annotations

import os
from pathlib import Path

TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class FakeProc:
    def __init__(self, root: Path, ncpu: int = 4, mem_total_bytes: int = 16 << 30) -> None:
        self.root = root
        self.ncpu = ncpu
        self.busy = 0.0
        self.idle = 1000.0  # a machine that has been up a while
        root.mkdir(parents=True, exist_ok=True)
        (root / "meminfo").write_text(f"MemTotal:       {mem_total_bytes // 1024} kB\nMemFree: 1 kB\n")
        self.procs: dict[int, dict[str, float | int | str | None]] = {}
        self._write_stat()

    def _write_stat(self) -> None:
        b, i = int(round(self.busy * TCK)), int(round(self.idle * TCK))
        lines = [f"cpu  {b} 0 0 {i} 0 0 0 0 0 0"]
        lines += [f"cpu{n} 0 0 0 0 0 0 0 0 0 0" for n in range(self.ncpu)]
        (self.root / "stat").write_text("\n".join(lines) + "\n")

    def spawn(self, pid: int, ppid: int = 1, comm: str = "python", run_id: str | None = None,
              start: float = 1.0, rss: int = 100 << 20, cpu: float = 0.0) -> None:
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        env = b"PATH=/usr/bin\0" + (f"CARBONWATCH_RUN_ID={run_id}\0".encode() if run_id else b"")
        (d / "environ").write_bytes(env)
        self.procs[pid] = {"ppid": ppid, "comm": comm, "start": start, "rss": rss, "cpu": cpu}
        self._write_proc(pid)
        self._write_children(ppid)

    def _write_children(self, ppid: int) -> None:
        if ppid not in self.procs:
            return
        kids = [str(p) for p, v in self.procs.items() if v["ppid"] == ppid]
        task = self.root / str(ppid) / "task" / str(ppid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "children").write_text(" ".join(kids) + (" " if kids else ""))

    def _write_proc(self, pid: int) -> None:
        p = self.procs[pid]
        ut = int(round(float(p["cpu"]) * TCK))  # type: ignore[arg-type]
        st = int(round(float(p["start"]) * TCK))  # type: ignore[arg-type]
        rss = int(p["rss"]) // PAGE  # type: ignore[call-overload]
        ct = int(round(float(p.get("ccpu", 0.0)) * TCK))  # type: ignore[arg-type]
        fields = ["S", str(p["ppid"]), "0", "0", "0", "-1", "0", "0", "0", "0", "0", str(ut), "0", str(ct), "0",
                  "20", "0", "1", "0", str(st), "0", str(rss)]
        (self.root / str(pid) / "stat").write_text(f"{pid} ({p['comm']}) " + " ".join(fields) + "\n")

    def run(self, seconds: float, usage: dict[int, float]) -> None:
        """Advance `seconds`: each pid in `usage` uses that many CPUs; the rest of the machine is idle."""
        for pid, cpus in usage.items():
            self.procs[pid]["cpu"] = float(self.procs[pid]["cpu"]) + cpus * seconds  # type: ignore[arg-type]
            self._write_proc(pid)
        used = sum(usage.values()) * seconds
        self.busy += used
        self.idle += self.ncpu * seconds - used
        self._write_stat()

    def kill(self, pid: int, reaped: bool = False) -> None:
        """The process ends; `reaped`: its parent waits for it, so the kernel adds its CPU time (and its own
        children's) to the parent's cutime."""
        import shutil

        shutil.rmtree(self.root / str(pid))
        gone = self.procs.pop(pid)
        ppid = int(gone["ppid"])  # type: ignore[call-overload]
        if reaped and ppid in self.procs:
            parent = self.procs[ppid]
            parent["ccpu"] = float(parent.get("ccpu", 0.0)) + float(gone["cpu"]) + float(gone.get("ccpu", 0.0))  # type: ignore[arg-type]
            self._write_proc(ppid)
        self._write_children(ppid)

    def reaped_child(self, ppid: int, cpu: float) -> None:
        """A child of `ppid` started, used `cpu` CPU-seconds and ended, all between two samples (never listed)."""
        parent = self.procs[ppid]
        parent["ccpu"] = float(parent.get("ccpu", 0.0)) + cpu  # type: ignore[arg-type]
        self._write_proc(ppid)

"""PID namespaces: which numbering a /proc tree uses, and how a pid maps between namespaces.

NVML reports the pids of GPU processes as the host numbers them. A process in a container (its own PID
namespace) numbers them differently, so a pid from NVML only means something next to a /proc tree that
numbers processes the way the host does. Three situations, told apart from the kernel's own files:

* `host`: this process is in the host's PID namespace (the namespace inode is the kernel's constant
  `PROC_PID_INIT_INO`). Every pid agrees with NVML's.
* `nspid`: this process has its own PID namespace, but the /proc tree was mounted by an outer one (the
  host's /proc bind-mounted, `unshare --pid` without `--mount-proc`): /proc numbers processes as the host
  does, so NVML's pids match it, and a pid of this namespace (`os.getpid()`) is mapped to /proc's number
  through the `NSpid` line of `/proc/PID/status` (outermost namespace first, own namespace last).
* `visible_gpus`: own PID namespace and its own /proc (the usual container). Host pids cannot be mapped
  from here: the GPU energy a process can be charged is that of the GPUs it can see.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PROC_PID_INIT_INO = 0xEFFFFFFC  # include/linux/proc_ns.h: the initial (host) PID namespace

HOST = "host"
NSPID = "nspid"
VISIBLE_GPUS = "visible_gpus"

_NS_LINK = re.compile(r"^pid:\[(\d+)\]$")


def namespace_inode(proc_root: str = "/proc", pid: int | str = "self") -> int | None:
    """Inode of the PID namespace of `pid` (from the `ns/pid` link), or None where it cannot be read
    (no such process, no permission to inspect it, a kernel without namespaces)."""
    try:
        target = os.readlink(f"{proc_root}/{pid}/ns/pid")
    except OSError:
        return None
    m = _NS_LINK.match(target)
    return int(m.group(1)) if m else None


def read_nspid(proc_root: str = "/proc", pid: int | str = "self") -> tuple[int, ...] | None:
    """The `NSpid` line of /proc/PID/status: the process's pid in each namespace it belongs to, from the
    namespace of whoever mounted this /proc tree to its own. None when unreadable or absent (kernels before
    4.1 do not write it)."""
    try:
        with open(f"{proc_root}/{pid}/status", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return tuple(int(f) for f in line.split()[1:])
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class PidView:
    """How pids in this process's namespace, in a /proc tree and in NVML relate."""

    mode: str  # HOST, NSPID or VISIBLE_GPUS
    proc_pid: int | None  # the process asked about, as the /proc tree numbers it (None: not found there)
    reason: str  # one sentence, for logs and summaries

    @property
    def host_pids(self) -> bool:
        """Whether the /proc tree numbers processes as NVML does (so a pid from NVML can be looked up in it)."""
        return self.mode != VISIBLE_GPUS


def detect(proc_root: str = "/proc", pid: int | None = None) -> PidView:
    """Which of the three situations holds for `proc_root`, and `pid` (a pid of this process's namespace,
    this process by default) as `proc_root` numbers it."""
    own = os.getpid() if pid is None else pid
    own_ns = namespace_inode(proc_root, "self")
    if own_ns is None:
        return PidView(HOST, own, f"the PID namespace of {proc_root}/self is unreadable: taken as the host's")
    if own_ns == PROC_PID_INIT_INO:
        return PidView(HOST, own, "this process is in the host PID namespace")
    ids = read_nspid(proc_root, "self")
    if not ids:
        return PidView(VISIBLE_GPUS, None, f"own PID namespace, and {proc_root} does not show this process's NSpid")
    if len(ids) == 1:
        return PidView(
            VISIBLE_GPUS, own, f"own PID namespace with its own {proc_root}: host pids from NVML cannot be mapped"
        )
    outer = namespace_inode(proc_root, 1)
    if outer is not None and outer != PROC_PID_INIT_INO:
        return PidView(
            VISIBLE_GPUS, None, f"{proc_root} numbers processes as an intermediate PID namespace, not the host's"
        )
    mapped = ids[0] if own == os.getpid() else map_to_proc(proc_root, own, depth=len(ids))
    how = "its pid-1 namespace is the host's" if outer is not None else "assumed to be the host's"
    return PidView(NSPID, mapped, f"own PID namespace; {proc_root} numbers processes as an outer namespace ({how})")


def map_to_proc(proc_root: str, pid: int, depth: int) -> int | None:
    """The /proc number of the process whose innermost pid is `pid`, among processes `depth` namespaces deep
    as `proc_root` sees them (the caller's own depth: NSpid has one entry per level). A scan of /proc, done
    once per run."""
    try:
        names = os.listdir(proc_root)
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        ids = read_nspid(proc_root, name)
        if ids is not None and len(ids) == depth and ids[-1] == pid:
            return ids[0]
    return None

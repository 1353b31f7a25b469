"""Process lists (compute, graphics and MPS clients), `_v3` with a fallback to `_v2` on drivers older than R510,
where pynvml raises NVMLLibraryMismatchError. They give the used memory and the processes without samples.
Entries are checked (the pid exists in /proc, the memory fits the board); when a list of two or more does not
check out, it is read again raw and parsed with the 32-byte entry layout some R535 drivers write, which is
kept for that call when it checks out better. MPS clients are listed by the MPS call only; the MPS server is
marked so that its SM share goes to its clients (by memory) and it gets none."""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from collections.abc import Sequence

from carbonwatch.node.sources.nvml.base import (
    CANNOT_TELL,
    FUNCTION_NOT_FOUND,
    INSUFFICIENT_SIZE,
    MPS_SERVER,
    NO_INSTANCE,
    NO_PERMISSION,
    NOT_AVAILABLE_U64,
    RETRIES,
    SUCCESS,
    Entry,
    Gpu,
    Handle,
    Nvml,
    ProcessInfo,
    ProcessList,
    Refused,
    code,
    instance,
    memory,
)

log = logging.getLogger("carbonwatch.nvml")

_MPS_SERVER_COMM = "nvidia-cuda-mps-server"
# Process entry layouts: what pynvml reads (pid, used memory, GPU instance, compute instance) and what some
# R535 drivers write (the same plus an 8-byte confidential-computing memory figure).
_LAYOUTS = {24: struct.Struct("<I4xQII"), 32: struct.Struct("<I4xQII8x")}
_C_NAMES = {
    "compute": "nvmlDeviceGetComputeRunningProcesses_v3",
    "graphics": "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "mps": "nvmlDeviceGetMPSComputeRunningProcesses_v3",
}
Found = list[tuple[int, int | None, int | None]]  # (pid, used memory, GPU instance)


class ProcessLists:
    """Reads and checks the process lists of a device handle. `proc_root` is where pids are looked up."""

    def __init__(self, nvml: Nvml, proc_root: str) -> None:
        self.nvml = nvml
        self.proc_root = proc_root
        self._layout: dict[str, int] = {}  # C list function -> entry size, where it is not pynvml's 24 bytes
        self._v2: set[str] = set()  # kinds read through the pre-R510 `_v2` functions
        self._pid_max: int | None = None

    def alive(self, pid: int) -> bool:
        return os.path.exists(f"{self.proc_root}/{pid}")

    def read(self, gpu: Gpu, handle: Handle, kinds: tuple[str, ...] = ("compute", "graphics", "mps")) -> list[Entry]:
        """Processes from the process lists of one handle, validated, with MPS clients in place of the
        MPS server. Raises Refused when NVML refuses them for lack of permission."""
        entries: list[Entry] = []
        for kind in kinds:
            if kind in gpu.lists_unsupported:
                continue
            got = self._list(gpu, handle, kind)
            if got is None:
                gpu.lists_unsupported.add(kind)
                continue
            entries.extend(got)
        return self._without_mps_server(entries)

    def _call(self, kind: str, handle: Handle) -> Sequence[ProcessInfo]:
        n = self.nvml
        calls: dict[str, tuple[ProcessList, ProcessList]] = {
            "compute": (n.nvmlDeviceGetComputeRunningProcesses, n.nvmlDeviceGetComputeRunningProcesses_v2),
            "graphics": (n.nvmlDeviceGetGraphicsRunningProcesses, n.nvmlDeviceGetGraphicsRunningProcesses_v2),
            "mps": (n.nvmlDeviceGetMPSComputeRunningProcesses, n.nvmlDeviceGetMPSComputeRunningProcesses_v2),
        }
        current, before_r510 = calls[kind]
        return before_r510(handle) if kind in self._v2 else current(handle)

    def _list(self, gpu: Gpu, handle: Handle, kind: str) -> list[Entry] | None:
        c_name = _C_NAMES[kind]
        mismatch = getattr(self.nvml, "NVMLLibraryMismatchError", None)  # pynvml before 11.5 has none
        for attempt in range(RETRIES):
            try:
                if self._layout.get(c_name, 24) != 24:
                    parsed = self._raw_entries(c_name, handle, self._layout[c_name])
                    return [Entry(p, m, kind, gi) for p, m, gi in parsed if self._valid(gpu, p, m)]
                infos = self._call(kind, handle)
            except self.nvml.NVMLError as exc:
                ret = code(exc)
                if ret == INSUFFICIENT_SIZE and attempt + 1 < RETRIES:
                    continue
                if ret in CANNOT_TELL:
                    if ret == FUNCTION_NOT_FOUND and kind not in self._v2:
                        self._v2.add(kind)  # an older pynvml raising the NVMLError itself
                        continue
                    return None
                if ret == NO_PERMISSION:
                    raise Refused(f"{kind} process list: {exc}") from exc
                raise
            except Exception as exc:
                if mismatch is None or not isinstance(exc, mismatch) or kind in self._v2:
                    raise
                self._v2.add(kind)  # driver older than R510: no `_v3` functions
                log.info("NVML: no %s; reading the %s process list through its _v2 function", c_name, kind)
                continue
            found = [(int(i.pid), memory(i.usedGpuMemory), instance(i)) for i in infos]
            if len(found) >= 2 and kind not in self._v2 and not all(self._valid(gpu, p, m) for p, m, _ in found):
                found = self._other_layout(gpu, c_name, handle, found)
            return [Entry(p, m, kind, gi) for p, m, gi in found if self._valid(gpu, p, m)]
        return []

    def _other_layout(self, gpu: Gpu, c_name: str, handle: Handle, found: Found) -> Found:
        """A list where some entries do not check out: read it again raw and keep the entry layout under
        which more of them do (the 32-byte layout of some R535 drivers, remembered for this call)."""
        try:
            wide = self._raw_entries(c_name, handle, 32)
        except (AttributeError, TypeError):
            return found  # a module without pynvml's function-pointer access
        score_24 = sum(self._valid(gpu, p, m) for p, m, _ in found)
        score_32 = sum(self._valid(gpu, p, m) for p, m, _ in wide)
        if score_32 > score_24:
            log.warning("NVML: %s writes 32-byte process entries (R535 layout); reading it raw from now on", c_name)
            self._layout[c_name] = 32
            return wide
        return found

    def _raw_entries(self, c_name: str, handle: Handle, size: int) -> Found:
        """The C list function called directly, through pynvml's own function lookup: pynvml's two-call
        sizing with a buffer wide enough for 32-byte entries, parsed with entries of `size` bytes."""
        fn = self.nvml._nvmlGetFunctionPointer(c_name)
        for _attempt in range(RETRIES):
            count = ctypes.c_uint(0)
            ret = fn(handle, ctypes.byref(count), None)
            if ret == SUCCESS:
                return []
            if ret != INSUFFICIENT_SIZE:
                raise self.nvml.NVMLError(ret)
            capacity = count.value * 2 + 5
            buf = (ctypes.c_ubyte * (capacity * 32))()
            count.value = capacity
            ret = fn(handle, ctypes.byref(count), buf)
            if ret == INSUFFICIENT_SIZE:
                continue
            if ret != SUCCESS:
                raise self.nvml.NVMLError(ret)
            data = bytes(buf)
            layout = _LAYOUTS[size]
            out: Found = []
            for i in range(min(count.value, capacity)):
                pid, used, gi, _ci = layout.unpack_from(data, i * size)
                out.append((pid, None if used == NOT_AVAILABLE_U64 else used, None if gi == NO_INSTANCE else gi))
            return out
        raise self.nvml.NVMLError(INSUFFICIENT_SIZE)

    def _valid(self, gpu: Gpu, pid: int, used: int | None) -> bool:
        """A process entry that can be real: a pid the kernel could hand out, present in /proc, and GPU
        memory no larger than the board's."""
        if self._pid_max is None:
            try:
                with open(f"{self.proc_root}/sys/kernel/pid_max") as fh:
                    self._pid_max = int(fh.read().strip())
            except (OSError, ValueError):
                self._pid_max = 4_194_304  # the kernel's ceiling (PID_MAX_LIMIT on 64-bit)
        if not 0 < pid <= self._pid_max:
            return False
        if used is not None and gpu.memory_total is not None and used > gpu.memory_total:
            return False
        return self.alive(pid)

    def _without_mps_server(self, entries: list[Entry]) -> list[Entry]:
        """With MPS clients listed, the MPS server (in the compute list) is their proxy: mark it, so that its
        SM time goes to the clients and it is charged nothing itself."""
        if not any(e.kind == "mps" for e in entries):
            return entries
        for e in entries:
            if e.kind != "mps" and _comm(self.proc_root, e.pid) == _MPS_SERVER_COMM:
                e.kind = MPS_SERVER
        return entries


def _comm(proc_root: str, pid: int) -> str:
    try:
        with open(f"{proc_root}/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""

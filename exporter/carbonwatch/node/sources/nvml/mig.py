"""MIG: one reading per board, like without MIG, so the board's counter stays one series. Per-process
utilisation does not exist in MIG mode, and a board-level process list needs privileges, so processes are
listed through each MIG device's own handle (board-level list as a fallback); the MIG devices are read again
every `mig_seconds`, as instances can be created and destroyed without a GPU reset. A process's `board_share`
is its GPU instance's slices / the board's slices, times its share of the instance's memory in use; the
slices of instances without a process, and unallocated slices, stay unattributed. A refused list is an error
in `last_errors`, never silent."""

from __future__ import annotations

from carbonwatch.node.model import GpuProcessUse
from carbonwatch.node.sources.nvml.base import (
    INVALID_ARGUMENT,
    MPS_SERVER,
    NOT_FOUND,
    Entry,
    Gpu,
    GpuState,
    MigDevice,
    Nvml,
    Refused,
    code,
    fatal_if_mismatch,
    text,
)
from carbonwatch.node.sources.nvml.lists import ProcessLists


class MigBoards:
    """The MIG layout of boards in MIG mode and the processes of their instances."""

    def __init__(self, nvml: Nvml, lists: ProcessLists, list_seconds: float, mig_seconds: float) -> None:
        self.nvml = nvml
        self.lists = lists
        self.list_seconds = list_seconds
        self.mig_seconds = mig_seconds

    def setup(self, gpu: Gpu, now: float) -> None:
        """The MIG devices of a board in MIG mode. A failure leaves the energy alone: the problem is reported
        with the processes."""
        gpu.mig_at = now
        try:
            gpu.mig, gpu.mig_slots = self._devices(gpu)
            gpu.mig_error = ""
        except self.nvml.NVMLError as exc:
            fatal_if_mismatch(exc)
            if gpu.mig is None:
                gpu.mig = []
            gpu.mig_error = f"MIG layout unreadable: {exc}"

    def _devices(self, gpu: Gpu) -> tuple[list[MigDevice], int]:
        nvml = self.nvml
        slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu.handle))
        migs: list[MigDevice] = []
        for i in range(slots):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, i)
            except nvml.NVMLError as exc:
                if code(exc) in (NOT_FOUND, INVALID_ARGUMENT):
                    continue  # an empty slot
                raise
            attrs = nvml.nvmlDeviceGetAttributes(handle)
            gi = int(nvml.nvmlDeviceGetGpuInstanceId(handle))
            migs.append(MigDevice(handle, text(nvml.nvmlDeviceGetUUID(handle)), gi, int(attrs.gpuInstanceSliceCount),
                                  max(int(attrs.computeInstanceSliceCount), 1)))  # fmt: skip
        # One slice per MIG device the board can hold (7 on A100/H100, 4 on A30), never less than in use.
        in_use = sum({m.gpu_instance: m.slices for m in migs}.values())
        return migs, max(slots, in_use, 1)

    def processes(self, gpu: Gpu, state: GpuState, now: float, who: str,
                  errors: list[str]) -> tuple[GpuProcessUse, ...]:  # fmt: skip
        due = state.lists_at is None or now - state.lists_at >= self.list_seconds
        if due and now - gpu.mig_at >= (self.list_seconds if gpu.mig_error else self.mig_seconds):
            self.setup(gpu, now)
        if gpu.mig_error or gpu.mig is None:
            errors.append(f"{who}: {gpu.mig_error}")
            return ()
        if due:
            state.lists_at = now
            try:
                state.listed = self._lists(gpu, gpu.mig)
            except Refused as exc:
                state.listed = []
                errors.append(f"{who}: {exc}")
        state.listed = [e for e in state.listed if self.lists.alive(e.pid)]
        return _shares(state.listed, {m.gpu_instance: m.slices for m in gpu.mig}, gpu.mig_slots)

    def _lists(self, gpu: Gpu, migs: list[MigDevice]) -> list[Entry]:
        """Processes of every MIG device through its own handle; the board-level list (which needs
        privileges) only if a MIG handle is refused."""
        entries: list[Entry] = []
        try:
            for m in migs:
                for e in self.lists.read(gpu, m.handle, kinds=("compute", "mps")):
                    e.gpu_instance = m.gpu_instance
                    entries.append(e)
            return entries
        except Refused as first:
            try:
                return self.lists.read(gpu, gpu.handle, kinds=("compute", "mps"))
            except Refused:
                raise Refused(
                    f"MIG: NVML refused the process lists ({first}): the board's energy stays unattributed; "
                    "run the exporter as root or with the device capabilities of each MIG instance"
                ) from first


def _shares(listed: list[Entry], slices: dict[int, int], board_slots: int) -> tuple[GpuProcessUse, ...]:
    """Each process's share of the board: its instance's fraction, split by memory within the instance."""
    by_gi: dict[int, dict[int, Entry]] = {}
    for e in listed:
        if e.gpu_instance is not None and e.gpu_instance in slices and e.kind != MPS_SERVER:
            by_gi.setdefault(e.gpu_instance, {})[e.pid] = e
    out: list[GpuProcessUse] = []
    for gi, entries in sorted(by_gi.items()):
        fraction = slices[gi] / board_slots
        memory = {pid: e.memory for pid, e in entries.items()}
        known = [m for m in memory.values() if m is not None]
        total = float(sum(known))
        for pid in sorted(entries):
            mem = memory[pid]
            within = (mem or 0) / total if (len(known) == len(memory) and total > 0) else 1.0 / len(entries)
            out.append(GpuProcessUse(pid, None, None, mem, gpu_instance_id=gi, board_share=fraction * within))
    return tuple(out)


def mig_shares(gpu: Gpu) -> tuple[tuple[str, float], ...]:
    """Per MIG device: its GPU instance's fraction of the board's slices, split among the instance's compute
    instances by their compute slices, so the fractions of one instance's devices add up to the instance's."""
    if not gpu.mig:
        return ()
    per_gi: dict[int, int] = {}
    for m in gpu.mig:
        per_gi[m.gpu_instance] = per_gi.get(m.gpu_instance, 0) + m.compute_slices
    return tuple(
        (m.uuid, m.slices / gpu.mig_slots * m.compute_slices / per_gi[m.gpu_instance]) for m in gpu.mig
    )

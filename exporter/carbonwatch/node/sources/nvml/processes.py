"""Per-process shares of a GPU outside MIG mode.

Every `process_seconds` (2.1 ms of CPU a call on the H200), where the GPU supports them:
`nvmlDeviceGetProcessUtilization` since the newest sample seen, in one C call into a buffer sized from
earlier reads (pynvml's wrapper, which makes a sizing call first, when it is too small). NVML writes about one
sample per process per second, (0, 0) for an idle context. A process with new samples gets their mean SM /
memory-controller use; between reads every listed process keeps its figures, and a listed process without a
new sample keeps them for `carry_seconds` after the read that found none (a sample that has not arrived yet is
not idleness); a new process has figures from the first read after its first sample (until then the sampler
splits by memory where no process shows SM time). The timestamp survives failures; one ahead of the wall
clock (the clock went back) is replaced by the time of the previous read, and samples stamped in the future
are ignored. Insufficient Size (more samples or processes between pynvml's sizing call and its fill call) is
retried.

The process lists (lists.py) are read every `list_seconds` (1 s: 0.16 ms on the H200; this is how a new
process is found while the per-process samples wait, and a newly listed process has its samples read at
once), and at once when a sample names an unlisted pid.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import cast

from carbonwatch.node.model import GpuProcessUse
from carbonwatch.node.sources.nvml.base import (
    CANNOT_TELL,
    INSUFFICIENT_SIZE,
    MPS_SERVER,
    NOT_FOUND,
    RETRIES,
    SUCCESS,
    Carried,
    Entry,
    Gpu,
    GpuState,
    Nvml,
    ProcessSample,
    Refused,
    code,
    fatal_if_mismatch,
)
from carbonwatch.node.sources.nvml.lists import ProcessLists

Figures = dict[int, tuple[float, float]]  # pid -> (SM %, memory-controller %)


class ProcessSamples:
    """The per-process utilisation samples of one GPU, read every `process_seconds`."""

    def __init__(self, nvml: Nvml, process_seconds: float, wall: Callable[[], float]) -> None:
        self.nvml = nvml
        self.process_seconds = process_seconds
        self.wall = wall

    def read(self, gpu: Gpu, state: GpuState, now: float, who: str, errors: list[str],
             force: bool = False) -> Figures | None:  # fmt: skip
        """pid -> (SM %, memory %), the mean of the samples newer than the newest seen (every
        `process_seconds`, or now if `force`; empty in between); None when this GPU has no per-process
        utilisation."""
        if not gpu.process_util:
            return None
        if not force and state.samples_at is not None and now - state.samples_at < self.process_seconds - 1e-6:
            return {}
        state.samples_at = now
        now_us = int(self.wall() * 1e6)
        since = state.last_seen_us
        if since <= 0 or since > now_us:  # first read, or the wall clock went back
            since = state.last_read_us if 0 < state.last_read_us <= now_us else now_us - 1_000_000
        state.last_read_us = now_us
        raw = self._fetch(gpu, state, since, who, errors)
        if raw is None or isinstance(raw, dict):
            return raw
        gpu.sample_capacity = max(gpu.sample_capacity, 2 * len(raw) + 8)
        sums: dict[int, list[float]] = {}
        newest = since
        for s in raw:
            stamp = int(s.timeStamp)
            if stamp <= since or stamp > now_us + 1_000_000:
                continue  # stamped before the window or in the future (from before the clock went back)
            acc = sums.setdefault(int(s.pid), [0.0, 0.0, 0.0])
            acc[0] += float(s.smUtil)
            acc[1] += float(s.memUtil)
            acc[2] += 1.0
            newest = max(newest, stamp)
        state.last_seen_us = newest
        return {pid: (a[0] / a[2], a[1] / a[2]) for pid, a in sums.items()}

    def _fetch(self, gpu: Gpu, state: GpuState, since: int, who: str,
               errors: list[str]) -> Sequence[ProcessSample] | Figures | None:  # fmt: skip
        """The raw samples; a Figures (empty) or None where `read` is to return that at once."""
        for attempt in range(RETRIES + 1):
            try:
                if attempt == 0:  # one call into a buffer sized from earlier reads
                    direct = self._direct(gpu, since)
                    if direct is None:
                        continue  # too small: pynvml's wrapper sizes it (two calls)
                    return direct
                return self.nvml.nvmlDeviceGetProcessUtilization(gpu.handle, since)
            except self.nvml.NVMLError as exc:
                ret = code(exc)
                if ret in (NOT_FOUND, SUCCESS):  # no sample newer than `since` (pynvml: SUCCESS, none)
                    state.last_seen_us = since
                    return {}
                if ret in CANNOT_TELL:
                    gpu.process_util = False
                    return None
                if ret == INSUFFICIENT_SIZE and attempt < RETRIES:
                    continue
                fatal_if_mismatch(exc)
                errors.append(f"{who}: process utilization: {exc}")
                return {}
        return ()

    def _direct(self, gpu: Gpu, since: int) -> list[ProcessSample] | None:
        """nvmlDeviceGetProcessUtilization called once, through pynvml's function lookup, into a buffer as
        large as twice the most samples seen (pynvml's wrapper always makes a sizing call first). None when
        the buffer is too small or the module gives no access to the C function."""
        try:
            fn = self.nvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
            sample_t = self.nvml.c_nvmlProcessUtilizationSample_t
        except AttributeError:
            return None
        capacity = gpu.sample_capacity
        buf = (sample_t * capacity)()
        count = ctypes.c_uint(capacity)
        ret = fn(gpu.handle, buf, ctypes.byref(count), ctypes.c_ulonglong(since))
        if ret == INSUFFICIENT_SIZE:
            return None
        if ret != SUCCESS:
            raise self.nvml.NVMLError(ret)
        return cast(list[ProcessSample], list(buf[: min(count.value, capacity)]))


class GpuProcesses:
    """The processes of a GPU outside MIG mode: its lists and its samples, merged."""

    def __init__(self, nvml: Nvml, lists: ProcessLists, samples: ProcessSamples, list_seconds: float,
                 carry_seconds: float) -> None:  # fmt: skip
        self.nvml = nvml
        self.lists = lists
        self.samples = samples
        self.list_seconds = list_seconds
        self.carry_seconds = carry_seconds

    def read(self, gpu: Gpu, state: GpuState, now: float, who: str, errors: list[str]) -> tuple[GpuProcessUse, ...]:
        alive_fn = self.lists.alive
        before = {e.pid for e in state.listed}  # alive at the previous read
        listed_now = state.lists_at is None or now - state.lists_at >= self.list_seconds
        if listed_now:
            self._read_lists(gpu, state, now, who, errors)
        # a process listed since the last per-process read is read at once, not up to process_seconds late
        fresh = any(e.pid not in state.sampled for e in state.listed)
        samples = self.samples.read(gpu, state, now, who, errors, force=fresh)
        unlisted = set(samples or ()) - {e.pid for e in state.listed}
        if not listed_now and any(alive_fn(pid) for pid in unlisted):  # started since the lists were read
            self._read_lists(gpu, state, now, who, errors)
        listed = [e for e in state.listed if alive_fn(e.pid)]
        state.listed = listed
        if samples is None:  # no per-process utilisation on this GPU: memory share in the sampler
            return merge(listed, None)
        # a process that exited since the previous read still used the GPU in this interval; samples of one
        # that was gone before it (from a read that covers several seconds) say nothing about this interval
        alive = {e.pid for e in listed}
        samples = {pid: f for pid, f in samples.items() if pid in alive or pid in before}
        if state.samples_at == now:
            state.sampled = alive | set(samples)
        for pid, (sm, mem) in samples.items():
            state.carried[pid] = Carried(sm, mem, now)
        alive |= before  # (those that exited since the previous read: their last interval)
        state.carried = {
            pid: c for pid, c in state.carried.items()
            if pid in samples or (pid in alive and (state.samples_at or now) - c.at <= self.carry_seconds)
        }
        return merge(listed, {pid: (c.sm, c.mem) for pid, c in state.carried.items()})

    def _read_lists(self, gpu: Gpu, state: GpuState, now: float, who: str, errors: list[str]) -> None:
        try:
            state.listed = self.lists.read(gpu, gpu.handle)
            state.lists_at = now
        except Refused as exc:
            errors.append(f"{who}: {exc}")
            state.lists_at = now
        except self.nvml.NVMLError as exc:
            fatal_if_mismatch(exc)
            errors.append(f"{who}: process lists: {exc}")


def merge(listed: list[Entry], figures: Figures | None) -> tuple[GpuProcessUse, ...]:
    """One GpuProcessUse per pid: listed processes (largest memory figure where listed twice) and processes
    that only have utilisation figures (they used the GPU in the window, then left). The MPS server's SM and
    memory-controller time is split among its clients by their memory; the server itself is left out."""
    servers = {e.pid for e in listed if e.kind == MPS_SERVER}
    memory: dict[int, int | None] = {}
    for e in listed:
        if e.pid in servers:
            continue
        prev = memory.get(e.pid)
        if e.pid not in memory or (e.memory is not None and (prev is None or e.memory > prev)):
            memory[e.pid] = e.memory
    if figures is None:
        return tuple(GpuProcessUse(pid, None, None, memory[pid]) for pid in sorted(memory))
    figs = {pid: f for pid, f in figures.items() if pid not in servers}
    clients = sorted({e.pid for e in listed if e.kind == "mps"})
    sm = sum(figures[pid][0] for pid in servers if pid in figures)
    mem = sum(figures[pid][1] for pid in servers if pid in figures)
    if clients and (sm > 0 or mem > 0):
        weights = {pid: float(memory.get(pid) or 0) for pid in clients}
        total = sum(weights.values())
        for pid in clients:
            w = weights[pid] / total if total > 0 else 1.0 / len(clients)
            base = figs.get(pid, (0.0, 0.0))
            figs[pid] = (base[0] + sm * w, base[1] + mem * w)
    return tuple(
        GpuProcessUse(pid, *figs.get(pid, (0.0, 0.0)), memory.get(pid)) for pid in sorted(set(memory) | set(figs))
    )

"""How a device's energy in one sample interval is split among processes. Pure functions, no I/O.

Every split returns the parts and the unattributed rest, computed as `total - sum(parts)`, so that
within one sample sum(process) + unattributed == device, per component, by construction.

- CPU: a process gets `dE * its CPU seconds / all CPU seconds the machine had` (busy and idle, all
  cores). A process using every core fully takes all of the package energy. The sampler gives busy time it
  cannot place on one process (not read this interval, ended, kernel threads) to pid="other"; idle time
  stays unattributed.
- GPU: each GPU's energy goes to the processes on it, by their share of SM utilisation; when no process
  shows SM time (NVML has no sample, or the work is memory-bound) by share of GPU memory used; with no
  process on the GPU it is unattributed. A run that holds a GPU therefore pays for its idle power.
  On a MIG board, where the source gives each process its `board_share` (its GPU instance's slices of the
  board times its share within the instance), a process gets exactly that fraction and the slices nobody
  uses stay unattributed: a 1g slice never pays like a 7g one.
- Memory: a process gets `dE * its RSS / installed memory`; the rest is unattributed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

from carbonwatch.node.model import GpuProcessUse

K = TypeVar("K", bound=Hashable)


def split_by_capacity(total: float, weights: Mapping[K, float], capacity: float) -> tuple[dict[K, float], float]:
    """Each key gets `total * weight / capacity`; if the weights add up to more than the capacity
    (clock skew between reads), they are scaled down to fill it exactly."""
    positive = {k: w for k, w in weights.items() if w > 0}
    s = sum(positive.values())
    if total == 0 or s <= 0 or capacity <= 0:
        return {}, total
    denom = max(capacity, s)
    parts = {k: total * w / denom for k, w in positive.items()}
    return parts, total - sum(parts.values())


def split_by_share(total: float, weights: Mapping[K, float]) -> tuple[dict[K, float], float]:
    """All of `total` split in proportion to the weights; unattributed only when no weight is positive."""
    positive = {k: w for k, w in weights.items() if w > 0}
    s = sum(positive.values())
    if total == 0 or s <= 0:
        return {}, total
    parts = {k: total * w / s for k, w in positive.items()}
    return parts, total - sum(parts.values())


def split_gpu(
    total: float, processes: tuple[GpuProcessUse, ...] | list[GpuProcessUse]
) -> tuple[dict[int, float], float]:
    """One GPU's energy over its processes: fixed MIG board shares where the source gives them, else
    `gpu_weights`."""
    shares: dict[int, float] = {}
    for p in processes:
        if p.board_share is not None:
            shares[p.pid] = shares.get(p.pid, 0.0) + max(p.board_share, 0.0)
    if shares:
        scale = 1.0 / sum(shares.values()) if sum(shares.values()) > 1.0 else 1.0  # never more than the board
        return split_by_capacity(total, {pid: s * scale for pid, s in shares.items()}, 1.0)
    return split_by_share(total, gpu_weights(processes))


def gpu_weights(processes: tuple[GpuProcessUse, ...] | list[GpuProcessUse]) -> dict[int, float]:
    """Per-pid weights for one GPU: SM utilisation, else memory used, else equal shares."""
    if not processes:
        return {}
    sm: dict[int, float] = {}
    mem: dict[int, float] = {}
    for p in processes:
        sm[p.pid] = sm.get(p.pid, 0.0) + max(p.sm_util or 0.0, 0.0)
        mem[p.pid] = mem.get(p.pid, 0.0) + max(float(p.used_memory_bytes or 0), 0.0)
    if sum(sm.values()) > 0:
        return sm
    if sum(mem.values()) > 0:
        return mem
    return {pid: 1.0 for pid in sm}

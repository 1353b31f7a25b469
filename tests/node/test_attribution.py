from carbonwatch.node.attribution import gpu_weights, split_by_capacity, split_by_share
from carbonwatch.node.model import GpuProcessUse


def test_capacity_split_leaves_idle_unattributed():
    parts, rest = split_by_capacity(100.0, {"a": 1.0, "b": 0.5}, capacity=4.0)
    assert parts == {"a": 25.0, "b": 12.5}
    assert rest == 62.5
    assert sum(parts.values()) + rest == 100.0


def test_capacity_split_scales_down_when_weights_exceed_capacity():
    # per-process CPU time read a moment after /proc/stat can exceed the system total
    parts, rest = split_by_capacity(10.0, {"a": 3.0, "b": 1.0}, capacity=2.0)
    assert parts["a"] == 7.5 and parts["b"] == 2.5
    assert rest == 0.0


def test_capacity_split_ignores_zero_and_negative_weights():
    parts, rest = split_by_capacity(10.0, {"a": 0.0, "b": -1.0}, capacity=2.0)
    assert parts == {} and rest == 10.0


def test_share_split_gives_everything_to_processes():
    parts, rest = split_by_share(300.0, {1: 60.0, 2: 20.0})
    assert parts == {1: 225.0, 2: 75.0}
    assert rest == 0.0


def test_share_split_with_no_process_is_unattributed():
    assert split_by_share(50.0, {}) == ({}, 50.0)


def test_gpu_weights_prefer_sm_then_memory_then_equal():
    sm = gpu_weights([GpuProcessUse(1, sm_util=30, used_memory_bytes=10), GpuProcessUse(2, sm_util=10)])
    assert sm == {1: 30.0, 2: 10.0}
    mem = gpu_weights([GpuProcessUse(1, sm_util=0, used_memory_bytes=3 << 30),
                       GpuProcessUse(2, used_memory_bytes=1 << 30)])
    assert mem == {1: float(3 << 30), 2: float(1 << 30)}
    assert gpu_weights([GpuProcessUse(7), GpuProcessUse(8)]) == {7: 1.0, 8: 1.0}
    assert gpu_weights([]) == {}


def test_split_sums_are_exact_for_awkward_numbers():
    weights = {i: (i * 0.37) % 1.3 for i in range(1, 200)}
    for total in (0.1, 1e-9, 123456.789, 3.3):
        parts, rest = split_by_capacity(total, weights, capacity=500.0)
        assert abs(sum(parts.values()) + rest - total) <= 1e-12 * max(1.0, total)
        parts, rest = split_by_share(total, weights)
        assert abs(sum(parts.values()) + rest - total) <= 1e-12 * max(1.0, total)

"""PID-namespace detection and NSpid mapping, on /proc trees laid out as the kernel writes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carbonwatch.node.sources import pidns

HOST_NS = pidns.PROC_PID_INIT_INO
CONTAINER_NS = 4026532451


def proc_tree(root: Path, self_pid: int, nspid: tuple[int, ...], own_ns: int,
              pid1_ns: int | None = None, others: dict[int, tuple[int, ...]] | None = None) -> Path:
    """/proc as seen by a process whose /proc/self is `self_pid` (in the tree's numbering)."""
    root.mkdir(parents=True)

    def add(pid: int, ids: tuple[int, ...], ns: int | None) -> None:
        d = root / str(pid)
        (d / "ns").mkdir(parents=True, exist_ok=True)
        nspid = "\t".join(map(str, ids))
        (d / "status").write_text(f"Name:\tpython\nTgid:\t{pid}\nNSpid:\t{nspid}\n")
        if ns is not None:
            os.symlink(f"pid:[{ns}]", d / "ns" / "pid")

    add(self_pid, nspid, own_ns)
    for pid, ids in (others or {}).items():
        add(pid, ids, None)
    if pid1_ns is not None:
        (root / "1" / "ns").mkdir(parents=True, exist_ok=True)
        os.symlink(f"pid:[{pid1_ns}]", root / "1" / "ns" / "pid")
    os.symlink(str(self_pid), root / "self")
    return root


def test_in_the_host_namespace_every_pid_agrees(tmp_path: Path) -> None:
    root = proc_tree(tmp_path / "proc", 4242, (4242,), HOST_NS)
    view = pidns.detect(str(root), pid=4242)
    assert (view.mode, view.proc_pid, view.host_pids) == (pidns.HOST, 4242, True)


def test_a_container_with_its_own_proc_cannot_map_host_pids(tmp_path: Path) -> None:
    root = proc_tree(tmp_path / "proc", 7, (7,), CONTAINER_NS)
    view = pidns.detect(str(root), pid=7)
    assert (view.mode, view.proc_pid, view.host_pids) == (pidns.VISIBLE_GPUS, 7, False)
    assert "own PID namespace" in view.reason


def test_own_namespace_with_the_hosts_proc_maps_through_nspid(tmp_path: Path) -> None:
    # this process is 7 in its namespace and 31337 on the host; its child (9 inside) is 31340
    root = proc_tree(tmp_path / "proc", 31337, (31337, 7), CONTAINER_NS, pid1_ns=HOST_NS,
                     others={31340: (31340, 9), 500: (500, 9, 2)})  # a deeper process with inner pid 9 too
    own = pidns.detect(str(root))  # this process: NSpid of /proc/self
    assert (own.mode, own.proc_pid, own.host_pids) == (pidns.NSPID, 31337, True)
    child = pidns.detect(str(root), pid=9)
    assert (child.mode, child.proc_pid) == (pidns.NSPID, 31340)
    assert pidns.detect(str(root), pid=12345).proc_pid is None  # not in this namespace


def test_a_proc_of_an_intermediate_namespace_is_not_the_hosts(tmp_path: Path) -> None:
    root = proc_tree(tmp_path / "proc", 300, (300, 7), CONTAINER_NS, pid1_ns=4026532000)
    view = pidns.detect(str(root), pid=7)
    assert view.mode == pidns.VISIBLE_GPUS and "intermediate" in view.reason


def test_an_unreadable_namespace_is_taken_as_the_hosts_and_said_so(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    view = pidns.detect(str(tmp_path / "proc"), pid=5)
    assert view.mode == pidns.HOST and "unreadable" in view.reason


def test_readers_return_none_for_what_is_not_there(tmp_path: Path) -> None:
    root = proc_tree(tmp_path / "proc", 7, (7,), CONTAINER_NS)
    (root / "8").mkdir()
    (root / "8" / "status").write_text("Name:\told-kernel\nTgid:\t8\n")  # before 4.1: no NSpid line
    assert pidns.read_nspid(str(root), 8) is None
    assert pidns.read_nspid(str(root), 99) is None
    assert pidns.namespace_inode(str(root), 99) is None
    assert pidns.namespace_inode(str(root), 7) == CONTAINER_NS


def test_this_node() -> None:
    """The real /proc: the detection agrees with the kernel's namespace link."""
    view = pidns.detect("/proc")
    inode = pidns.namespace_inode("/proc")
    if inode == HOST_NS:
        assert view.mode == pidns.HOST and view.proc_pid == os.getpid()
    else:
        assert view.mode in (pidns.NSPID, pidns.VISIBLE_GPUS)


@pytest.mark.parametrize("link", ["net:[4026531840]", "garbage"])
def test_a_link_that_is_not_a_pid_namespace_is_not_read_as_one(tmp_path: Path, link: str) -> None:
    (tmp_path / "proc" / "3" / "ns").mkdir(parents=True)
    os.symlink(link, tmp_path / "proc" / "3" / "ns" / "pid")
    assert pidns.namespace_inode(str(tmp_path / "proc"), 3) is None

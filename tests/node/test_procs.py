import os
import subprocess
import sys
import time

import pytest

from carbonwatch.node.model import SourceError
from carbonwatch.node.sources.memory import read_mem_total_bytes
from carbonwatch.node.sources.procs import ProcScanner, parse_stat, run_id_from_environ


def test_parse_stat_handles_spaces_and_parens_in_comm():
    raw = (b"4242 (my (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 "
           b"1000000 256 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")
    ppid, comm, cpu, rss, start, children = parse_stat(4242, raw)
    tck = os.sysconf("SC_CLK_TCK")
    assert ppid == 1 and comm == "my (weird) name"
    assert cpu == pytest.approx(300 / tck)
    assert children == 0.0
    assert start == pytest.approx(12345 / tck)
    assert rss == 256 * os.sysconf("SC_PAGE_SIZE")


def test_run_id_from_environ():
    assert run_id_from_environ(b"A=1\0CARBONWATCH_RUN_ID=r-42\0B=2\0") == "r-42"
    assert run_id_from_environ(b"A=1\0") is None
    assert run_id_from_environ(b"CARBONWATCH_RUN_ID=\0") is None
    assert run_id_from_environ(b"CARBONWATCH_RUN_ID=" + b"x" * 500 + b"\0") is None


def test_real_children_carry_their_run_id_and_cpu_time():
    env = dict(os.environ, CARBONWATCH_RUN_ID="test-run-procs")
    # 0.6 s of CPU, however long a loaded machine takes to give it, then idle
    busy = "import time\nwhile time.process_time() < 0.6: pass\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", busy], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            scanner = ProcScanner()
            by_pid = {p.pid: p for p in scanner.read()}
            if by_pid[child.pid].cpu_seconds >= 0.5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        me = by_pid[os.getpid()]
        assert me.run_id is None or me.run_id != "test-run-procs"
        c = by_pid[child.pid]
        assert c.run_id == "test-run-procs"
        assert c.ppid == os.getpid()
        assert c.cpu_seconds >= 0.3
        assert c.rss_bytes > 1 << 20
    finally:
        child.kill()
        child.wait()


def test_cpu_times_and_meminfo_from_real_proc():
    scanner = ProcScanner()
    t = scanner.cpu_times()
    assert t.total > t.busy > 0 and t.ncpu == os.cpu_count()
    assert read_mem_total_bytes() > 100 << 20


def test_missing_proc_root_is_a_source_error(tmp_path):
    scanner = ProcScanner(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="cannot"):
        scanner.read()
    with pytest.raises(SourceError, match="stat"):
        scanner.cpu_times()


def test_vanishing_and_malformed_processes_are_skipped(tmp_path):
    (tmp_path / "stat").write_text("cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 10 0 10 80 0 0 0 0 0 0\n")
    ok = tmp_path / "10"
    ok.mkdir()
    (ok / "stat").write_bytes(b"10 (ok) S 1 10 10 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 100 0 3 0")
    (ok / "environ").write_bytes(b"CARBONWATCH_RUN_ID=r1\0")
    bad = tmp_path / "11"
    bad.mkdir()
    (bad / "stat").write_bytes(b"garbage")
    (tmp_path / "12").mkdir()  # vanished: no stat file
    procs = ProcScanner(str(tmp_path)).read()
    assert [(p.pid, p.comm, p.run_id) for p in procs] == [(10, "ok", "r1")]

import json
import os
import subprocess
import sys

import pytest

from carbonwatch.errors import ConfigError
from carbonwatch.node.registration import RegistrationReader, register, unregister, validate_run_id


def test_register_writes_a_file_the_reader_accepts(tmp_path):
    path = register("run-1", spool=str(tmp_path))
    regs = RegistrationReader(str(tmp_path)).read()
    assert [(r.run_id, r.pid) for r in regs] == [("run-1", os.getpid())]
    assert regs[0].start_time is not None
    unregister(path)
    assert RegistrationReader(str(tmp_path)).read() == []


@pytest.mark.parametrize("bad", ["", "a b", "x" * 200, "run\nid", "../etc", 'a"b', None, 5])
def test_bad_run_ids_are_refused_with_a_clear_error(bad):
    with pytest.raises(ConfigError, match="run_id"):
        validate_run_id(bad)


def test_reader_rejects_malformed_files_and_names_why(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"run_id": "bad id", "pid": os.getpid()}))
    (tmp_path / "c.json").write_text(json.dumps({"run_id": "ok", "pid": -3}))
    (tmp_path / "d.json").write_text(json.dumps({"run_id": "ok", "pid": os.getpid(), "pad": "x" * 5000}))
    (tmp_path / "e.json").write_text("[1, 2]")
    reader = RegistrationReader(str(tmp_path))
    assert reader.read() == []
    why = reader.rejected
    assert "unreadable" in why["a.json"]
    assert "run_id" in why["b.json"]
    assert "pid" in why["c.json"]
    assert "larger than" in why["d.json"]
    assert "JSON object" in why["e.json"]


def test_dead_and_reused_pids_are_dropped_and_cleaned(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (tmp_path / "dead.json").write_text(json.dumps({"run_id": "r", "pid": child.pid}))
    (tmp_path / "reused.json").write_text(json.dumps({"run_id": "r", "pid": os.getpid(), "start_time": 1.0}))
    assert RegistrationReader(str(tmp_path)).read() == []
    assert not (tmp_path / "dead.json").exists() and not (tmp_path / "reused.json").exists()


def test_reader_is_bounded(tmp_path):
    for i in range(30):
        (tmp_path / f"r{i}.json").write_text(json.dumps({"run_id": f"r{i}", "pid": os.getpid()}))
    assert len(RegistrationReader(str(tmp_path), max_registrations=10).read()) == 10


def test_missing_spool_directory_means_no_registrations(tmp_path):
    assert RegistrationReader(str(tmp_path / "missing")).read() == []

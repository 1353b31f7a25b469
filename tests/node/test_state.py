"""The state file: atomic writes, restore, and every way a file can be bad."""

from __future__ import annotations

import json
import os

import pytest

from carbonwatch.node.state import CORRUPT, MISSING, RESTORED, UNREADABLE, StateStore, parse


def sample_state() -> dict:
    return {
        "devices": [["gpu", "0", "nvml_counter", 1234.5], ["cpu", "0", "rapl", 99.0]],
        "node_energy_joules": {"gpu": 1234.5, "cpu": 99.0},
        "node_emissions_grams": {"gpu": 0.1, "cpu": 0.01},
        "unattributed_energy_joules": {"gpu": 34.5},
        "runs": {"r1": {"energy_joules": {"gpu": 1200.0}, "emissions_grams": {"gpu": 0.09},
                        "sources": {"gpu": "nvml_counter"}, "origin": "env", "labels": {"user": "alice"},
                        "last_seen_wall": 1.7e9}},
        "containers": [{"namespace": "ml", "pod": "p-0", "container": "train", "energy_joules": {"cpu": 5.0},
                        "emissions_grams": {"cpu": 0.001}, "last_seen_wall": 1.7e9}],
    }


def test_write_then_load_gives_back_every_counter(tmp_path):
    store = StateStore(tmp_path / "state", wall=lambda: 1.7e9 + 5)
    assert store.write(sample_state())
    assert os.listdir(tmp_path / "state") == ["state.json"]  # no temporary file left behind
    again = StateStore(tmp_path / "state")
    r = again.load()
    assert r.status == RESTORED and again.status()[0] == RESTORED
    assert r.state["runs"]["r1"]["energy_joules"] == {"gpu": 1200.0}
    assert r.state["runs"]["r1"]["labels"] == {"user": "alice"}
    assert r.state["devices"][0] == ("gpu", "0", "nvml_counter", 1234.5)  # (component, key, source, joules)
    assert r.state["containers"][0]["pod"] == "p-0"
    assert r.state["saved_at"] == 1.7e9 + 5


def test_a_first_start_without_a_file_is_missing_not_an_error(tmp_path):
    store = StateStore(tmp_path / "nothing-here")
    r = store.load()
    assert r.status == MISSING and r.state is None


@pytest.mark.parametrize("content, why", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe garbage", "not JSON"),
    (json.dumps({"format": "something-else"}).encode(), "not a carbonwatch-state file"),
    (json.dumps({"format": "carbonwatch-state", "version": 99, "saved_at": 1}).encode(), "version 99"),
    (json.dumps({"format": "carbonwatch-state", "version": 1, "saved_at": 1,
                 "runs": {"r": {"energy_joules": {"gpu": -5}}}}).encode(), "runs['r'].energy_joules.gpu"),
    (json.dumps({"format": "carbonwatch-state", "version": 1, "saved_at": 1,
                 "devices": [["gpu", "0", 7]]}).encode(), "devices[0]"),
    (b"", "not JSON"),  # a file truncated to nothing by a full disk
])
def test_a_corrupt_file_starts_fresh_says_why_and_is_kept_for_inspection(tmp_path, caplog, content, why):
    d = tmp_path / "state"
    d.mkdir()
    (d / "state.json").write_bytes(content)
    store = StateStore(d)
    r = store.load()
    assert r.status == CORRUPT and r.state is None
    assert why in r.detail
    assert (d / "state.json.corrupt").read_bytes() == content
    assert any("corrupt" in m and "start again from 0" in m for m in caplog.messages)


def test_an_unreadable_file_starts_fresh_with_status_unreadable(tmp_path):
    d = tmp_path / "state"
    (d / "state.json").mkdir(parents=True)  # EISDIR: open() fails like a permission or I/O error would
    r = StateStore(d).load()
    assert r.status == UNREADABLE and r.state is None


def test_a_failed_write_is_counted_and_logged_once_and_the_old_file_survives(tmp_path, caplog):
    d = tmp_path / "state"
    store = StateStore(d)
    assert store.write(sample_state())
    before = (d / "state.json").read_bytes()
    os.chmod(d, 0o500)
    try:
        if os.access(d, os.W_OK):  # root ignores the mode: make the directory a file's child instead
            os.chmod(d, 0o700)
            store = StateStore(tmp_path / "state" / "state.json" / "sub")
            store.write(sample_state())
        assert not store.write(sample_state())
        assert not store.write(sample_state())
    finally:
        os.chmod(d, 0o700)
    assert store.status()[1] >= 2
    assert sum("cannot write state file" in m for m in caplog.messages) == 1
    assert (d / "state.json").read_bytes() == before


def test_non_finite_counters_are_refused_on_read():
    raw = b'{"format":"carbonwatch-state","version":1,"saved_at":1,"node_energy_joules":{"gpu":NaN}}'
    with pytest.raises(ValueError, match="node_energy_joules.gpu"):
        parse(raw)


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced: list[tuple[str, bool]] = []  # (what, the file is in place) for each fsync, in order
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, (tmp_path / "state" / "state.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", real_replace)
    assert StateStore(tmp_path / "state").write(sample_state())
    assert synced == [("file", False), ("dir", True)]  # the data, then the renamed entry

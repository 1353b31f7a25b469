"""Shared fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def no_stack_settings_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A stack the developer left running (`make demo`) writes ~/.config/carbonwatch/stack.env, which points
    runs at it. Tests never read it (CARBONWATCH_STACK=none), and stacks started by tests write theirs under
    a temporary XDG_CONFIG_HOME, never the user's (tests of that file set both themselves).

    Nothing a test runs writes into the user's home either: HOME (keras, torch and pip caches), the XDG data
    and cache directories, and the run spool (a test's exporter heartbeat must not switch another test's
    runs, or the developer's, to node mode) point into the session's temporary directory."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARBONWATCH_STACK", "none")
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        mp.setenv("CARBONWATCH_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))
        yield


@pytest.fixture(autouse=True)
def own_runs_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's runs land in a runs file of its own (the default one, under XDG_DATA_HOME), so no test
    writes the user's ~/.local/share/carbonwatch/runs.jsonl and no test sees another's finished runs."""
    data = tmp_path_factory.mktemp("data-home")
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    return data / "carbonwatch" / "runs.jsonl"

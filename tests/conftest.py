"""Shared fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def no_stack_settings_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A stack the developer left running (`make demo`) writes ~/.config/carbonwatch/stack.env, which points
    runs at it. Tests never read it (CARBONWATCH_STACK=none), and stacks started by tests write theirs under
    a temporary XDG_CONFIG_HOME, never the user's (tests of that file set both themselves)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARBONWATCH_STACK", "none")
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
        yield


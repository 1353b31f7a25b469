"""alerting/budgets.yml mistakes: one fixture file per case, each an error naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.budgets import render_file
from carbonwatch.errors import ConfigError
from tests.support import config_error_cases


@pytest.mark.parametrize("path, expect", config_error_cases("budgets"), ids=lambda v: getattr(v, "stem", ""))
def test_every_budgets_mistake_names_the_file_and_the_key(path: Path, expect: str) -> None:
    with pytest.raises(ConfigError) as exc:
        render_file(path)
    assert str(exc.value).startswith(f"{path}: ") and expect in str(exc.value)


def test_the_cli_exits_2_with_that_line(tmp_path: Path) -> None:
    path, expect = config_error_cases("budgets")[0]
    r = subprocess.run([sys.executable, "-m", "carbonwatch", "budgets", "--file", str(path), "--output",
                        str(tmp_path / "out.yml"), "render"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and expect in r.stderr and not (tmp_path / "out.yml").exists()

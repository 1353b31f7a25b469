"""The one way a YAML file is read: every failure is a ConfigError that names the setting (`what`), the file and
what is wrong (unreadable, not UTF-8, not YAML, not a mapping where one is required)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, overload

import yaml

from carbonwatch.errors import ConfigError


@overload
def load(path: str | os.PathLike[str], what: str, mapping: Literal[True] = True) -> dict[str, object]: ...


@overload
def load(path: str | os.PathLike[str], what: str, mapping: bool) -> object: ...


def load(path: str | os.PathLike[str], what: str, mapping: bool = True) -> object:
    """The document in `path`; with `mapping` (default) it must be a mapping (an empty file gives {}), else
    whatever YAML it holds, for the caller to narrow."""
    p = str(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {p!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: {p!r} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {p!r} is not valid YAML: {exc}") from None
    if not mapping:
        return data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {p!r} must hold a mapping at the top level, not {type(data).__name__}")
    return data

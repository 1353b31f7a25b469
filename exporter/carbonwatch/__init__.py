"""carbonwatch: measured, attributed and budgeted energy and CO2 of ML training."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carbonwatch.client.api import run, track

__version__ = "0.1.0"

__all__ = ["__version__", "run", "track"]


def __getattr__(name: str) -> object:
    # The run API is imported lazily so that `import carbonwatch` stays cheap for the exporter.
    if name in ("run", "track"):
        from carbonwatch.client import api

        return getattr(api, name)
    raise AttributeError(f"module 'carbonwatch' has no attribute {name!r}")

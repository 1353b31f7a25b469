"""`carbonwatch run --wait-below`: wait for a cleaner grid before starting."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from carbonwatch.intensity.providers import check_zone


def wait_below(
    grams_per_kwh: float,
    zone: str | None = None,
    max_wait: float = 6 * 3600.0,
    poll: float = 300.0,
    intensity_cfg: Mapping[str, object] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    announce: Callable[[str], None] | None = None,
) -> tuple[bool, float, str]:
    """Wait until the zone's grid intensity is below `grams_per_kwh`, at most `max_wait` seconds.
    Returns (below, last intensity, its source); never raises for an unreachable provider."""
    from carbonwatch.client.settings import resolve as _resolve
    from carbonwatch.intensity.providers import provider_from_config

    s = _resolve({"zone": zone})
    cfg = intensity_cfg if intensity_cfg is not None else s.intensity
    provider = provider_from_config(cfg or None)  # a bad intensity config is a ConfigError, raised here
    check_zone(s.zone, cfg or None)  # never wait on the world average standing in for a mistyped zone
    deadline = time.monotonic() + max_wait
    while True:
        try:
            reading = provider.current(s.zone)
            value, source = float(reading.grams_per_kwh), str(reading.source)
        except Exception as exc:  # an unreachable provider: keep waiting, the deadline still holds
            value, source = math.inf, f"unavailable: {exc}"
        if value < grams_per_kwh:
            return True, value, source
        left = deadline - time.monotonic()
        if left <= 0:
            return False, value, source
        if announce:
            announce(
                f"carbonwatch: grid intensity in {s.zone} is {value:g} g/kWh ({source}), waiting for < "
                f"{grams_per_kwh:g} (up to {left:.0f}s more)"
            )
        sleep(min(poll, left))

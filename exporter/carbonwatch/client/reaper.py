"""Deletes a finished run's Pushgateway group after its retention (started detached by the pusher).

python -m carbonwatch.client.reaper --gateway URL --job JOB --run-id ID --after SECONDS
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from prometheus_client.exposition import delete_from_gateway


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="carbonwatch-reaper")
    p.add_argument("--gateway", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--after", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--attempts", type=int, default=5)
    a = p.parse_args(argv)
    time.sleep(max(0.0, a.after))
    for attempt in range(a.attempts):
        try:
            delete_from_gateway(a.gateway, job=a.job, grouping_key={"run_id": a.run_id}, timeout=a.timeout)
            return 0
        except Exception:
            time.sleep(min(30.0, 2.0**attempt))
    return 1


if __name__ == "__main__":
    sys.exit(main())

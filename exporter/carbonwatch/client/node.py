"""Is a node exporter measuring this node? The run client asks before it starts its own local meter.

A running exporter touches `<spool_dir>/exporter.alive` at least every 5 s (the spool directory is the
one run registrations go to: CARBONWATCH_SPOOL_DIR, default /tmp/carbonwatch-runs). A heartbeat file
younger than `max_age` means the exporter attributes this node's processes to runs, so a second sampler
in the training process would only measure the same joules again.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from carbonwatch.node.registration import HEARTBEAT, spool_dir

HEARTBEAT_FILE = HEARTBEAT
# A heartbeat dated this far in the future (clock steps, NFS skew) still counts as fresh.
FUTURE_TOLERANCE_S = 5.0


def heartbeat_path(spool: str | None = None) -> Path:
    return spool_dir(spool) / HEARTBEAT_FILE


def exporter_alive(
    spool: str | None = None, max_age: float = 15.0, clock: Callable[[], float] = time.time
) -> bool:
    """True when the node exporter's heartbeat file is a regular file touched in the last `max_age` s."""
    try:
        st = os.lstat(heartbeat_path(spool))
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):  # a symlink or directory planted in the shared spool is no heartbeat
        return False
    if st.st_uid not in (0, os.getuid()):  # another user cannot switch off this user's local measurement
        return False
    age = clock() - st.st_mtime
    return -FUTURE_TOLERANCE_S <= age <= max_age

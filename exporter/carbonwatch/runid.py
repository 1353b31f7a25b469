"""The one rule for run ids, shared by the run client, the registration files and the exporter.

A run id is part of the Pushgateway URL (grouping key), of file names and of every run series' labels, so
its alphabet is conservative: 1-128 characters, letters, digits and `_ . : @ + -`, starting with a letter
or digit.
"""

from __future__ import annotations

import re

from carbonwatch.errors import ConfigError

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$")


def validate_run_id(run_id: object, what: str = "run_id") -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"{what}: {run_id!r} is not a valid run id "
            "(1-128 characters: letters, digits and _ . : @ + -, starting with a letter or digit)"
        )
    return run_id

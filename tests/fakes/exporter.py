"""`carbonwatch exporter` over a fake NVML, handed to the exporter's constructors (never named in its config):

    python -m tests.fakes.exporter [--nvml MODULE] EXPORTER-ARGS...

MODULE (default `tests.fakes.fake_nvml`, the real pynvml over the C-library stub configured from
CARBONWATCH_FAKE_NVML) is imported and passed as `nvml` to `carbonwatch.node.exporter.main`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from carbonwatch import cli
from carbonwatch.errors import CarbonwatchError
from carbonwatch.node import exporter

DEFAULT = "tests.fakes.fake_nvml"


def command(nvml: str = DEFAULT) -> list[str]:
    """The argv prefix that starts the exporter over the fake NVML module `nvml`."""
    return [sys.executable, "-m", "tests.fakes.exporter", "--nvml", nvml]


def main(argv: Sequence[str]) -> int:
    args_list = list(argv)
    module = DEFAULT
    if args_list[:1] == ["--nvml"]:
        module, args_list = args_list[1], args_list[2:]
    nvml = importlib.import_module(module)
    args = cli.build_parser(["exporter", *args_list]).parse_args(["exporter", *args_list])
    try:
        return exporter.main(args, nvml=nvml)
    except CarbonwatchError as exc:
        print(f"carbonwatch exporter: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

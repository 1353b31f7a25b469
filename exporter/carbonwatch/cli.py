"""`carbonwatch` command line: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from carbonwatch import __version__
from carbonwatch.errors import CarbonwatchError

# subcommand -> (module, one-line help). Each module has add_arguments(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "exporter": ("carbonwatch.node.exporter", "serve this node's measured and attributed energy on /metrics"),
    "run": ("carbonwatch.client.cli", "track a training command: carbonwatch run [flags] -- CMD ..."),
    "runs": ("carbonwatch.client.runs_cli", "list runs recorded in local mode"),
    "intensity": ("carbonwatch.intensity.cli", "print the grid carbon intensity of a zone and its source"),
    "report": ("carbonwatch.stack.report", "report a run's energy, emissions, cost and budget from Prometheus"),
    "job": ("carbonwatch.stack.job", "a SLURM job's energy, emissions and cost by job id, as sacct prints them"),
    "stack": ("carbonwatch.stack.launcher", "start, stop or inspect the native Prometheus stack"),
    "budgets": ("carbonwatch.budgets", "render alerting/budgets.yml into Prometheus rules"),
    "ledger": ("carbonwatch.ledger.cli", "the run ledger: `ledger serve` keeps it, `ledger export` prints it"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carbonwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"carbonwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the module that runs
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args))
    except CarbonwatchError as exc:  # input (2), device (3) or network (4): one line, no traceback
        print(f"carbonwatch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: run every benchmark in this folder, one after the other, each writing bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["exporter_cost", "client_overhead", "nvml_cost", "rules_accuracy", "rules_cost", "ledger_cost"]


def main() -> int:
    failed = []
    for name in ORDER:
        if not (HERE / f"{name}.py").exists():
            continue
        print(f"\n=== bench.{name}", flush=True)
        r = subprocess.run([sys.executable, "-m", f"bench.{name}", *sys.argv[1:]], cwd=HERE.parent)
        if r.returncode:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Write docs/metrics.md from carbonwatch.contracts: `python -m tools.gen_metrics_doc` (or `make docs`)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "exporter"))

from carbonwatch.contracts import markdown  # noqa: E402

OUT = REPO / "docs" / "metrics.md"


def main() -> int:
    OUT.write_text(markdown())
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

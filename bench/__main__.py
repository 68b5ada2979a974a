"""`python -m bench`: list the benchmarks, or run one (`python -m bench NAME [ARGS...]`).

Each benchmark prints ratios against a baseline measured in the same run, since
absolute times on shared machines mean little.
"""

from __future__ import annotations

import pkgutil
import runpy
import sys
from pathlib import Path


def main() -> None:
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_")
    )
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        print("usage: python -m bench NAME [ARGS...]\n\nbenchmarks:")
        for name in names:
            print(f"  {name}")
        raise SystemExit(0 if len(sys.argv) < 2 else 2)
    name = sys.argv.pop(1)
    sys.argv[0] = f"bench.{name}"
    runpy.run_module(f"bench.{name}", run_name="__main__")


if __name__ == "__main__":
    main()

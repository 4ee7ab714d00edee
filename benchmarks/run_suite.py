"""Run ``jaxdeconv bench`` (the whole suite) and refresh benchmarks/results/bench.{json,md,png}.

Standalone: ``python benchmarks/run_suite.py [jaxdeconv bench options]``, e.g.
``python benchmarks/run_suite.py --quick`` or ``--layers dcgan.up1,fsrcnn --modes fwd``.
Equivalent to ``jaxdeconv bench --out benchmarks/results ...``: unlike the command,
whose default is a new temporary directory, this script writes to the committed
results next to it (an explicit ``--out`` wins).
"""

import sys
from pathlib import Path

from jaxdeconv.tools import bench

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(Path(__file__).resolve().parent / "results")]
    sys.exit(bench.main(args))

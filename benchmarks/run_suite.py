"""Run the layer suite of ``jaxdeconv bench`` and write benchmarks/results/bench.{json,md,png}.

Standalone: ``python benchmarks/run_suite.py [jaxdeconv bench options]``, e.g.
``python benchmarks/run_suite.py --quick`` or ``--layers dcgan,3d_k3 --modes fwd``.
Equivalent to ``jaxdeconv bench --out benchmarks/results ...``.
"""

import sys
from pathlib import Path

from jaxdeconv import _bench

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results"
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", str(out)]
    sys.exit(_bench.main(args))

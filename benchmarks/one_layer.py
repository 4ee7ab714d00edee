"""Time one transposed convolution of your choice, every way, as ``jaxdeconv bench`` does.

Standalone: the layer in PyTorch's terms, then any ``jaxdeconv bench`` option
(``--variants``, ``--modes``, ``--rounds``, ``--timeout``, ...). Example::

    python benchmarks/one_layer.py --input 8,64,64,64 --out-channels 32 --kernel 4 \
        --stride 2 --padding 1 --rounds 5

Same method as the suite (each result checked against PyTorch, compile time and
XLA temporaries recorded, variants interleaved round after round, minimum kept,
ratios to torch, lax and the 2048^3 GEMM); prints the markdown report, and writes
bench.{json,md,png} only with ``--out DIR``.
"""

import argparse
import json
import sys
from pathlib import Path

from jaxdeconv.tools import bench


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other options go to jaxdeconv bench (see jaxdeconv bench --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # --out (for jaxdeconv bench) is no --out-channels
    )
    p.add_argument("--input", default="8,64,64,64", help="N,C_in,*spatial")
    p.add_argument("--out-channels", type=int, default=32)
    p.add_argument("--kernel", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--output-padding", type=int, default=0)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--dilation", type=int, default=1)
    a, rest = p.parse_known_args(argv)
    out = None
    if "--out" in rest:  # files only when asked
        i = rest.index("--out")
        out, rest = Path(rest[i + 1]), rest[:i] + rest[i + 2 :]
    opts = bench.options(rest)
    if isinstance(opts, int):
        return opts
    n, c_in, *size = (int(v) for v in a.input.split(","))
    layer = bench.Layer(
        "one_layer",
        "benchmarks/one_layer.py",
        f"{c_in}->{a.out_channels}, {'x'.join(map(str, size))}, k{a.kernel} s{a.stride} "
        f"p{a.padding} op{a.output_padding} g{a.groups} d{a.dilation}, N{n}",
        n,
        c_in,
        a.out_channels,
        tuple(size),
        a.kernel,
        a.stride,
        a.padding,
        a.output_padding,
        a.groups,
        a.dilation,
    )
    layer.spec()  # PyTorch's argument checks, before anything runs
    opts.argv = sys.argv[1:] if argv is None else list(argv)
    data = bench.run(
        opts, log=lambda s: None if opts.silent else print(s, flush=True), layers=[layer]
    )
    table = bench.markdown(data).replace("`jaxdeconv bench ", "`python benchmarks/one_layer.py ")
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(bench._finite(data), indent=1))
        (out / "bench.md").write_text(table)
        print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How good the cost model's kernel picks are: every candidate kernel, timed.

For each layer (the suite, then layers drawn as in ``random_layers.py``) every forward
kernel and every gradient kernel that may serve it on one CPU device
(``jaxdeconv._cost.candidates``, plus both im2col GEMM layouts) is timed alone, jitted,
interleaved round after round, best kept. The model's pick (``jaxdeconv._cost.choose``
with this machine's figures: built-in, or ``jaxdeconv.calibrate()``'s) is then scored by
its time over the fastest kernel's, per layer and in geomean (depthwise-like layers,
which the planner serves structurally, are left out), separately for the suite and for
each seed, so that a later seed is held out from whatever was fitted to the
earlier ones. With ``--save FILE`` the measured times are appended as JSON lines, and
``--load FILE`` scores a changed model on them without timing again. Nothing is written
unless asked.

    python benchmarks/kernel_picks.py --seeds 11,23,5 --layers 30
    python benchmarks/kernel_picks.py --seeds 23 --layers 40 --channels-last
    python benchmarks/kernel_picks.py --seeds "" --large --no-suite
    python benchmarks/kernel_picks.py --load picks.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib

import numpy as np

from jaxdeconv import _cost, make_spec
from jaxdeconv._plan import ELEMENTWISE_CPU_FORWARD_MAX_OUT_PER_GROUP, elementwise
from jaxdeconv.tools.bench import SUITE, interleaved_minima


def _random_layers():
    """``random_layers.py``, beside this script, as a module (they are not a package)."""
    path = pathlib.Path(__file__).with_name("random_layers.py")
    spec = importlib.util.spec_from_file_location("random_layers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Layers whose GEMM buffers are large (stride 1 and wide kernels on small inputs, 3-d
# decoders: cols of 13-360 MB), where the model's charges for memory traffic and for
# col2im one dimension at a time are tested hardest; group "large" (--large).
LARGE = {
    "L1": ((8, 8, 8, 8, 8), (8, 64, 7, 7, 7), dict(stride=1, padding=1, dilation=2)),
    "L3": ((8, 32, 32, 32), (32, 64, 9, 9), dict(stride=1, padding=4)),
    "L4": ((16, 64, 8, 8), (64, 64, 11, 11), dict(stride=1, padding=0)),
    "L5": ((4, 32, 16, 16, 16), (32, 32, 5, 5, 5), dict(stride=1, padding=2)),
    "L6": ((2, 32, 16, 16, 16), (32, 32, 4, 4, 4), dict(stride=2, padding=1)),
    "L7": ((4, 64, 16, 16, 16), (64, 32, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    "L8": ((8, 64, 2048), (64, 64, 16), dict(stride=1, padding=8)),
    "L9": ((16, 64, 16, 16), (64, 64, 7, 7), dict(stride=1, padding=3)),
    "L10": ((8, 64, 32, 32), (64, 32, 8, 8), dict(stride=4, padding=2)),
    "L11": ((4, 16, 8, 8, 8), (16, 32, 7, 7, 7), dict(stride=1, padding=3)),
    "L12": ((8, 64, 16, 16), (64, 64, 5, 5), dict(stride=1, padding=4, dilation=2)),
    "L13": ((8, 16, 16, 16, 16), (16, 16, 5, 5, 5), dict(stride=1, padding=4, dilation=2)),
    "L14": ((4, 128, 8, 8, 8), (128, 64, 4, 4, 4), dict(stride=2, padding=1)),
    "L15": ((16, 32, 32, 32), (32, 32, 5, 5), dict(stride=1, padding=2)),
}


def layers(seeds, per_seed, channels_last=False, large=False):
    """(group, name, input shape, weight shape, keyword arguments) of every layer."""

    random_layers = _random_layers()

    def layout(xs, ws, kw):
        return random_layers.as_channels_last(xs, ws, kw) if channels_last else (xs, ws, kw)

    for name, layer in SUITE.items():
        spec = layer.spec()
        yield "suite", name, *layout(spec.input_shape, spec.weight_shape, layer.kwargs)
    if large:
        for name, layer in LARGE.items():
            yield "large", name, *layout(*layer)
    for seed in seeds:
        layers = random_layers.drawn(np.random.default_rng(seed), per_seed)
        for done, drawn in enumerate(layers, 1):
            yield f"seed {seed}", f"{seed}.{done}", *layout(*drawn)


def time_kernels(spec, rounds):
    """Seconds of each candidate forward kernel and each gradient kernel pair."""
    f32 = np.float32
    fwd_c, grad_c = _cost.candidates(spec, f32)
    cols = _cost.cols_kernels(spec) if _cost.gemm_applies(spec, f32) else ()
    fwd_c = tuple(dict.fromkeys((*fwd_c, *cols)))
    grad_c = tuple(dict.fromkeys((*grad_c, *cols)))
    calls = _cost.kernel_calls(spec, f32, fwd_c, grad_c)
    return {f"{which}:{k}": t for (which, k), t in interleaved_minima(calls, rounds).items()}


def score(rows):
    """Per group and pass: the picks' time over the fastest kernel's."""
    losses = {}
    for row in rows:
        spec = make_spec(row["input"], row["weight"], **row["kwargs"])
        if elementwise(spec, ELEMENTWISE_CPU_FORWARD_MAX_OUT_PER_GROUP):
            continue  # depthwise-like: planned structurally, not by the model
        picks = _cost.choose(spec, np.float32)[:2]
        row["picks"] = picks
        for which, pick in zip(("forward", "grads"), picks):
            times = {k.split(":")[1]: t for k, t in row["times"].items() if k.startswith(which)}
            if pick in times:
                loss = times[pick] / min(times.values())
                losses.setdefault((row["group"], which), []).append((loss, row["name"], pick))
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="11,23,5", help="comma-separated draw seeds")
    ap.add_argument("--layers", type=int, default=30, help="random layers per seed")
    ap.add_argument("--no-suite", action="store_true")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--channels-last", action="store_true", help="the layers channels-last")
    ap.add_argument("--large", action="store_true", help="also the large-buffer layers (LARGE)")
    ap.add_argument("--save", help="append the measured times to this JSON-lines file")
    ap.add_argument("--load", help="score the model on times saved by --save; time nothing")
    opts = ap.parse_args()
    if opts.load:
        rows = [json.loads(line) for line in pathlib.Path(opts.load).read_text().splitlines()]
    else:
        rows = []
        seeds = [int(s) for s in opts.seeds.split(",") if s]
        for group, name, xs, ws, kw in layers(seeds, opts.layers, opts.channels_last, opts.large):
            if opts.no_suite and group == "suite":
                continue
            spec = make_spec(xs, ws, **kw)
            if spec.batch == 0:
                continue
            times = time_kernels(spec, opts.rounds)
            row = dict(group=group, name=name, input=list(xs), weight=list(ws), kwargs=kw)
            row["times"] = times
            rows.append(row)
            shown = " ".join(f"{k} {1e3 * t:.2f}" for k, t in times.items())
            print(f"{name}: {shown} (ms)", flush=True)
            if opts.save:
                with open(opts.save, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"\nthe model's picks ({_cost.machine().source}), time over the fastest kernel's:")
    for (group, which), v in score(rows).items():
        g = math.exp(sum(math.log(loss) for loss, *_ in v) / len(v))
        worst = max(v)
        print(
            f"{group:10s} {which:8s} geomean {g:.3f}x over {len(v)} layers, "
            f"over 1.15x on {sum(loss > 1.15 for loss, *_ in v)}, "
            f"worst {worst[0]:.2f}x ({worst[1]}, picked {worst[2]})"
        )


if __name__ == "__main__":
    main()

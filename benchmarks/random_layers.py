"""`method="auto"` against torch and lax on random layers nobody tuned for.

The 30-layer suite (`jaxdeconv bench`) is what the planner is measured on; this draws
layers at random (rank 1-3, kernel 2-8, stride 1-4, dilation, padding, output_padding,
groups, channels 1-256, batch 1-16) so that a planner fitted to the suite shows itself.
Per layer it prints the plan and the forward and forward+backward times of `auto`,
`lhs_dilated` (lax's conv_transpose) and torch, timed interleaved round after round,
best kept, and the geomeans at the end. With ``--channels-last`` the JAX variants run
channels-last (``[N, *spatial, C]``, as Flax and Keras models are) against torch's
channels-first. With ``--depthwise`` every layer is made depthwise (one input channel per
group, 1-4 outputs per group) and timed against torch alone: lax's grouped convolutions
run 100-1000x slower there (``jaxdeconv bench``'s ``depthwise.bilinear``). With
``--compile`` nothing is timed but the first compile of each program: `auto`'s compile
seconds and XLA's temporary bytes against `lhs_dilated`'s, forward and forward+backward
(issue 13's targets: at most 2x on every layer). Nothing is written to disk.

    python benchmarks/random_layers.py --seed 11 --layers 30
    python benchmarks/random_layers.py --seed 7 --layers 20 --depthwise
    python benchmarks/random_layers.py --seed 67 --layers 30 --compile
"""

from __future__ import annotations

import argparse
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxdeconv
from jaxdeconv.tools.bench import interleaved_minima


def draw(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...], dict] | None:
    """One random layer: (input shape, weight shape, keyword arguments), or None."""
    nd = int(rng.choice([1, 2, 2, 2, 3]))
    k = int(rng.choice([2, 3, 4, 5, 7, 8]))
    s = min(int(rng.choice([1, 2, 2, 3, 4])), k)
    ci = int(rng.choice([8, 16, 32, 64, 128, 256]))
    co = int(rng.choice([1, 3, 16, 32, 64, 128]))
    groups = 4 if rng.random() < 0.15 and ci % 4 == 0 and co % 4 == 0 else 1
    size = int(rng.choice({1: [64, 256, 1024], 2: [4, 8, 16, 32], 3: [4, 8, 12]}[nd]))
    n = int(rng.choice([1, 4, 8, 16]))
    d = 1 if rng.random() < 0.85 else 2
    p = int(rng.integers(0, k // 2 + 1))
    op = int(rng.integers(0, s)) if s > 1 else 0
    kw = dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)
    out = [(size - 1) * s - 2 * p + d * (k - 1) + op + 1] * nd
    if min(out) < 1 or op >= max(s, d):
        return None
    flops = 2 * n * ci * (co // groups) * k**nd * size**nd
    if n * co * math.prod(out) * 4 > 5e7 or flops > 4e9:  # keep each layer under ~1 s
        return None
    return (n, ci, *[size] * nd), (ci, co // groups, *[k] * nd), kw


def as_depthwise(layer, rng: np.random.Generator):
    """``layer`` (from :func:`draw`) made depthwise: ``groups = C_in``, 1-4 outputs per
    group; None if its output would be too large."""
    (n, ci, *sp), (_, _, *k), kw = layer
    m = int(rng.choice([1, 1, 1, 2, 4]))
    s, p, op, d = (kw[a] for a in ("stride", "padding", "output_padding", "dilation"))
    out = [(size - 1) * s - 2 * p + d * (kk - 1) + op + 1 for size, kk in zip(sp, k)]
    if n * ci * m * math.prod(out) * 4 > 5e7:
        return None
    return (n, ci, *sp), (ci, m, *k), {**kw, "groups": ci}


def time_layer(rng, xs, ws, kw, rounds, channels_last=False, baselines=("lax", "torch")):
    """Best times of auto, lax and torch, forward and forward+backward, on one layer.

    Returns the JAX operands (channels-last ones with ``channels_last``), their keyword
    arguments and the times."""
    import torch

    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
    tfn = getattr(torch.nn.functional, f"conv_transpose{len(xs) - 2}d")
    xt, wt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(w))
    if channels_last:
        x, w = jnp.moveaxis(x, 1, -1), jnp.moveaxis(w, (0, 1), (-2, -1))
        kw_jax = {**kw, "channels_last": True}
    else:
        kw_jax = kw
    xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

    def jax_calls(method):
        def y(x, w):
            return jaxdeconv.conv_transpose(x, w, **kw_jax, method=method)

        f = jax.jit(y)
        g = jax.jit(jax.grad(lambda x, w: jnp.sum(y(x, w) ** 2), (0, 1)))
        return lambda: jax.block_until_ready(f(x, w)), lambda: jax.block_until_ready(g(x, w))

    def torch_fwd():
        with torch.no_grad():
            tfn(xt, wt, **kw)

    def torch_fwd_bwd():
        xg.grad = wg.grad = None
        (tfn(xg, wg, **kw) ** 2).sum().backward()

    auto = jax_calls("auto")
    lax_ = jax_calls("lhs_dilated") if "lax" in baselines else None
    calls = {"auto fwd": auto[0]}
    if lax_:
        calls["lax fwd"] = lax_[0]
    calls["torch fwd"] = torch_fwd
    calls["auto fwd+bwd"] = auto[1]
    if lax_:
        calls["lax fwd+bwd"] = lax_[1]
    calls["torch fwd+bwd"] = torch_fwd_bwd
    return x, w, kw_jax, interleaved_minima(calls, rounds)


def compile_layer(xs, ws, kw, channels_last=False):
    """``{(method, mode): (compile seconds, temporary bytes)}`` of `auto` and
    `lhs_dilated`, forward (``"fwd"``) and forward+backward (``"fwd+bwd"``), each
    program compiled once from scratch (a new function, so no cache is reused)."""
    import time

    if channels_last:
        xs, ws, kw = as_channels_last(xs, ws, kw)
    x, w = jnp.ones(xs, jnp.float32), jnp.ones(ws, jnp.float32)
    out = {}
    for method in ("auto", "lhs_dilated"):

        def y(x, w, method=method):
            return jaxdeconv.conv_transpose(x, w, **kw, method=method)

        def loss(x, w, y=y):
            return jnp.sum(y(x, w) ** 2)

        for mode, fn in (("fwd", y), ("fwd+bwd", jax.grad(loss, (0, 1)))):
            lowered = jax.jit(fn).lower(x, w)
            start = time.perf_counter()
            compiled = lowered.compile()
            out[method, mode] = (
                time.perf_counter() - start,
                compiled.memory_analysis().temp_size_in_bytes,
            )
    return out


def drawn(rng: np.random.Generator, count: int, depthwise: bool = False):
    """``count`` layers drawn from ``rng`` (:func:`draw`; each made depthwise with
    ``depthwise``)."""
    done = 0
    while done < count:
        layer = draw(rng)
        if layer is not None and depthwise:
            layer = as_depthwise(layer, rng)
        if layer is not None:
            done += 1
            yield layer


def as_channels_last(xs, ws, kw):
    """A drawn layer's shapes and arguments channels-last: ``[N, *spatial, C_in]`` and
    ``[*kernel, C_in, C_out / groups]``."""
    return (xs[0], *xs[2:], xs[1]), (*ws[2:], ws[0], ws[1]), {**kw, "channels_last": True}


def _compile_main(opts, rng) -> None:
    ratios: dict[str, list[float]] = {}
    for xs, ws, kw in drawn(rng, opts.layers, opts.depthwise):
        c = compile_layer(xs, ws, kw, opts.channels_last)
        row = []
        for mode in ("fwd", "fwd+bwd"):
            (ca, ma), (cl, ml) = c["auto", mode], c["lhs_dilated", mode]
            ratios.setdefault(f"{mode} compile x lax", []).append(ca / cl)
            ratios.setdefault(f"{mode} temp x lax", []).append((ma + 1) / (ml + 1))
            row.append(f"{mode} {ca:.2f}/{cl:.2f} s, {ma / 2**20:.1f}/{ml / 2**20:.1f} MiB")
        label = jaxdeconv.plan(jnp.ones(xs), jnp.ones(ws), **kw).label
        print(f"{xs} <- {ws} {kw}: auto/lax {'; '.join(row)} [{label}]", flush=True)
    print()
    for key, v in ratios.items():
        g = math.exp(sum(map(math.log, v)) / len(v))
        high = sum(r > 2 for r in v)
        print(f"{key}: geomean {g:.2f}x, max {max(v):.2f}x, over 2x on {high} of {len(v)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--channels-last", action="store_true", help="JAX variants channels-last (torch: NCHW)"
    )
    ap.add_argument(
        "--depthwise", action="store_true", help="depthwise layers, against torch alone"
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="compile time and temporary memory against lax's, nothing timed",
    )
    opts = ap.parse_args()
    if opts.compile:
        return _compile_main(opts, np.random.default_rng(opts.seed))
    baselines = ("torch",) if opts.depthwise else ("torch", "lax")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(opts.seed)
    ratios: dict[str, list[float]] = {}
    for xs, ws, kw in drawn(rng, opts.layers, opts.depthwise):
        x, w, kw_jax, t = time_layer(rng, xs, ws, kw, opts.rounds, opts.channels_last, baselines)
        row = []
        for mode in ("fwd", "fwd+bwd"):
            for base in baselines:
                r = t[f"{base} {mode}"] / t[f"auto {mode}"]
                ratios.setdefault(f"{mode} x {base}", []).append(r)
                row.append(f"{mode} {r:.2f}x {base}")
        label = jaxdeconv.plan(x, w, **kw_jax).label
        print(f"{xs} <- {ws} {kw}: auto {1e3 * t['auto fwd']:.2f} ms; {', '.join(row)} [{label}]")
    print()
    for key, v in ratios.items():
        g = math.exp(sum(map(math.log, v)) / len(v))
        low = sum(r < 0.9 for r in v)
        print(f"{key}: geomean {g:.2f}x, min {min(v):.2f}x, below 0.9x on {low} of {len(v)}")


if __name__ == "__main__":
    main()

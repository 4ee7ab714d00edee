"""``jaxdeconv bench``: time transposed convolutions of real layers, every way.

For each layer of a suite (DCGAN, U-Net, VAE decoder, k3 s2 p1 op1, 1-d vocoder,
3-d, depthwise, dilated), forward and forward+backward (gradients of input and
weight of ``sum(y**2)``) are timed for every jaxdeconv formulation and
``method="auto"``, ``lax.conv_transpose(transpose_kernel=True)`` and its JAX
autodiff, Flax's and Equinox's ``ConvTranspose`` and PyTorch (CPU) where installed.
Each result is checked against PyTorch (or, without it, the NumPy definition)
before it is timed. Reported: median time, GF/s of useful FLOPs
(``spec.flops``, three times that for forward+backward), the fraction of a
2048x2048 float32 GEMM's GF/s measured in the same run, compile time and XLA's
peak temporary memory. Writes ``bench.json``, ``bench.md`` and ``bench.png``
(matplotlib) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._api import conv_transpose, plan
from .._layout import flipped_kernel
from .._reference import numpy_conv_transpose
from .._spec import ConvTransposeSpec, make_spec
from ..formulations import FORMULATIONS

__all__ = ["LAYERS", "Layer", "main", "run"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One transposed-convolution layer, in PyTorch's terms (NCHW, torch weight)."""

    name: str
    what: str
    batch: int
    in_channels: int
    out_channels: int
    size: tuple[int, ...]
    kernel: int
    stride: int
    padding: int = 0
    output_padding: int = 0
    groups: int = 1
    dilation: int = 1

    def tiny(self) -> Layer:
        """The same arguments on a miniature input (for tests and smoke runs)."""
        g = 1 if self.groups == 1 else 2
        return dataclasses.replace(
            self,
            batch=1,
            in_channels=2 * g,
            out_channels=2 * g if self.groups > 1 else 3,
            groups=g,
            size=tuple(min(s, 5) for s in self.size),
        )

    def spec(self) -> ConvTransposeSpec:
        return make_spec(
            (self.batch, self.in_channels, *self.size),
            (self.in_channels, self.out_channels // self.groups, *(self.kernel,) * len(self.size)),
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            groups=self.groups,
            dilation=self.dilation,
        )


LAYERS = {
    layer.name: layer
    for layer in [
        Layer("dcgan", "DCGAN generator 512->256, 4x4, k4 s2 p1", 16, 512, 256, (4, 4), 4, 2, 1),
        Layer(
            "dcgan_late", "DCGAN generator 64->32, 64x64, k4 s2 p1", 8, 64, 32, (64, 64), 4, 2, 1
        ),
        Layer("unet", "U-Net up-sampling 128->64, 64x64, k2 s2", 8, 128, 64, (64, 64), 2, 2),
        Layer("vae", "VAE decoder 128->64, 16x16, k4 s2 p1", 16, 128, 64, (16, 16), 4, 2, 1),
        Layer("k3_op1", "256->128, 32x32, k3 s2 p1 op1", 8, 256, 128, (32, 32), 3, 2, 1, 1),
        Layer("vocoder", "1-d vocoder 512->256, L128, k16 s8 p4", 4, 512, 256, (128,), 16, 8, 4),
        Layer("3d_k2", "3-d 32->16, 16^3, k2 s2", 2, 32, 16, (16, 16, 16), 2, 2),
        Layer("3d_k3", "3-d 32->16, 16^3, k3 s2 p1 op1", 2, 32, 16, (16, 16, 16), 3, 2, 1, 1),
        Layer(
            "depthwise", "depthwise 128 ch, 32x32, k4 s2 p1", 8, 128, 128, (32, 32), 4, 2, 1, 0, 128
        ),
        Layer("dilated", "64->32, 32x32, k3 s2 d3 p3 op1", 8, 64, 32, (32, 32), 3, 2, 3, 1, 1, 3),
    ]
}
"""The suite, by name."""

GEMM_SIZE = 2048
TOLERANCE = 2e-3  # max|y - ref| / max|ref|, float32


# ----------------------------------------------------------------------------- timing


def _block(out):
    return jax.block_until_ready(out)


def _measure(fn: Callable[[], Any], min_time: float, max_reps: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` over at least 1 and at most ``max_reps`` calls."""
    times: list[float] = []
    while len(times) < max_reps and (sum(times) < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > 2 * min_time:  # a slow one: one timed call is enough
            break
    return statistics.median(times), len(times)


def _gemm_gflops(min_time: float, max_reps: int) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((GEMM_SIZE, GEMM_SIZE)), jnp.float32)
    f = jax.jit(jnp.dot)
    _block(f(a, a))
    t, _ = _measure(lambda: _block(f(a, a)), min_time, max_reps)
    return 2 * GEMM_SIZE**3 / t / 1e9


def _rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return math.inf
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


# ----------------------------------------------------------------------------- implementations


def _lax_fn(layer: Layer, spec: ConvTransposeSpec):
    """``lax.conv_transpose(transpose_kernel=True)`` on torch's layout, or None (groups)."""
    if layer.groups != 1:
        return None
    n = spec.ndim
    sp = "DHW"[-n:]
    dn = ("NC" + sp, "OI" + sp, "NC" + sp)

    def f(x, w):
        return jax.lax.conv_transpose(
            x,
            w,
            spec.stride,
            spec.lhs_dilated_padding,
            rhs_dilation=spec.dilation,
            dimension_numbers=dn,
            transpose_kernel=True,
        )

    return f


def _flax_fn(layer: Layer, spec: ConvTransposeSpec):
    """Flax ``ConvTranspose`` on its native channels-last layout, or None."""
    if layer.groups != 1:
        return None, None
    try:
        import flax.linen as nn
    except ImportError:
        return None, None
    n = spec.ndim
    mod = nn.ConvTranspose(
        features=layer.out_channels,
        kernel_size=spec.kernel_size,
        strides=spec.stride,
        padding=spec.lhs_dilated_padding,
        kernel_dilation=spec.dilation,
        use_bias=False,
        transpose_kernel=True,
    )

    def prep(x, w):  # torch layout -> flax's
        kernel = jnp.moveaxis(w, (0, 1), (-1, -2))  # [*k, C_out, C_in]
        return jnp.moveaxis(x, 1, -1), kernel

    def f(x_cl, kernel):
        return mod.apply({"params": {"kernel": kernel}}, x_cl)

    def post(y):
        return jnp.moveaxis(y, -1, 1)

    del n
    return (prep, f, post), "flax " + _version("flax")


def _equinox_fn(layer: Layer, spec: ConvTransposeSpec):
    try:
        import equinox as eqx
    except ImportError:
        return None, None
    mod = eqx.nn.ConvTranspose(
        spec.ndim,
        layer.in_channels,
        layer.out_channels,
        layer.kernel,
        stride=layer.stride,
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation=layer.dilation,
        groups=layer.groups,
        use_bias=False,
        key=jax.random.PRNGKey(0),
    )

    def prep(x, w):
        return x, flipped_kernel(w, spec.groups, channels_last=spec.channels_last)

    def f(x, kernel):
        m = eqx.tree_at(lambda m: m.weight, mod, kernel)
        return jax.vmap(m)(x)

    return (prep, f, lambda y: y), "equinox " + _version("equinox")


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def _torch_fns(layer: Layer, spec: ConvTransposeSpec, x: np.ndarray, w: np.ndarray):
    try:
        import torch
    except ImportError:
        return None
    fn = getattr(torch.nn.functional, f"conv_transpose{spec.ndim}d")
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)

    def fwd():
        with torch.no_grad():
            return fn(xt, wt, **layer.kwargs)

    xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

    def fwd_bwd():
        xg.grad = wg.grad = None
        y = fn(xg, wg, **layer.kwargs)
        (y * y).sum().backward()
        return xg.grad, wg.grad

    return fwd, fwd_bwd


# ----------------------------------------------------------------------------- one layer


def _bench_layer(layer, opts, broken, log) -> dict[str, Any]:
    spec = layer.spec()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = (rng.standard_normal(spec.weight_shape) / math.sqrt(spec.in_channels)).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    torch_fns = _torch_fns(layer, spec, x, w) if "torch" in opts.baselines else None
    # References: PyTorch when installed, else the NumPy definition / float64 jax.
    if torch_fns is not None:
        ref_y = torch_fns[0]().numpy()
        ref_g = tuple(t.numpy() for t in torch_fns[1]())
    else:
        ref_y = numpy_conv_transpose(x, w, **layer.kwargs)
        ref_g = jax.grad(
            lambda x, w: jnp.sum(conv_transpose(x, w, method="vjp", **layer.kwargs) ** 2), (0, 1)
        )(xj, wj)
    chosen = plan(
        jax.ShapeDtypeStruct(spec.input_shape, np.float32),
        jax.ShapeDtypeStruct(spec.weight_shape, np.float32),
        **layer.kwargs,
    )
    auto = chosen.formulation
    impls: list[tuple[str, Callable, Callable, Callable]] = []  # name, prep, f, post
    ident = lambda y: y  # noqa: E731
    pair = lambda x, w: (x, w)  # noqa: E731
    for m in ["auto", *FORMULATIONS]:
        if m in opts.methods or (m == "auto" and "auto" in opts.methods):
            name = f"jaxdeconv:{m}" if m != "auto" else f"jaxdeconv:auto({auto})"
            impls.append(
                (
                    name,
                    pair,
                    lambda x, w, m=m: conv_transpose(x, w, method=m, **layer.kwargs),
                    ident,
                )
            )
    if "lax" in opts.baselines and (f := _lax_fn(layer, spec)) is not None:
        impls.append(("lax.conv_transpose", pair, f, ident))
    for key, make in (("flax", _flax_fn), ("equinox", _equinox_fn)):
        if key in opts.baselines:
            fns, _ = make(layer, spec)
            if fns is not None:
                impls.append((key, *fns))

    results = []

    def record(impl, mode, t, reps, compile_s, peak, err):
        flops = spec.flops * (3 if mode == "fwd+bwd" else 1)
        gf = flops / t / 1e9
        results.append(
            dict(
                impl=impl,
                mode=mode,
                median_ms=t * 1e3,
                gflops=gf,
                frac_gemm=gf / opts.gemm_gflops,
                compile_s=compile_s,
                peak_bytes=peak,
                max_rel_err=err,
                reps=reps,
            )
        )
        log(f"  {mode:<8} {impl:<28} {t * 1e3:9.2f} ms {gf:7.1f} GF/s  err {err:.1e}")

    for name, prep, f, post in impls:
        args = prep(xj, wj)

        def fwd(x, w, f=f, post=post):
            return post(f(x, w))

        def fwd_bwd(xx, ww, prep=prep, f=f, post=post):
            def loss(x, w):
                y = post(f(*prep(x, w)))
                return jnp.sum(y * y)

            return jax.grad(loss, (0, 1))(xx, ww)

        for mode, fn, fargs, ref in (
            ("fwd", fwd, args, (ref_y,)),
            ("fwd+bwd", fwd_bwd, (xj, wj), ref_g),
        ):
            if mode not in opts.modes:
                continue
            method = name.split(":")[1].split("(")[-1].rstrip(")") if ":" in name else None
            if mode == "fwd+bwd" and method in broken:
                log(f"  {mode:<8} {name:<28} skipped: jitted gradient aborts XLA ({method})")
                continue
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(*fargs).compile()
            compile_s = time.perf_counter() - t0
            peak = None
            try:
                mem = compiled.memory_analysis()
                peak = int(mem.temp_size_in_bytes + mem.output_size_in_bytes)
            except Exception:  # not every backend reports it
                pass
            out = _block(compiled(*fargs))
            outs = out if isinstance(out, tuple) else (out,)
            err = max(_rel_err(o, r) for o, r in zip(outs, ref))
            if not err <= TOLERANCE:
                log(f"  {mode:<8} {name:<28} WRONG: relative error {err:.2e}; not timed")
                results.append(dict(impl=name, mode=mode, error=f"relative error {err:.2e}"))
                continue
            t, reps = _measure(lambda c=compiled, a=fargs: _block(c(*a)), opts.min_time, opts.reps)
            record(name, mode, t, reps, compile_s, peak, err)
    if torch_fns is not None:
        import torch

        torch.set_num_threads(opts.threads)
        for mode, fn in zip(("fwd", "fwd+bwd"), torch_fns):
            if mode in opts.modes:
                fn()
                t, reps = _measure(fn, opts.min_time, opts.reps)
                record("torch", mode, t, reps, None, None, 0.0)
    return dict(
        name=layer.name,
        what=layer.what,
        layer=dataclasses.asdict(layer),
        flops=spec.flops,
        auto=auto,
        lowering=chosen.label,
        results=results,
    )


# ----------------------------------------------------------------------------- report


def _geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _time_of(layer, impl_prefix, mode):
    for r in layer["results"]:
        if r["impl"].startswith(impl_prefix) and r["mode"] == mode and "median_ms" in r:
            return r["median_ms"]
    return None


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Targets of issue 4 as ratios measured in this run."""
    out: dict[str, Any] = {}
    for mode in ("fwd", "fwd+bwd"):
        vs_lax, vs_torch = [], []
        slower_than_lax, slower_than_torch = [], []
        for layer in data["layers"]:
            a = _time_of(layer, "jaxdeconv:auto", mode)
            lax_t = _time_of(layer, "lax.conv_transpose", mode)
            torch_t = _time_of(layer, "torch", mode)
            if a and lax_t:
                vs_lax.append(lax_t / a)
                if a > lax_t:
                    slower_than_lax.append(layer["name"])
            if a and torch_t:
                vs_torch.append(torch_t / a)
                if a > torch_t:
                    slower_than_torch.append(layer["name"])
        out[mode] = dict(
            auto_speedup_vs_lax_geomean=_geomean(vs_lax),
            auto_speedup_vs_torch_geomean=_geomean(vs_torch),
            layers_slower_than_lax=slower_than_lax,
            layers_slower_than_torch=slower_than_torch,
        )
    compute_bound = {}
    for layer in data["layers"]:
        if layer["flops"] > 1e9:
            for r in layer["results"]:
                if r["impl"].startswith("jaxdeconv:auto") and r["mode"] == "fwd" and "gflops" in r:
                    compute_bound[layer["name"]] = r["frac_gemm"]
    out["compute_bound_fwd_frac_gemm"] = compute_bound
    return out


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def markdown(data: dict[str, Any]) -> str:
    impls: list[str] = []
    for layer in data["layers"]:
        for r in layer["results"]:
            name = "jaxdeconv:auto" if r["impl"].startswith("jaxdeconv:auto") else r["impl"]
            if name not in impls:
                impls.append(name)
    lines = [
        f"Median ms (float32; {data['machine']}; jax {data['jax']}, torch {data['torch']}; "
        f"GEMM {GEMM_SIZE}x{GEMM_SIZE}: {data['gemm_gflops']:.0f} GF/s in this run). "
        "`auto` column: ms, GF/s of useful FLOPs, % of the GEMM's GF/s.",
        "",
    ]
    for mode in ("fwd", "fwd+bwd"):
        lines.append(f"**{'forward' if mode == 'fwd' else 'forward + backward (d/dx, d/dw)'}**")
        lines.append("")
        cols = [c.replace("jaxdeconv:", "") for c in impls]
        lines.append("| layer | auto picks | " + " | ".join(cols) + " |")
        lines.append("|---|---|" + "---|" * len(cols))
        for layer in data["layers"]:
            cells = []
            for impl in impls:
                r = next(
                    (
                        r
                        for r in layer["results"]
                        if r["mode"] == mode
                        and (
                            r["impl"] == impl or (impl == "jaxdeconv:auto" and "auto(" in r["impl"])
                        )
                    ),
                    None,
                )
                if r is None:
                    cells.append("n/a")
                elif "error" in r:
                    cells.append("wrong")
                elif impl == "jaxdeconv:auto":
                    cells.append(
                        f"**{r['median_ms']:.1f}** ({r['gflops']:.0f} GF/s, "
                        f"{100 * r['frac_gemm']:.0f}%)"
                    )
                else:
                    cells.append(f"{r['median_ms']:.1f}")
            picks = layer.get("lowering") or layer["auto"]
            lines.append(f"| {layer['what']} | {picks} | " + " | ".join(cells) + " |")
        lines.append("")
    s = data["summary"]
    lines.append("**Targets** (ratios > 1: auto is faster)")
    lines.append("")
    for mode in ("fwd", "fwd+bwd"):
        m = s[mode]
        lines.append(
            f"- {mode}: auto vs lax geomean {_fmt(m['auto_speedup_vs_lax_geomean'], '.2f')}x, "
            f"vs torch geomean {_fmt(m['auto_speedup_vs_torch_geomean'], '.2f')}x; "
            f"slower than lax on: {', '.join(m['layers_slower_than_lax']) or 'none'}; "
            f"slower than torch on: {', '.join(m['layers_slower_than_torch']) or 'none'}"
        )
    cb = s["compute_bound_fwd_frac_gemm"]
    lines.append(
        "- compute-bound layers (> 1 GFLOP), auto forward as % of GEMM GF/s: "
        + (", ".join(f"{k} {100 * v:.0f}%" for k, v in cb.items()) or "none in this run")
    )
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    names = [layer["name"] for layer in data["layers"]]
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        impls = []
        for layer in data["layers"]:
            for r in layer["results"]:
                if r["mode"] == mode and "median_ms" in r and r["impl"] not in impls:
                    impls.append(r["impl"] if "auto(" not in r["impl"] else "jaxdeconv:auto")
        impls = list(dict.fromkeys(impls))
        width = 0.8 / max(len(impls), 1)
        for i, impl in enumerate(impls):
            ys = []
            for layer in data["layers"]:
                prefix = "jaxdeconv:auto" if impl == "jaxdeconv:auto" else impl
                t = next(
                    (
                        r["median_ms"]
                        for r in layer["results"]
                        if r["mode"] == mode
                        and "median_ms" in r
                        and (r["impl"] == impl or r["impl"].startswith(prefix + "("))
                    ),
                    np.nan,
                )
                ys.append(t)
            ax.bar(
                np.arange(len(names)) + i * width, ys, width, label=impl.replace("jaxdeconv:", "")
            )
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("median ms (log)")
        ax.set_title("forward" if mode == "fwd" else "forward + backward")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- driver


def run(opts) -> dict[str, Any]:
    log = (lambda s: print(s, flush=True)) if not opts.silent else (lambda s: None)
    broken: set[str] = set()
    opts.gemm_gflops = _gemm_gflops(opts.min_time, opts.reps)
    log(f"GEMM {GEMM_SIZE}x{GEMM_SIZE} float32: {opts.gemm_gflops:.1f} GF/s")
    layers = []
    for name in opts.layers:
        layer = LAYERS[name].tiny() if opts.tiny else LAYERS[name]
        log(f"{layer.name}: {layer.what}{' (tiny)' if opts.tiny else ''}")
        layers.append(_bench_layer(layer, opts, broken, log))
    data = dict(
        machine=f"{platform.machine()} {platform.processor() or ''} x{_cpus()} CPUs".replace(
            "  ", " "
        ),
        backend=jax.default_backend(),
        jax=jax.__version__,
        torch=_version("torch"),
        flax=_version("flax"),
        equinox=_version("equinox"),
        command="jaxdeconv bench " + " ".join(opts.argv),
        gemm_gflops=opts.gemm_gflops,
        tiny=opts.tiny,
        broken_gradients=sorted(broken),
        layers=layers,
    )
    data["summary"] = summarize(data)
    return data


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxdeconv bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (min 0.2 s, <= 5)")
    p.add_argument("--tiny", action="store_true", help="miniature inputs (a smoke test)")
    p.add_argument(
        "--layers", default=",".join(LAYERS), help=f"comma-separated, from {', '.join(LAYERS)}"
    )
    p.add_argument(
        "--methods",
        default=",".join(["auto", *FORMULATIONS]),
        help="jaxdeconv methods to time (default: auto and every formulation)",
    )
    p.add_argument(
        "--baselines", default="lax,flax,equinox,torch", help="comma-separated baselines"
    )
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd, fwd+bwd or both")
    p.add_argument("--out", default="benchmarks/results", help="directory for bench.{json,md,png}")
    p.add_argument("--reps", type=int, default=None, help="max timed repetitions")
    p.add_argument("--min-time", type=float, default=None, help="min seconds of timed calls")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: CPUs)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--silent", action="store_true")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = _parser().parse_args(argv)
    opts.argv = argv
    opts.layers = [s for s in opts.layers.split(",") if s]
    unknown = [s for s in opts.layers if s not in LAYERS]
    if unknown:
        print(f"jaxdeconv bench: unknown layers {unknown}; known: {list(LAYERS)}", file=sys.stderr)
        return 2
    opts.methods = [s for s in opts.methods.split(",") if s]
    bad = [m for m in opts.methods if m != "auto" and m not in FORMULATIONS]
    if bad:
        print(f"jaxdeconv bench: unknown methods {bad}", file=sys.stderr)
        return 2
    opts.baselines = [s for s in opts.baselines.split(",") if s]
    opts.modes = [s for s in opts.modes.split(",") if s]
    opts.reps = opts.reps or (5 if opts.quick else 15)
    opts.min_time = opts.min_time if opts.min_time is not None else (0.2 if opts.quick else 1.0)
    opts.threads = opts.threads or _cpus()
    data = run(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(data, indent=1))
    table = markdown(data)
    (out / "bench.md").write_text(f"`{data['command']}`\n\n{table}")
    if not opts.no_plot:
        plot(data, out / "bench.png")
    if not opts.silent:
        print(table)
        print(
            f"wrote {out / 'bench.json'}, {out / 'bench.md'}"
            + ("" if opts.no_plot else f", {out / 'bench.png'}")
        )
    wrong = [
        (layer["name"], r["impl"], r["mode"])
        for layer in data["layers"]
        for r in layer["results"]
        if "error" in r
    ]
    if wrong:
        print(f"jaxdeconv bench: wrong results: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

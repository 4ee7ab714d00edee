"""``jaxdeconv bench``: time transposed convolutions of real models' layers, every way.

The suite (``SUITE``, 30 layers) is every transposed convolution of the DCGAN
generator, HiFi-GAN V1's up-samplers, U-Net and 3-d U-Net decoders, FSRCNN, an
ESPCN head, a VAE decoder, TensorFlow's MNIST DCGAN, FCN-8s, grouped, depthwise and
dilated layers, batch 1 and large batch, and the 3-d kernel-16 stride-16 layer of
PyTorch's test suite; each named by its source model, some shrunk (batch or size)
to keep the suite to minutes on a small CPU (their ``what`` says so).

For each layer, forward and forward+backward (gradients of ``sum(y**2)`` with
respect to input and weight) run for every variant: each jaxdeconv formulation
and ``method="auto"``, ``lax.conv_transpose(transpose_kernel=True)`` and its JAX
autodiff, PyTorch (CPU, as many threads as cores) and, on request, Flax's and
Equinox's layers. Each result is checked against PyTorch (or the NumPy
definition) first; compile time (``jit(f).lower(...).compile()``) and XLA's
temporary-buffer bytes (``compiled.memory_analysis()``) are recorded; after a
separate warm-up the variants run interleaved, round after round, and each keeps
its minimum, so a noisy machine slows all of them alike. Each layer runs in its
own worker process with a time limit (a compile that hangs or aborts loses one
variant, not the run). Ratios: to torch, to lax, and to XLA's and torch's
2048^3 float32 GEMM measured in the same run. Writes ``bench.json`` and
``bench.md`` (and ``bench.png`` when matplotlib is installed) to ``--out`` or a
new temporary directory, never the current one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import resource
except ImportError:  # not POSIX: no page-fault counts
    resource = None

import numpy as np

from .._layout import flipped_kernel

__all__ = [
    "LAYERS",
    "SUITE",
    "Layer",
    "main",
    "markdown",
    "options",
    "plan_label",
    "run",
    "targets",
]


@dataclasses.dataclass(frozen=True)
class Layer:
    """One transposed-convolution layer, in PyTorch's terms (NC..., torch weight)."""

    name: str
    source: str  # the model it comes from
    what: str  # the layer, and how it was shrunk for CPU time
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

    def spec(self):
        from .. import make_spec

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


def _L(*args, **kwargs) -> Layer:
    return Layer(*args, **kwargs)


_DCGAN = "DCGAN generator (PyTorch examples, nz=100, ngf=64)"
_HIFI = "HiFi-GAN V1 generator (upsample rates 8,8,2,2)"
_UNET = "U-Net decoder (Ronneberger et al.), 128x128 input"
_UNET3D = "3-d U-Net decoder (Cicek et al.), 32^3 input"
_VAE = "VAE decoder (PyTorch-VAE, 64x64 images)"
_TFGAN = "DCGAN of TensorFlow's MNIST tutorial (k5, 'same')"

SUITE: dict[str, Layer] = {
    layer.name: layer
    for layer in [
        # name, source, what, N, C_in, C_out, size, k, s, p, op, groups, dilation
        _L("dcgan.up1", _DCGAN, "100->512, 1x1 latent, k4 s1 p0, N64", 64, 100, 512, (1, 1), 4, 1),
        _L("dcgan.up2", _DCGAN, "512->256, 4x4, k4 s2 p1, N16 (of 64)", 16, 512, 256, (4, 4), 4, 2, 1),  # noqa: E501
        _L("dcgan.up3", _DCGAN, "256->128, 8x8, k4 s2 p1, N16 (of 64)", 16, 256, 128, (8, 8), 4, 2, 1),  # noqa: E501
        _L("dcgan.up4", _DCGAN, "128->64, 16x16, k4 s2 p1, N16 (of 64)", 16, 128, 64, (16, 16), 4, 2, 1),  # noqa: E501
        _L("dcgan.up5", _DCGAN, "64->3, 32x32, k4 s2 p1, N64", 64, 64, 3, (32, 32), 4, 2, 1),
        _L("hifigan.up1", _HIFI, "1-d 512->256, 32 mel frames, k16 s8 p4, N4", 4, 512, 256, (32,), 16, 8, 4),  # noqa: E501
        _L("hifigan.up2", _HIFI, "1-d 256->128, L256, k16 s8 p4, N4", 4, 256, 128, (256,), 16, 8, 4),  # noqa: E501
        _L("hifigan.up3", _HIFI, "1-d 128->64, L2048, k4 s2 p1, N4", 4, 128, 64, (2048,), 4, 2, 1),
        _L("hifigan.up4", _HIFI, "1-d 64->32, L4096, k4 s2 p1, N4", 4, 64, 32, (4096,), 4, 2, 1),
        _L("hifigan.up1.b1", _HIFI, "1-d 512->256, 64 mel frames, k16 s8 p4, N1 (inference)", 1, 512, 256, (64,), 16, 8, 4),  # noqa: E501
        _L("unet.up1", _UNET, "1024->512, 8x8, k2 s2, N1", 1, 1024, 512, (8, 8), 2, 2),
        _L("unet.up2", _UNET, "512->256, 16x16, k2 s2, N1", 1, 512, 256, (16, 16), 2, 2),
        _L("unet.up3", _UNET, "256->128, 32x32, k2 s2, N1", 1, 256, 128, (32, 32), 2, 2),
        _L("unet.up4", _UNET, "128->64, 64x64, k2 s2, N1", 1, 128, 64, (64, 64), 2, 2),
        _L("unet3d.up1", _UNET3D, "3-d 512->512, 4^3, k2 s2, N1", 1, 512, 512, (4, 4, 4), 2, 2),
        _L("unet3d.up2", _UNET3D, "3-d 256->256, 8^3, k2 s2, N1", 1, 256, 256, (8, 8, 8), 2, 2),
        _L("unet3d.k3", "3-d decoder with k3 up-sampling (V-Net-like)", "3-d 64->32, 16^3, k3 s2 p1 op1, N1", 1, 64, 32, (16, 16, 16), 3, 2, 1, 1),  # noqa: E501
        _L("fsrcnn", "FSRCNN (Dong et al.), x3, d=56", "56->1, 128x128, k9 s3 p4 op2, N1", 1, 56, 1, (128, 128), 9, 3, 4, 2),  # noqa: E501
        _L("fsrcnn.rgb", "FSRCNN (Dong et al.), x3, d=56, RGB", "56->3, 96x96, k9 s3 p4 op2, N1", 1, 56, 3, (96, 96), 9, 3, 4, 2),  # noqa: E501
        _L("espcn.head", "ESPCN (Shi et al.), x3: last conv + pixel shuffle", "32->3, 128x128, k9 s3 p3 (the sub-pixel conv's equivalent), N1", 1, 32, 3, (128, 128), 9, 3, 3),  # noqa: E501
        _L("vae.up1", _VAE, "256->128, 4x4, k3 s2 p1 op1, N64", 64, 256, 128, (4, 4), 3, 2, 1, 1),
        _L("vae.up3", _VAE, "64->32, 16x16, k3 s2 p1 op1, N64", 64, 64, 32, (16, 16), 3, 2, 1, 1),
        _L("tfgan.up1", _TFGAN, "256->128, 7x7, k5 s1 p2, N16 (of 256)", 16, 256, 128, (7, 7), 5, 1, 2),  # noqa: E501
        _L("tfgan.up2", _TFGAN, "128->64, 7x7, k5 s2 p2 op1, N64 (of 256)", 64, 128, 64, (7, 7), 5, 2, 2, 1),  # noqa: E501
        _L("tfgan.up3", _TFGAN, "64->1, 14x14, k5 s2 p2 op1, N256 (large batch)", 256, 64, 1, (14, 14), 5, 2, 2, 1),  # noqa: E501
        _L("fcn8s.upscore8", "FCN-8s (Long et al.), 21 classes", "21->21, 40x40, k16 s8, N1", 1, 21, 21, (40, 40), 16, 8),  # noqa: E501
        _L("grouped.g4", "grouped up-sampling (ResNeXt-style decoder)", "256->256, 16x16, k4 s2 p1, groups 4, N8", 8, 256, 256, (16, 16), 4, 2, 1, 0, 4),  # noqa: E501
        _L("depthwise.bilinear", "bilinear x2 up-sampling as a depthwise deconv (FCN/segmentation)", "128 ch, 32x32, k4 s2 p1, groups 128, N8", 8, 128, 128, (32, 32), 4, 2, 1, 0, 128),  # noqa: E501
        _L("dilated.d3", "dilated transposed conv (synthetic)", "64->32, 32x32, k3 s2 p3 op1 dilation 3, N8", 8, 64, 32, (32, 32), 3, 2, 3, 1, 1, 3),  # noqa: E501
        _L("torchtest.3d_k16s16", "PyTorch's test suite: 3-d kernel 16 stride 16", "3-d 4->4, 2^3, k16 s16, N2 (compile time)", 2, 4, 4, (2, 2, 2), 16, 16),  # noqa: E501
    ]
}  # fmt: skip
"""The suite, by name."""

QUICK = ["dcgan.up1", "dcgan.up2", "hifigan.up1", "unet.up4", "fsrcnn", "grouped.g4"]
"""``--quick``: one layer of each kind that issue 13 found losing."""

LAYERS: dict[str, Layer] = {
    layer.name: layer
    for layer in [
        _L("dcgan", "DCGAN", "DCGAN generator 512->256, 4x4, k4 s2 p1", 16, 512, 256, (4, 4), 4, 2, 1),  # noqa: E501
        _L("dcgan_late", "DCGAN", "DCGAN generator 64->32, 64x64, k4 s2 p1", 8, 64, 32, (64, 64), 4, 2, 1),  # noqa: E501
        _L("unet", "U-Net", "U-Net up-sampling 128->64, 64x64, k2 s2", 8, 128, 64, (64, 64), 2, 2),
        _L("vae", "VAE", "VAE decoder 128->64, 16x16, k4 s2 p1", 16, 128, 64, (16, 16), 4, 2, 1),
        _L("k3_op1", "synthetic", "256->128, 32x32, k3 s2 p1 op1", 8, 256, 128, (32, 32), 3, 2, 1, 1),  # noqa: E501
        _L("vocoder", "vocoder", "1-d vocoder 512->256, L128, k16 s8 p4", 4, 512, 256, (128,), 16, 8, 4),  # noqa: E501
        _L("3d_k2", "3-d", "3-d 32->16, 16^3, k2 s2", 2, 32, 16, (16, 16, 16), 2, 2),
        _L("3d_k3", "3-d", "3-d 32->16, 16^3, k3 s2 p1 op1", 2, 32, 16, (16, 16, 16), 3, 2, 1, 1),
        _L("depthwise", "synthetic", "depthwise 128 ch, 32x32, k4 s2 p1", 8, 128, 128, (32, 32), 4, 2, 1, 0, 128),  # noqa: E501
        _L("dilated", "synthetic", "64->32, 32x32, k3 s2 d3 p3 op1", 8, 64, 32, (32, 32), 3, 2, 3, 1, 1, 3),  # noqa: E501
    ]
}  # fmt: skip
"""The previous ten-layer suite under its old names (``tests/test_gemm.py`` uses it; the
GEMM rule was fitted to it). ``--layers`` accepts these names too."""

JAXDECONV_VARIANTS = ("auto", "phase", "vjp", "lhs_dilated", "zero_insertion")
VARIANTS = (*JAXDECONV_VARIANTS, "lax", "torch", "flax", "equinox")
DEFAULT_VARIANTS = (*JAXDECONV_VARIANTS, "lax", "torch")
"""Flax's and Equinox's layers are off by default: both lower to the same XLA
convolution as ``lax.conv_transpose`` / ``lhs_dilated`` (equal times in earlier runs),
so they cost compile time and tell nothing new; ``--variants`` adds them."""

MODES = ("fwd", "fwd+bwd")
GEMM_SIZE = 2048
TOLERANCE = 2e-3  # max|y - ref| / max|ref|, float32


def plan_label(spec) -> str:
    """What ``method="auto"`` runs for ``spec`` (:func:`jaxdeconv.plan`'s label), e.g.
    ``"phase: GEMM+col2im, im2col GEMM grads"``."""
    import jax
    import numpy as np

    from .. import plan

    def shape(s):
        return jax.ShapeDtypeStruct(s, np.float32)

    kw = dict(
        stride=spec.stride,
        padding=spec.crop,
        groups=spec.groups,
        dilation=spec.dilation,
        channels_last=spec.channels_last,
    )
    if any(hi < 0 for _, hi in spec.crop):  # output_padding, given as a negative crop
        kw["padding"] = tuple((lo, max(hi, 0)) for lo, hi in spec.crop)
        kw["output_padding"] = tuple(max(-hi, 0) for _, hi in spec.crop)
    return plan(shape(spec.input_shape), shape(spec.weight_shape), **kw).label


# ----------------------------------------------------------------------------- worker side


def _block(out):
    import jax

    return jax.block_until_ready(out)


def _rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return math.inf
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _lax_fn(spec):
    """What a JAX user writes: ``lax.conv_transpose(transpose_kernel=True)``; it has no
    ``groups``, so grouped layers get ``lax.conv_general_dilated`` with
    ``lhs_dilation`` and ``feature_group_count`` on the regrouped, flipped kernel."""
    import jax

    n = spec.ndim
    sp = "DHW"[-n:]
    dn = ("NC" + sp, "OI" + sp, "NC" + sp)
    g = spec.groups
    if g == 1:

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

    def f(x, w):
        return jax.lax.conv_general_dilated(
            x,
            flipped_kernel(w, g),
            (1,) * n,
            spec.lhs_dilated_padding,
            lhs_dilation=spec.stride,
            rhs_dilation=spec.dilation,
            dimension_numbers=dn,
            feature_group_count=g,
        )

    return f


def _flax_fn(layer: Layer, spec):
    if layer.groups != 1:
        return None
    try:
        import flax.linen as nn
    except ImportError:
        return None
    import jax.numpy as jnp

    mod = nn.ConvTranspose(
        features=layer.out_channels,
        kernel_size=spec.kernel_size,
        strides=spec.stride,
        padding=spec.lhs_dilated_padding,
        kernel_dilation=spec.dilation,
        use_bias=False,
        transpose_kernel=True,
    )

    def prep(x, w):  # torch layout -> flax's (outside the timed forward)
        return jnp.moveaxis(x, 1, -1), jnp.moveaxis(w, (0, 1), (-1, -2))

    def f(x_cl, kernel):
        return mod.apply({"params": {"kernel": kernel}}, x_cl)

    return prep, f, lambda y: jnp.moveaxis(y, -1, 1)


def _equinox_fn(layer: Layer, spec):
    try:
        import equinox as eqx
    except ImportError:
        return None
    import jax

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

    def f(x, kernel):
        return jax.vmap(eqx.tree_at(lambda m: m.weight, mod, kernel))(x)

    return (lambda x, w: (x, flipped_kernel(w, layer.groups))), f, (lambda y: y)


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"


def _torch_device() -> str:
    """torch's device: CUDA where JAX runs on a GPU and torch has CUDA, else the CPU."""
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_calls(layer: Layer, spec, x: np.ndarray, w: np.ndarray):
    """torch's forward and forward+backward; each returns CPU tensors once finished."""
    import torch

    fn = getattr(torch.nn.functional, f"conv_transpose{spec.ndim}d")
    device = _torch_device()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    xt, wt = torch.from_numpy(x).to(device), torch.from_numpy(w).to(device)
    xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            y = fn(xt, wt, **layer.kwargs)
        sync()
        return y

    def fwd_bwd():
        xg.grad = wg.grad = None
        y = fn(xg, wg, **layer.kwargs)
        (y * y).sum().backward()
        sync()
        return xg.grad, wg.grad

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def _jax_variant(variant: str, layer: Layer, spec):
    """(prep, f, post) in torch's layout, or None where the variant cannot run the layer."""
    from .. import conv_transpose

    ident = lambda y: y  # noqa: E731
    pair = lambda x, w: (x, w)  # noqa: E731
    if variant in JAXDECONV_VARIANTS:
        return pair, lambda x, w: conv_transpose(x, w, method=variant, **layer.kwargs), ident
    if variant == "lax":
        return pair, _lax_fn(spec), ident
    if variant == "flax":
        return _flax_fn(layer, spec)
    if variant == "equinox":
        return _equinox_fn(layer, spec)
    raise ValueError(variant)


def _warm_reps(call: Callable[[], Any], min_round_s: float, first_s: float) -> int:
    """How many calls make one round's sample, from one warm call (not kept).

    The call that checked the result (``first_s`` seconds) was the first, cold one;
    where it took over 0.5 s, the sample is that one call and no second warm-up is
    spent on it.
    """
    if first_s > max(0.5, min_round_s):
        return 1
    t0 = time.perf_counter()
    call()
    t = time.perf_counter() - t0
    return max(1, min(50, math.ceil(min_round_s / max(t, 1e-9))))


def interleaved_minima(
    calls: dict[Any, Callable[[], Any]], rounds: int, budget: float = 0.03, slow: float = 0.5
) -> dict[Any, float]:
    """Each call's best time in seconds, timed interleaved round after round.

    Every call runs once untimed (compile, warm-up). In each round every call is timed
    repeatedly for about ``budget`` seconds (at least twice), each call on its own, and
    its minimum kept, so a layer of 0.1 ms is judged on many samples and not on one call
    woken from idle; a call over ``slow`` seconds is timed once, in the first round.
    """
    best = {k: math.inf for k in calls}
    for f in calls.values():
        f()
    for r in range(rounds):
        for k, f in calls.items():
            if r and best[k] > slow:
                continue
            start, n = time.perf_counter(), 0
            while n < 2 or time.perf_counter() - start < budget:
                t = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t)
                n += 1
                if best[k] > slow or time.perf_counter() - start > 10 * budget:
                    break
    return best


def layer_worker(job: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    """Check, compile and time every variant of one layer; report through ``emit``.

    Events: ``{"event": "compiling", "variant", "mode"}`` before each compile,
    ``{"event": "entry", ...}`` after it (compile time, temporary bytes, error),
    ``{"event": "round", "round", "timings"}`` after each round (the minima so far),
    ``{"event": "done"}``.
    """
    import jax
    import jax.numpy as jnp

    layer = Layer(**{**job["layer"], "size": tuple(job["layer"]["size"])})
    spec = layer.spec()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = (rng.standard_normal(spec.weight_shape) / math.sqrt(spec.in_channels)).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    try:
        import torch

        torch.set_num_threads(job["threads"])
        torch_calls = _torch_calls(layer, spec, x, w)
        t0 = time.perf_counter()
        ref = {"fwd": (torch_calls["fwd"]().cpu().numpy(),)}
        t1 = time.perf_counter()
        ref["fwd+bwd"] = tuple(t.cpu().numpy() for t in torch_calls["fwd+bwd"]())
        torch_first = {"fwd": t1 - t0, "fwd+bwd": time.perf_counter() - t1}
        ref_name = "torch"
    except ImportError:
        from .. import conv_transpose, numpy_conv_transpose

        torch_calls = None
        ref = {"fwd": (numpy_conv_transpose(x, w, **layer.kwargs),)}
        ref["fwd+bwd"] = jax.grad(
            lambda x, w: jnp.sum(conv_transpose(x, w, method="vjp", **layer.kwargs) ** 2), (0, 1)
        )(xj, wj)
        ref_name = "numpy"
    emit({"event": "reference", "reference": ref_name})

    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    reps: dict[tuple[str, str], int] = {}
    for variant in job["variants"]:
        if variant == "torch":
            if torch_calls is None:
                emit({"event": "entry", "variant": "torch", "mode": "fwd", "skip": "not installed"})
                continue
            for mode in job["modes"]:
                calls[("torch", mode)] = torch_calls[mode]
                reps[("torch", mode)] = _warm_reps(
                    torch_calls[mode], job["min_round_s"], torch_first[mode]
                )
                emit({"event": "entry", "variant": "torch", "mode": mode, "max_rel_err": 0.0})
            continue
        fns = _jax_variant(variant, layer, spec)
        if fns is None:
            why = "not installed" if _version(variant) == "not installed" else "no groups"
            emit({"event": "entry", "variant": variant, "mode": "fwd", "skip": why})
            continue
        prep, f, post = fns
        args = prep(xj, wj)

        def fwd(x, w, f=f, post=post):
            return post(f(x, w))

        def fwd_bwd(xx, ww, prep=prep, f=f, post=post):
            return jax.grad(lambda x, w: jnp.sum(post(f(*prep(x, w))) ** 2), (0, 1))(xx, ww)

        for mode, fn, fargs in (("fwd", fwd, args), ("fwd+bwd", fwd_bwd, (xj, wj))):
            if mode not in job["modes"] or [variant, mode] in job["exclude"]:
                continue
            emit({"event": "compiling", "variant": variant, "mode": mode})
            t0 = time.perf_counter()
            try:
                compiled = jax.jit(fn).lower(*fargs).compile()
            except Exception as e:  # a variant that cannot run this layer: say so, go on
                msg = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                emit(dict(event="entry", variant=variant, mode=mode, error=msg))
                continue
            compile_s = time.perf_counter() - t0
            try:
                temp = int(compiled.memory_analysis().temp_size_in_bytes)
            except Exception:  # not every backend reports it
                temp = None
            t0 = time.perf_counter()
            out = _block(compiled(*fargs))
            first_s = time.perf_counter() - t0
            outs = out if isinstance(out, tuple) else (out,)
            err = max(_rel_err(o, r) for o, r in zip(outs, ref[mode]))
            entry = dict(
                event="entry",
                variant=variant,
                mode=mode,
                compile_s=compile_s,
                temp_bytes=temp,
                max_rel_err=err,
            )
            if not err <= TOLERANCE:
                entry["error"] = f"wrong: relative error {err:.2e} against {ref_name}; not timed"
            else:
                call = lambda c=compiled, a=fargs: _block(c(*a))  # noqa: E731
                calls[(variant, mode)] = call
                reps[(variant, mode)] = _warm_reps(call, job["min_round_s"], first_s)
            emit(entry)

    # The 2048^3 GEMMs run in the rounds too, so that the machine's figure is measured
    # under the same conditions as the layers (the report keeps the best of all layers).
    n = GEMM_SIZE
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    aj, dot = jnp.asarray(a), jax.jit(jnp.dot)
    _block(dot(aj, aj))
    calls[("xla", "gemm")] = lambda: _block(dot(aj, aj))
    if torch_calls is not None:
        device = _torch_device()
        at = torch.from_numpy(a).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        calls[("torch", "gemm")] = lambda: (torch.mm(at, at), sync())
        calls[("torch", "gemm")]()
    for k in [k for k in calls if k[1] == "gemm"]:
        reps[k] = 1

    # Interleaved rounds: every variant once per round (its sample: `reps` calls),
    # the order rotated each round; each keeps its minimum per call.
    keys = list(calls)
    best = {k: math.inf for k in keys}
    spent = {k: 0.0 for k in keys}
    rounds = {k: 0 for k in keys}
    faults = {k: 0 for k in keys}  # minor page faults over every timed call
    for r in range(job["rounds"]):
        shift = r % max(len(keys), 1)
        for k in keys[shift:] + keys[:shift]:
            if rounds[k] and spent[k] >= job["max_variant_s"]:
                continue  # slow variant: fewer rounds (counted in the report)
            f0 = _minor_faults()
            for _ in range(reps[k]):
                t0 = time.perf_counter()
                calls[k]()
                t = time.perf_counter() - t0
                best[k] = min(best[k], t)
                spent[k] += t
            faults[k] += _minor_faults() - f0
            rounds[k] += 1
        emit(
            {
                "event": "round",
                "round": r + 1,
                "timings": [
                    dict(
                        variant=k[0],
                        mode=k[1],
                        min_s=best[k],
                        rounds=rounds[k],
                        calls=reps[k],
                        faults_per_call=faults[k] / max(1, rounds[k] * reps[k]),
                    )
                    for k in keys
                ],
            }
        )
    emit({"event": "done"})


def _minor_faults() -> int:
    """This process's minor page faults so far (0 where ``resource`` is missing).

    XLA:CPU takes a call's temporaries in one allocation, which glibc maps afresh on
    every call once it passes 32 MiB: every page of it is then faulted in again, and
    the time goes with it (README, *Temporaries over 32 MiB*)."""
    if resource is None:  # not POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _worker_main() -> int:
    """``python -m jaxdeconv.tools.bench --worker``: one job (JSON) on stdin."""
    job = json.loads(sys.stdin.read())

    def emit(event):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    layer_worker(job, emit)
    return 0


# ----------------------------------------------------------------------------- parent side


def _pump(stream, sink) -> None:
    for line in stream:
        sink(line)


def _run_isolated(job: dict[str, Any], opts, log) -> list[dict[str, Any]]:
    """Run ``layer_worker`` in child processes; returns the events.

    A compile longer than ``--compile-timeout``, or a worker that dies while
    compiling (an XLA abort), costs that variant only: the worker is restarted
    without it. A layer over ``--timeout`` keeps the rounds completed so far.
    """
    import jaxdeconv

    src = str(Path(jaxdeconv.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    failed: list[dict[str, Any]] = []
    deadline = time.monotonic() + opts.timeout
    while True:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxdeconv.tools.bench", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        proc.stdin.write(json.dumps(job))
        proc.stdin.close()
        lines: queue.Queue = queue.Queue()
        errtail: list[str] = []
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, lines.put), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, errtail.append), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        events: list[dict[str, Any]] = []
        compiling, since, why = None, time.monotonic(), None
        while True:
            now = time.monotonic()
            limit = deadline if compiling is None else min(deadline, since + opts.compile_timeout)
            try:
                line = lines.get(timeout=max(0.0, min(limit - now, 1.0)))
            except queue.Empty:
                if proc.poll() is not None:
                    pumps[0].join(timeout=5)  # the last lines may still be in the pipe
                    if lines.empty():
                        why = "died"
                        break
                    continue
                if time.monotonic() >= limit:
                    why = "timeout"
                    break
                continue
            ev = json.loads(line)
            events.append(ev)
            if ev["event"] == "compiling":
                compiling, since = ev, time.monotonic()
            elif ev["event"] == "entry":
                compiling = None
            elif ev["event"] == "done":
                break
        if why is not None:
            proc.kill()
        proc.wait()
        if why is None:
            return failed + events
        if compiling is not None:
            took = time.monotonic() - since
            if why == "timeout":
                msg = f"compile did not finish in {took:.0f} s; abandoned"
            else:
                tail = " ".join("".join(errtail).split()[-25:])
                msg = f"worker died while compiling (exit {proc.returncode}): {tail}"
            log(f"  {compiling['mode']:<8} {compiling['variant']:<15} {msg}")
            failed.append(
                dict(
                    event="entry",
                    variant=compiling["variant"],
                    mode=compiling["mode"],
                    compile_s=took if why == "timeout" else None,
                    compile_timeout=why == "timeout",
                    error=msg,
                )
            )
            exclude = [[compiling["variant"], compiling["mode"]]]
            if compiling["mode"] == "fwd" and "fwd+bwd" in job["modes"]:
                # its gradient compiles the same program and more: not tried
                exclude.append([compiling["variant"], "fwd+bwd"])
                failed.append(
                    dict(
                        event="entry",
                        variant=compiling["variant"],
                        mode="fwd+bwd",
                        error=f"not tried: the forward {msg.split(';')[0][:80]}",
                    )
                )
            job = {**job, "exclude": [*job["exclude"], *exclude]}
            if time.monotonic() < deadline:
                continue
        note = (
            f"layer stopped after {opts.timeout:.0f} s (--timeout)"
            if why == "timeout"
            else f"worker died (exit {proc.returncode}): {''.join(errtail)[-400:]}"
        )
        log(f"  {note}")
        return failed + events + [{"event": "stopped", "note": note}]


def _bench_layer(layer: Layer, opts, log) -> dict[str, Any]:
    job = dict(
        layer=dataclasses.asdict(layer),
        variants=opts.variants,
        modes=opts.modes,
        rounds=opts.rounds,
        min_round_s=opts.min_round_s,
        max_variant_s=opts.max_variant_s,
        threads=opts.threads,
        exclude=[],
    )
    if opts.timeout > 0:
        events = _run_isolated(job, opts, log)
    else:
        events = []
        layer_worker(job, events.append)
    spec = layer.spec()
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    gemm: dict[str, float] = {}
    notes = []
    reference = None
    for ev in events:
        if ev["event"] == "entry":
            key = (ev["variant"], ev["mode"])
            entries[key] = {k: v for k, v in ev.items() if k != "event"}
        elif ev["event"] == "round":
            for t in ev["timings"]:
                if t["mode"] == "gemm":  # GF/s of the 2048^3 GEMM during this layer
                    gemm[t["variant"]] = 2 * GEMM_SIZE**3 / t["min_s"] / 1e9
                    continue
                entries[(t["variant"], t["mode"])].update(
                    min_s=t["min_s"],
                    rounds=t["rounds"],
                    calls=t["calls"],
                    faults_per_call=t["faults_per_call"],
                )
        elif ev["event"] == "stopped":
            notes.append(ev["note"])
        elif ev["event"] == "reference":
            reference = ev["reference"]
    results = []
    for variant in opts.variants:
        for mode in opts.modes:
            e = entries.get((variant, mode)) or entries.get((variant, "fwd"))
            if e is None or (e["mode"] != mode and "skip" not in e):
                continue
            results.append({**e, "variant": variant, "mode": mode})
    return dict(
        name=layer.name,
        source=layer.source,
        what=layer.what,
        layer=dataclasses.asdict(layer),
        flops=spec.flops,
        plan=plan_label(spec),
        reference=reference,
        gemm_gflops=gemm,
        notes=notes,
        results=results,
    )


def _derive(layer: dict[str, Any], gemm: dict[str, float]) -> None:
    """Per result: ms, GF/s and the ratios (speed-ups > 1: faster than the other)."""
    by = {(r["variant"], r["mode"]): r for r in layer["results"]}
    for r in layer["results"]:
        if "min_s" not in r:
            continue
        flops = layer["flops"] * (3 if r["mode"] == "fwd+bwd" else 1)
        t = r["min_s"]
        r["ms"] = 1e3 * t
        r["gflops"] = flops / t / 1e9
        r["frac_xla_gemm"] = r["gflops"] / gemm["xla"] if gemm.get("xla") else None
        r["frac_torch_gemm"] = r["gflops"] / gemm["torch"] if gemm.get("torch") else None
        torch_r, lax_r = by.get(("torch", r["mode"]), {}), by.get(("lax", r["mode"]), {})
        r["vs_torch"] = torch_r["min_s"] / t if "min_s" in torch_r else None
        r["vs_lax"] = lax_r["min_s"] / t if "min_s" in lax_r else None
        lc, c = lax_r.get("compile_s"), r.get("compile_s")
        r["compile_vs_lax"] = c / lc if c is not None and lc else None
        lm, m = lax_r.get("temp_bytes"), r.get("temp_bytes")
        r["temp_vs_lax"] = m / lm if m is not None and lm else (1.0 if m == lm == 0 else None)


def _gemm_gflops(threads: int, reps: int = 5) -> dict[str, float]:
    """XLA's and torch's 2048^3 float32 GEMM, best of ``reps`` calls each (interleaved)."""
    import jax
    import jax.numpy as jnp

    n = GEMM_SIZE
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    aj = jnp.asarray(a)
    f = jax.jit(jnp.dot)
    calls = {"xla": lambda: jax.block_until_ready(f(aj, aj))}
    try:
        import torch

        torch.set_num_threads(threads)
        device = _torch_device()
        at = torch.from_numpy(a).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        calls["torch"] = lambda: (torch.mm(at, at), sync())
    except ImportError:
        pass
    best = {k: math.inf for k in calls}
    for c in calls.values():
        c()
    for _ in range(reps):
        for k, c in calls.items():
            t0 = time.perf_counter()
            c()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: 2 * n**3 / t / 1e9 for k, t in best.items()}


def _load() -> tuple[str, float]:
    """``uptime``'s line and the 1-minute load average."""
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        line = ""
    return line or f"load average: {load1:.2f}", load1


def _cpu_sample() -> tuple[float, float, float] | None:
    """CPU seconds so far: all processes' (``/proc/stat``: user, nice, system, irq,
    softirq), the hypervisor's (steal), and this process's with its finished children
    (the layers' workers); ``None`` where there is no ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    v = [int(f) for f in fields] + [0] * 8
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / ticks, v[7] / ticks, own


def _others(start, end, wall: float) -> dict[str, float] | None:
    """Which share of the CPUs other processes (and the hypervisor) took during the run:
    the 1-minute load average counts the bench's own threads, so it cannot tell."""
    if start is None or end is None or wall <= 0:
        return None
    (busy0, steal0, own0), (busy1, steal1, own1) = start, end
    cpus = os.cpu_count() or 1
    return {
        "others": max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * cpus),
        "steal": (steal1 - steal0) / (wall * cpus),
    }


def _geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _result(layer, variant, mode):
    return next(
        (r for r in layer["results"] if r["variant"] == variant and r["mode"] == mode), None
    )


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Geomeans of ``auto`` against torch and lax, per mode."""
    out = {}
    for mode in data["modes"]:
        autos = [_result(layer, "auto", mode) or {} for layer in data["layers"]]
        out[mode] = dict(
            auto_vs_torch_geomean=_geomean([a.get("vs_torch") for a in autos]),
            auto_vs_lax_geomean=_geomean([a.get("vs_lax") for a in autos]),
            layers=sum("min_s" in a for a in autos),
        )
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's targets, each ``{"target", "holds" (True/False/None: not measured),
    "detail"}``, from the ratios of this run."""
    out = []
    layers = data["layers"]
    s = data["summary"]

    def add(target, bad, measured, detail=""):
        holds = None if not measured else not bad
        if bad:
            detail = (detail + "; " if detail else "") + "fails on: " + ", ".join(bad)
        out.append(dict(target=target, holds=holds, detail=detail))

    for mode in data["modes"]:
        g = s[mode]["auto_vs_torch_geomean"]
        add(
            f"{mode}: auto >= 1.25x torch (geomean)",
            [] if g is None or g >= 1.25 else [f"geomean {g:.2f}x"],
            g is not None,
            "" if g is None else f"{g:.2f}x",
        )
        ratios = [(la["name"], (_result(la, "auto", mode) or {}).get("vs_torch")) for la in layers]
        add(
            f"{mode}: no layer below 0.9x torch",
            [f"{n} {v:.2f}x" for n, v in ratios if v is not None and v < 0.9],
            any(v is not None for _, v in ratios),
        )
        ratios = [(la["name"], (_result(la, "auto", mode) or {}).get("vs_lax")) for la in layers]
        add(
            f"{mode}: no layer slower than lax" + (" autodiff" if mode == "fwd+bwd" else ""),
            [f"{n} {v:.2f}x" for n, v in ratios if v is not None and v < 1.0],
            any(v is not None for _, v in ratios),
        )
    big = [
        (la["name"], _result(la, "auto", mode) or {}, mode)
        for la in layers
        if la["flops"] > 1e9
        for mode in data["modes"]
    ]
    add(
        "layers > 1 GFLOP: auto >= 75% of XLA's GEMM GF/s",
        [
            f"{n} {m} {100 * r['frac_xla_gemm']:.0f}%"
            for n, r, m in big
            if r.get("frac_xla_gemm") is not None and r["frac_xla_gemm"] < 0.75
        ],
        any(r.get("frac_xla_gemm") is not None for _, r, _ in big),
    )
    comp = [(la["name"], m, _result(la, "auto", m) or {}) for la in layers for m in data["modes"]]
    add(
        "compile time <= 2x lax's",
        [
            f"{n} {m} {r['compile_vs_lax']:.1f}x"
            if r.get("compile_vs_lax") is not None
            else f"{n} {m} (did not compile)"
            for n, m, r in comp
            if (r.get("compile_vs_lax") or 0) > 2 or r.get("compile_timeout")
        ],
        any(r.get("compile_vs_lax") is not None or r.get("compile_timeout") for _, _, r in comp),
    )
    k16 = [(n, m, r) for n, m, r in comp if n == "torchtest.3d_k16s16"]
    add(
        "compile time < 5 s on torchtest.3d_k16s16",
        [
            f"{m} {r['compile_s']:.1f} s" + (" (abandoned)" if r.get("compile_timeout") else "")
            for _, m, r in k16
            if r.get("compile_s") is not None and r["compile_s"] >= 5
        ],
        any(r.get("compile_s") is not None for _, _, r in k16),
    )
    add(
        "temporary memory <= 2x lax's",
        [
            f"{n} {m} {r['temp_vs_lax']:.1f}x"
            for n, m, r in comp
            if r.get("temp_vs_lax") is not None and r["temp_vs_lax"] > 2
        ],
        any(r.get("temp_vs_lax") is not None for _, _, r in comp),
    )
    return out


# ----------------------------------------------------------------------------- report


def _f(v, fmt=".2f", suffix=""):
    return "-" if v is None else format(v, fmt) + suffix


def _mb(b):
    return "-" if b is None else f"{b / 2**20:.2f}"


COLUMNS = [
    "layer",
    "variant",
    "mode",
    "ms (min)",
    "GF/s",
    "x torch",
    "x lax",
    "% XLA GEMM",
    "% torch GEMM",
    "compile s",
    "compile x lax",
    "temp MiB",
    "temp x lax",
    "page faults / call",
    "rounds",
    "max rel err",
]
"""The columns of the full table (``bench.md``, section "Every variant")."""


def _compile(r: dict[str, Any]) -> str:
    return (">" if r.get("compile_timeout") else "") + _f(r.get("compile_s"))


def _cell(r: dict[str, Any] | None) -> str:
    if r is None or "skip" in r:
        return "n/a"
    if "error" in r:
        if r.get("compile_timeout"):
            return "compile timeout"
        return next((w for w in ("wrong", "not tried") if r["error"].startswith(w)), "error")
    return f"{r['ms']:.2f}" if "ms" in r else "-"


def markdown(data: dict[str, Any]) -> str:
    g = data["gemm_gflops"]
    lines = [
        f"`{data['command']}`",
        "",
        f"float32; {data['machine']}; jax {data['jax']}, torch {data['torch']}; "
        f"{data['rounds']} interleaved rounds, minimum kept; JAX on {data['backend']}"
        + (
            f", torch on {data['torch_device']} ({data['threads']} threads). "
            if data["torch_device"]
            else " (no torch: results checked against the NumPy definition). "
        )
        + f"GEMM {GEMM_SIZE}^3 float32, best in this run (start, end, every layer): "
        f"XLA {_f(g.get('xla'), '.0f')} GF/s, "
        f"torch {_f(g.get('torch'), '.0f')} GF/s.",
        "",
        f"Load at start: `{data['load_start']}`; at end: `{data['load_end']}` (the "
        "bench's own threads count in the latter)."
        + (
            ""
            if not data.get("others")
            else f" CPU time other processes used during the run: "
            f"{100 * data['others']['others']:.1f}%, taken by the hypervisor (steal): "
            f"{100 * data['others']['steal']:.1f}%."
        )
        + ("" if not data["load_warning"] else f" **{data['load_warning']}**"),
        "",
        "Speed-ups (`x torch`, `x lax`) > 1 mean `auto` is faster; forward+backward "
        "compares with torch's backward and JAX's autodiff of `lax.conv_transpose`. "
        "`page faults / call` (every variant, below): thousands mean the call's "
        "temporaries were mapped afresh and paged in (XLA:CPU's over 32 MiB with glibc), "
        "which costs time; how often depends on the process's heap, so it can differ "
        "between runs.",
        "",
    ]
    others = [v for v in data["variants"] if v != "auto"]
    for mode in data["modes"]:
        title = "forward" if mode == "fwd" else "forward + backward (d/dx, d/dw of sum(y**2))"
        lines += [f"### {title}", ""]
        head = [
            "layer",
            "GFLOP",
            "auto runs",
            "auto ms",
            "GF/s",
            "% XLA GEMM",
            "x torch",
            "x lax",
            "compile s (auto/lax)",
            "temp MiB (auto/lax)",
            *[f"{v} ms" for v in others],
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for la in data["layers"]:
            a = _result(la, "auto", mode) or {}
            lx = _result(la, "lax", mode) or {}
            row = [
                f"`{la['name']}` {la['what']}",
                f"{la['flops'] * (3 if mode == 'fwd+bwd' else 1) / 1e9:.2f}",
                la["plan"],
                _cell(a or None),
                _f(a.get("gflops"), ".1f"),
                _f(None if a.get("frac_xla_gemm") is None else 100 * a["frac_xla_gemm"], ".0f"),
                _f(a.get("vs_torch")),
                _f(a.get("vs_lax")),
                f"{_compile(a)}/{_compile(lx)}",
                f"{_mb(a.get('temp_bytes'))}/{_mb(lx.get('temp_bytes'))}",
                *[_cell(_result(la, v, mode)) for v in others],
            ]
            lines.append("| " + " | ".join(row) + " |")
        s = data["summary"][mode]
        lines += [
            "",
            f"Geomean over {s['layers']} layers: auto {_f(s['auto_vs_torch_geomean'])}x torch, "
            f"{_f(s['auto_vs_lax_geomean'])}x lax.",
            "",
        ]
    lines += ["### Issue 13's targets in this run", ""]
    for t in data["targets"]:
        mark = {True: "holds", False: "**fails**", None: "not measured"}[t["holds"]]
        lines.append(f"- {t['target']}: {mark}" + (f" ({t['detail']})" if t["detail"] else ""))
    notes = [f"`{la['name']}`: {n}" for la in data["layers"] for n in la["notes"]]
    errors = [
        f"`{la['name']}` {r['variant']} {r['mode']}: {r['error']}"
        for la in data["layers"]
        for r in la["results"]
        if "error" in r
    ]
    if notes or errors:
        lines += ["", "### Notes", "", *[f"- {n}" for n in notes + errors]]
    lines += ["", "### Every variant", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for la in data["layers"]:
        for r in la["results"]:
            if "skip" in r:
                continue
            row = [
                f"`{la['name']}`",
                r["variant"],
                r["mode"],
                _cell(r),
                _f(r.get("gflops"), ".1f"),
                _f(r.get("vs_torch")),
                _f(r.get("vs_lax")),
                _f(None if r.get("frac_xla_gemm") is None else 100 * r["frac_xla_gemm"], ".0f"),
                _f(None if r.get("frac_torch_gemm") is None else 100 * r["frac_torch_gemm"], ".0f"),
                _compile(r),
                _f(r.get("compile_vs_lax")),
                _mb(r.get("temp_bytes")),
                _f(r.get("temp_vs_lax")),
                _f(r.get("faults_per_call"), ".0f"),
                str(r.get("rounds", "-")),
                _f(r.get("max_rel_err"), ".1e"),
            ]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Speed-up of each variant over torch, per layer (log scale), legend below the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = [la["name"] for la in data["layers"]]
    variants = [v for v in data["variants"] if v != "torch"]
    modes = data["modes"]
    fig, axes = plt.subplots(
        len(modes), 1, figsize=(max(8, 0.55 * len(names) + 2), 4.2 * len(modes)), squeeze=False
    )
    width = 0.8 / max(len(variants), 1)
    xs = np.arange(len(names))
    for ax, mode in zip(axes[:, 0], modes):
        failed = []
        for i, v in enumerate(variants):
            at = xs + (i - (len(variants) - 1) / 2) * width
            rs = [_result(la, v, mode) or {} for la in data["layers"]]
            ax.bar(at, [r.get("vs_torch") or np.nan for r in rs], width, label=v)
            failed += [x for x, r in zip(at, rs) if "error" in r]
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        if failed:  # no bar: did not compile in time, or wrong
            bottom = ax.get_ylim()[0]
            ax.plot(failed, [bottom * 1.15] * len(failed), "rx", ms=5, label="_nolegend_")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel("speed-up over torch (log)")
        ax.set_title("forward" if mode == "fwd" else "forward + backward")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if any("error" in r for la in data["layers"] for r in la["results"]):
        handles.append(plt.Line2D([], [], color="r", marker="x", ls=""))
        labels.append("no result (compile timeout, error)")
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- driver


def run(opts, log=print, layers: list[Layer] | None = None) -> dict[str, Any]:
    """The whole benchmark for options from :func:`options`; returns the report data.

    ``layers``: these instead of ``opts.layers`` (``benchmarks/one_layer.py``).
    """
    import jax

    load_start, load1 = _load()
    log(f"load at start: {load_start}")
    if load1 > 1:
        log(f"warning: 1-minute load {load1:.2f} > 1: timings will be noisy (ratios less so)")
    cpu_start, wall_start = _cpu_sample(), time.perf_counter()
    gemm = _gemm_gflops(opts.threads)
    log("GEMM 2048^3 float32: " + ", ".join(f"{k} {v:.1f} GF/s" for k, v in gemm.items()))
    todo = layers if layers is not None else [{**SUITE, **LAYERS}[n] for n in opts.layers]
    layers = []
    for layer in todo:
        layer = layer.tiny() if opts.tiny else layer
        log(f"{layer.name}: {layer.source}: {layer.what}{' (tiny)' if opts.tiny else ''}")
        data = _bench_layer(layer, opts, log)
        for r in data["results"]:
            if "min_s" in r:
                log(
                    f"  {r['mode']:<8} {r['variant']:<15} {1e3 * r['min_s']:9.3f} ms"
                    f"  compile {_f(r.get('compile_s'))} s"
                )
        layers.append(data)
    # The GEMM again at the end; the best of all (start, every layer's rounds, end) is
    # the machine's figure.
    for k, v in _gemm_gflops(opts.threads).items():
        gemm[k] = max(gemm.get(k, 0.0), v)
    for la in layers:
        for k, v in la["gemm_gflops"].items():
            gemm[k] = max(gemm.get(k, 0.0), v)
    for la in layers:
        _derive(la, gemm)
    load_end, _ = _load()
    log(f"load at end: {load_end}")
    others = _others(cpu_start, _cpu_sample(), time.perf_counter() - wall_start)
    warning = None
    if load1 > 1:
        warning = f"1-minute load was {load1:.2f} (> 1) before the run started"
    if others and others["others"] + others["steal"] > 0.05:
        warning = (
            f"other processes used {100 * others['others']:.0f}% and the hypervisor took "
            f"{100 * others['steal']:.0f}% of the CPUs during the run: timings are noisy"
        )
    if others:
        share, steal = 100 * others["others"], 100 * others["steal"]
        log(f"CPU time of other processes: {share:.1f}%, steal {steal:.1f}%")
    data = dict(
        command="jaxdeconv bench " + " ".join(opts.argv),
        machine=f"{platform.machine()} {platform.processor() or ''} x{os.cpu_count()} CPUs".replace(
            "  ", " "
        ),
        backend=jax.default_backend(),
        jax=jax.__version__,
        torch=_version("torch"),
        torch_device=_torch_device() if _version("torch") != "not installed" else None,
        flax=_version("flax"),
        equinox=_version("equinox"),
        threads=opts.threads,
        rounds=opts.rounds,
        variants=opts.variants,
        modes=opts.modes,
        tiny=opts.tiny,
        gemm_gflops=gemm,
        load_start=load_start,
        load_end=load_end,
        others=others,
        load_warning=warning,
        layers=layers,
    )
    data["summary"] = summarize(data)
    data["targets"] = targets(data)
    return data


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except for flags and options without one."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxdeconv bench",
        description=__doc__.split("\n\n")[0].strip("`: ").replace("``", ""),
        epilog="Layers: "
        + ", ".join(SUITE)
        + ". Older names: "
        + ", ".join(LAYERS)
        + ". Example: jaxdeconv bench --out benchmarks/results",
        formatter_class=_Help,
    )
    p.add_argument(
        "--out",
        default=None,
        help="directory for bench.json, bench.md, bench.png (default: a new temporary "
        "directory, printed)",
    )
    p.add_argument("--layers", default="all", help="comma-separated layer names, or all")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    p.add_argument("--modes", default=",".join(MODES), help="fwd, fwd+bwd or both")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument(
        "--quick", action="store_true", help=f"layers {','.join(QUICK)}, 3 rounds (a quick look)"
    )
    p.add_argument("--tiny", action="store_true", help="miniature inputs (a smoke test)")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds per layer (its worker process is stopped, completed rounds kept); "
        "0: run in this process, no limits",
    )
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=30.0,
        help="seconds one variant may compile before it is abandoned (its gradient too)",
    )
    p.add_argument(
        "--min-round-s",
        type=float,
        default=0.02,
        help="a variant's sample per round: calls adding up to at least this",
    )
    p.add_argument(
        "--max-variant-s",
        type=float,
        default=2.0,
        help="timed seconds per variant and layer after which it skips further rounds",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads: all cores")
    p.add_argument("--no-plot", action="store_true", help="skip bench.png")
    p.add_argument("--list", action="store_true", help="print the layer table and exit")
    p.add_argument("--silent", action="store_true", help="print only where the files went")
    return p


def _finite(obj):
    """``obj`` with infinities and NaNs as strings: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _split(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def options(argv: list[str]) -> argparse.Namespace | int:
    """Parsed and checked options of ``jaxdeconv bench``, or an exit status."""
    opts = _parser().parse_args(argv)
    opts.argv = argv
    if opts.quick:
        opts.layers = opts.layers if opts.layers != "all" else ",".join(QUICK)
        opts.rounds = 3 if "--rounds" not in argv else opts.rounds
    opts.layers = list(SUITE) if opts.layers == "all" else _split(opts.layers)
    unknown = [s for s in opts.layers if s not in SUITE and s not in LAYERS]
    if unknown:
        print(f"jaxdeconv bench: unknown layers {unknown}; known: {list(SUITE)}", file=sys.stderr)
        return 2
    opts.variants = _split(opts.variants)
    bad = [v for v in opts.variants if v not in VARIANTS]
    if bad:
        print(f"jaxdeconv bench: unknown variants {bad}; known: {VARIANTS}", file=sys.stderr)
        return 2
    if "auto" not in opts.variants:
        opts.variants.insert(0, "auto")  # the report is about auto
    opts.modes = _split(opts.modes)
    if not opts.modes or any(m not in MODES for m in opts.modes):
        print(f"jaxdeconv bench: --modes takes {', '.join(MODES)}", file=sys.stderr)
        return 2
    if opts.rounds < 1:
        print("jaxdeconv bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    return opts


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main()
    opts = options(argv)
    if isinstance(opts, int):
        return opts
    if opts.list:
        for layer in SUITE.values():
            print(f"{layer.name:<22} {layer.source}: {layer.what}")
        return 0
    if opts.out is None:
        out = Path(tempfile.mkdtemp(prefix="jaxdeconv-bench-"))
        print(f"jaxdeconv bench: writing to {out} (choose with --out DIR)", flush=True)
    else:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
    log = (lambda s: None) if opts.silent else (lambda s: print(s, flush=True))
    data = run(opts, log)
    (out / "bench.json").write_text(json.dumps(_finite(data), indent=1, allow_nan=False))
    table = markdown(data)
    (out / "bench.md").write_text(table)
    files = [out / "bench.json", out / "bench.md"]
    if not opts.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "jaxdeconv bench: plot skipped: matplotlib is not installed "
                "(pip install 'jaxdeconv[plot]' adds it)"
            )
        else:
            plot(data, out / "bench.png")
            files.append(out / "bench.png")
    log(table)
    print("jaxdeconv bench: wrote " + ", ".join(map(str, files)))
    wrong = [
        (la["name"], r["variant"], r["mode"])
        for la in data["layers"]
        for r in la["results"]
        if "error" in r and r["error"].startswith("wrong")
    ]
    if wrong:
        print(f"jaxdeconv bench: wrong results: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

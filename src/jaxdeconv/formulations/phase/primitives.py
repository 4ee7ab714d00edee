"""The zero-free phase (sub-pixel, polyphase) formulation and its differentiation rules.

A stride-``s`` transposed convolution computes output ``o`` (position ``o + lo`` of the
full result) from the taps ``j`` with ``j * dilation = o + lo  (mod s)``. Split the output
by ``o mod s`` into ``prod(stride)`` *phases*: each phase is a dense stride-1 convolution of
the undilated input with a sub-kernel of ``ceil(k / s)`` or ``floor(k / s)`` taps per
dimension (dilated by ``dilation / gcd(dilation, stride)``), and the phases are interleaved
(depth-to-space). No inserted zero is ever multiplied. Phases that no tap reaches (stride
larger than the kernel) are zero.

Phases whose sub-kernels have the same number of taps are computed by one convolution with
their sub-kernels stacked along the output channels, when that costs few extra output rows
(their windows may be offset by a pixel; the offset is sliced off afterwards).

Differentiation goes through three bilinear primitives that are each other's transposes,
exactly like a convolution and its two gradients:

* ``forward_p(x, w)``: the transposed convolution (forward);
* ``input_grad_p(g, w)``: its transpose in ``x``, the strided forward convolution;
* ``weight_grad_p(x, g)``: its transpose in ``w``, computed per phase as one GEMM of
  the phase's input patches with the phase's output cotangent (zero-free as well).

Each has a JVP rule (bilinear), transpose rules (onto the other two) and a batching rule
(``vmap`` over activations folds into the batch; over weights into ``groups``), so
``jit``, ``vmap``, ``jvp``, ``vjp`` and higher orders all stay on the fast paths.

Every primitive carries a static ``kernels`` parameter, the
:class:`~jaxdeconv._plan.PhaseKernels` that :mod:`jaxdeconv._plan` chose: which
implementation computes the forward pass and each gradient. Two lowerings exist:
the convolutions (:mod:`.conv`), which XLA's SPMD partitioner splits with halo
exchanges and XLA:GPU hands to cuDNN, and plain row-major GEMMs on one CPU device
(:mod:`.gemm`; the same zero-free sums, added in another order); on one CPU device the
forward pass may also be one sub-pixel convolution to all phases at once
(:mod:`.subpixel`). The primitives only
dispatch on ``kernels``; under ``vmap`` (which changes the spec) they ask the planner
again for the same backend and placement.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ..._plan import PhaseKernels, on_several_devices, phase_kernels
from ..._split import by_batch, by_group
from . import conv, gemm, subpixel
from .gemm import out_dtype

__all__ = [
    "forward_p",
    "input_grad_p",
    "phase",
    "phase_input_grad",
    "phase_weight_grad",
    "weight_grad_p",
]

# ----------------------------------------------------------------------------- dispatch


# XLA:CPU runs grouped products and convolutions far under its ungrouped ones, so the
# CPU kernels (GEMM and sub-pixel) compute a grouped layer group by group
# (:func:`jaxdeconv._split.by_group`, which passes an ungrouped layer through); the
# convolution kernels keep the grouped convolution, which XLA's partitioner and cuDNN
# take as it is. The GEMM kernels also run on kernels.batch_chunks chunks of the batch,
# one after another, where their buffers would be too large for the whole batch
# (by_batch), the forward on kernels.forward_chunks (where its cols would reach 32 MiB).


def _pieces(one_group, spec, chunks, operands, out):
    """``one_group`` by chunk of the batch (``chunks``), and within each by group."""

    def chunk(*args):
        *arrays, sub = args
        return by_group(one_group, sub, list(zip(arrays, kinds)), out)

    kinds = [kind for _, kind in operands]
    return by_batch(chunk, spec, chunks, operands, out)


def _forward_impl(x, w, *, spec, kernels, precision, preferred_element_type):
    kw = dict(precision=precision, preferred_element_type=preferred_element_type)
    if kernels.forward.startswith("gemm_cols"):
        nhwc = kernels.forward == "gemm_cols_nhwc"
        batched = kernels.forward == "gemm_cols_batched"
        return _pieces(
            lambda x, w, sub: gemm.forward(x, w, spec=sub, nhwc=nhwc, batched=batched, **kw),
            spec,
            max(kernels.forward_chunks, kernels.batch_chunks),
            [(x, "act"), (w, "weight")],
            "act",
        )
    if kernels.forward == "subpixel" and kernels.lowering == "conv":  # grouped as it is
        return subpixel.forward(x, w, spec=spec, fold_leading=kernels.fold_leading, **kw)
    if kernels.forward == "subpixel":  # no buffer larger than the output
        return by_group(
            lambda x, w, sub: subpixel.forward(
                x, w, spec=sub, fold_leading=kernels.fold_leading, **kw
            ),
            spec,
            [(x, "act"), (w, "weight")],
            "act",
        )
    if kernels.forward == "elementwise":
        return conv.forward_elementwise(
            x,
            w,
            spec=spec,
            preferred_element_type=preferred_element_type,
            nhwc=kernels.backend == "cpu" and not kernels.on_mesh,
        )
    return conv.forward_convs(x, w, spec=spec, fold_leading=kernels.fold_leading, **kw)


def _gemm_kw(kind, spec, precision, preferred_element_type):
    # Group by group, the cotangent is not settled: a conditional per group costs
    # compile time (grouped.g4: 0.55 -> 0.75 s, lax's 0.30) for no measured gain.
    return dict(
        precision=precision,
        preferred_element_type=preferred_element_type,
        strategy=kind.split("_")[1],
        nhwc=kind.endswith("nhwc"),
        batched=kind.endswith("batched"),
        settle=spec.groups == 1,
    )


def _input_grad_impl(g, w, *, spec, kernels, precision, preferred_element_type):
    kind = kernels.input_grad
    if kind.startswith("gemm"):
        kw = _gemm_kw(kind, spec, precision, preferred_element_type)
        return _pieces(
            lambda g, w, sub: gemm.input_grad(g, w, spec=sub, **kw),
            spec,
            kernels.batch_chunks,
            [(g, "act"), (w, "weight")],
            "act",
        )
    kw = dict(spec=spec, preferred_element_type=preferred_element_type)
    if kind == "elementwise":
        return conv.input_grad_elementwise(g, w, **kw)
    return conv.input_grad_convs(g, w, precision=precision, **kw)


def _weight_grad_impl(x, g, *, spec, kernels, precision, preferred_element_type):
    kind = kernels.weight_grad
    if kind.startswith("gemm"):
        kw = _gemm_kw(kind, spec, precision, preferred_element_type)
        return _pieces(
            lambda x, g, sub: gemm.weight_grad(x, g, spec=sub, **kw),
            spec,
            kernels.batch_chunks,
            [(x, "act"), (g, "act")],
            "weight",
        )
    kw = dict(spec=spec, preferred_element_type=preferred_element_type)
    if kind == "elementwise":
        return conv.weight_grad_elementwise(x, g, **kw)
    if kind == "filter_conv":
        return conv.weight_grad_filter_conv(x, g, precision=precision, **kw)
    return conv.weight_grad_convs(x, g, precision=precision, **kw)


# ----------------------------------------------------------------------------- primitives


def _make_primitive(name, impl, out_shape):
    prim = Primitive(name)
    jitted = jax.jit(
        impl, static_argnames=("spec", "kernels", "precision", "preferred_element_type")
    )
    prim.def_impl(lambda a, b, **params: jitted(a, b, **params))

    def abstract_eval(a, b, *, spec, kernels, precision, preferred_element_type):
        del kernels, precision
        dtype = out_dtype(jnp.result_type(a.dtype, b.dtype), preferred_element_type)
        return jax.core.ShapedArray(out_shape(spec), dtype)

    prim.def_abstract_eval(abstract_eval)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))
    return prim


forward_p = _make_primitive("jaxdeconv_phase", _forward_impl, lambda s: s.output_shape)
input_grad_p = _make_primitive(
    "jaxdeconv_phase_input_grad", _input_grad_impl, lambda s: s.input_shape
)
weight_grad_p = _make_primitive(
    "jaxdeconv_phase_weight_grad", _weight_grad_impl, lambda s: s.weight_shape
)


def _cast_like(v, aval_or_array):
    """Cast a transpose's result to the dtype of the operand it is the cotangent of."""
    aval = getattr(aval_or_array, "aval", None)
    dtype = aval.dtype if aval is not None else aval_or_array.dtype
    return v if v.dtype == dtype else v.astype(dtype)


# y = A(x, w):  dx = B(ct, w),  dw = C(x, ct)
ad.defbilinear(
    forward_p,
    lambda ct, x, w, **p: _cast_like(input_grad_p.bind(ct, w, **p), x),
    lambda ct, x, w, **p: _cast_like(weight_grad_p.bind(x, ct, **p), w),
)
# Differentiated, the forward runs whole (kernels.forward_chunks only outside autodiff):
# chunked, its result comes out of a loop that XLA cannot fuse with the gradients that
# read it, and forward+backward ran slower with more temporaries (Mask R-CNN's mask head
# 120 -> 190 ms and 49 -> 110 MiB, a k2 s2 128->64 at 64x64, batch 16, 153 -> 200 ms;
# the forward alone 76 -> 68 and 81 -> 64 ms; 2026-12-02).
_bilinear_jvp = ad.primitive_jvps[forward_p]


def _forward_jvp(primals, tangents, *, kernels, **params):
    whole = dataclasses.replace(kernels, forward_chunks=kernels.batch_chunks)
    return _bilinear_jvp(primals, tangents, kernels=whole, **params)


ad.primitive_jvps[forward_p] = _forward_jvp
# x = B(g, w):  dg = A(ct, w),  dw = C(ct, g)
ad.defbilinear(
    input_grad_p,
    lambda ct, g, w, **p: _cast_like(forward_p.bind(ct, w, **p), g),
    lambda ct, g, w, **p: _cast_like(weight_grad_p.bind(ct, g, **p), w),
)
# w = C(x, g):  dx = B(g, ct),  dg = A(x, ct)
ad.defbilinear(
    weight_grad_p,
    lambda ct, x, g, **p: _cast_like(input_grad_p.bind(g, ct, **p), x),
    lambda ct, x, g, **p: _cast_like(forward_p.bind(x, ct, **p), g),
)


# ----------------------------------------------------------------------------- batching

_NOT_MAPPED = None  # how batching rules see an operand that vmap does not map


def _act_in(a, bdim, size, spec):
    """Activation ``[B at bdim, N, ...]`` -> ``[N, ..., B*C]`` channels folded (B-major)."""
    a = jnp.broadcast_to(a, (size, *a.shape)) if bdim is None else jnp.moveaxis(a, bdim, 0)
    if spec.channels_last:
        a = jnp.moveaxis(a, 0, -2)
        return a.reshape(*a.shape[:-2], -1)
    a = jnp.moveaxis(a, 0, 1)
    return a.reshape(a.shape[0], -1, *a.shape[3:])


def _act_out(a, size, spec):
    if spec.channels_last:
        a = a.reshape(*a.shape[:-1], size, -1)
        return jnp.moveaxis(a, -2, 0)
    a = a.reshape(a.shape[0], size, -1, *a.shape[2:])
    return jnp.moveaxis(a, 1, 0)


def _w_in(w, bdim, size, spec):
    w = jnp.broadcast_to(w, (size, *w.shape)) if bdim is None else jnp.moveaxis(w, bdim, 0)
    if spec.channels_last:
        n = spec.ndim
        w = jnp.moveaxis(w, 0, n)
        return w.reshape(*w.shape[:n], -1, w.shape[-1])
    return w.reshape(-1, *w.shape[2:])


def _w_out(w, size, spec):
    if spec.channels_last:
        n = spec.ndim
        w = w.reshape(*w.shape[:n], size, -1, w.shape[-1])
        return jnp.moveaxis(w, n, 0)
    return w.reshape(size, -1, *w.shape[1:])


def _grouped(spec, size):
    return dataclasses.replace(
        spec,
        in_channels=spec.in_channels * size,
        out_channels=spec.out_channels * size,
        groups=spec.groups * size,
    )


def _fold_batch(a, bdim):
    a = jnp.moveaxis(a, bdim, 0)
    return a.reshape(-1, *a.shape[2:]), a.shape[0]


def _batch_rule(prim, kinds, out_kind):
    """kinds: "act" or "w" for each operand; out_kind likewise."""

    def rule(args, dims, *, spec, kernels, **params):
        dtype = jnp.result_type(*(arr.dtype for arr in args))

        def replanned(new):  # the same backend and placement, for the changed spec
            return phase_kernels(new, dtype, backend=kernels.backend, on_mesh=kernels.on_mesh)

        size = next(arr.shape[d] for arr, d in zip(args, dims) if d is not _NOT_MAPPED)
        w_mapped = any(k == "w" and d is not _NOT_MAPPED for k, d in zip(kinds, dims))
        if out_kind == "act" and not w_mapped:
            # Only activations are mapped: fold the mapped axis into the batch.
            folded = []
            for arr, d in zip(args, dims):
                if d is _NOT_MAPPED:
                    folded.append(arr)
                    continue
                f, _ = _fold_batch(arr, d)
                folded.append(f)
            # A mapped and an unmapped activation both present would need broadcasting.
            for i, (arr, d, k) in enumerate(zip(args, dims, kinds)):
                if k == "act" and d is _NOT_MAPPED:
                    folded[i] = jnp.broadcast_to(arr, (size, *arr.shape)).reshape(
                        -1, *arr.shape[1:]
                    )
            new = dataclasses.replace(spec, batch=spec.batch * size)
            out = prim.bind(*folded, spec=new, kernels=replanned(new), **params)
            return out.reshape(size, -1, *out.shape[1:]), 0
        gspec = _grouped(spec, size)
        ins = [
            _act_in(arr, d, size, spec) if k == "act" else _w_in(arr, d, size, spec)
            for arr, d, k in zip(args, dims, kinds)
        ]
        out = prim.bind(*ins, spec=gspec, kernels=replanned(gspec), **params)
        if out_kind == "act":
            return _act_out(out, size, spec), 0
        return _w_out(out, size, spec), 0

    batching.primitive_batchers[prim] = rule


_batch_rule(forward_p, ("act", "w"), "act")
_batch_rule(input_grad_p, ("act", "w"), "act")
_batch_rule(weight_grad_p, ("act", "act"), "w")


# ----------------------------------------------------------------------------- public


def _kernels(spec, dtype, kernels, *arrays) -> PhaseKernels:
    """The plan's kernels when given, else the planner's for these arrays' placement."""
    if kernels is not None:
        if not isinstance(kernels, PhaseKernels):
            raise TypeError(f"kernels must be a PhaseKernels or None, got {kernels!r}")
        return kernels
    return phase_kernels(
        spec, np.dtype(dtype), backend=jax.default_backend(), on_mesh=on_several_devices(*arrays)
    )


def phase(x, w, spec, *, precision=None, preferred_element_type=None, kernels=None):
    """Zero-free phase (sub-pixel) decomposition with hand-written differentiation rules.

    Each of the ``prod(stride)`` output phases is a dense stride-1 convolution of the
    input with a sub-kernel (``ceil(k/s)`` or ``floor(k/s)`` taps per dimension, the taps
    ``j`` with ``j * dilation = phase + crop_lo (mod stride)``), and the phases are
    interleaved. Gradients: the input gradient is the strided forward convolution, the
    weight gradient one GEMM per phase; both are primitives with their own JVP,
    transpose and batching rules, so every order of ``jvp``/``vjp`` and ``vmap`` works.

    ``kernels`` (a :class:`~jaxdeconv._plan.PhaseKernels`, from
    :func:`jaxdeconv.plan`) says how the forward pass and both gradients are
    computed; by default the planner decides from the backend and the arrays'
    placement (on one CPU device: GEMMs; on a mesh, GPU or TPU: convolutions). The
    arithmetic is the same zero-free sum either way; only the order of the
    additions differs.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxdeconv import conv_transpose
        >>> x = jnp.arange(4.0).reshape(1, 1, 2, 2)
        >>> w = jnp.ones((1, 1, 2, 2))
        >>> conv_transpose(x, w, stride=2, method="phase")[0, 0]
        Array([[0., 0., 1., 1.],
               [0., 0., 1., 1.],
               [2., 2., 3., 3.],
               [2., 2., 3., 3.]], dtype=float32)
    """
    dtype = jnp.result_type(x.dtype, w.dtype)
    return forward_p.bind(
        x.astype(dtype),
        w.astype(dtype),
        spec=spec,
        kernels=_kernels(spec, dtype, kernels, x, w),
        precision=precision,
        preferred_element_type=None
        if preferred_element_type is None
        else np.dtype(preferred_element_type),
    )


def phase_input_grad(g, w, spec, *, precision=None, preferred_element_type=None, kernels=None):
    """The transpose of :func:`phase` in ``x``: ``[N, C_in, *in]`` from ``g`` and ``w``."""
    return input_grad_p.bind(
        g,
        w,
        spec=spec,
        kernels=_kernels(spec, jnp.result_type(g.dtype, w.dtype), kernels, g, w),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def phase_weight_grad(x, g, spec, *, precision=None, preferred_element_type=None, kernels=None):
    """The transpose of :func:`phase` in ``w``: the weight gradient from ``x`` and ``g``."""
    return weight_grad_p.bind(
        x,
        g,
        spec=spec,
        kernels=_kernels(spec, jnp.result_type(x.dtype, g.dtype), kernels, x, g),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

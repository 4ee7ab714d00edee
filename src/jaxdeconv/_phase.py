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

* ``phase_conv_transpose(x, w)``: the transposed convolution (forward);
* ``phase_input_grad(g, w)``: its transpose in ``x``, the strided forward convolution;
* ``phase_weight_grad(x, g)``: its transpose in ``w``, computed per phase as one GEMM of
  the phase's input patches with the phase's output cotangent (zero-free as well).

Each has a JVP rule (bilinear), transpose rules (onto the other two) and a batching rule
(``vmap`` over activations folds into the batch; over weights into ``groups``), so
``jit``, ``vmap``, ``jvp``, ``vjp`` and higher orders all stay on the fast paths.

Each primitive has two lowerings (a static ``lowering`` parameter, chosen when
:func:`phase` binds it): ``"conv"``, the convolutions described above, which XLA's SPMD
partitioner splits with halo exchanges and XLA:GPU hands to cuDNN; and ``"gemm"``, on a
single CPU device, where one-group layers become plain row-major GEMMs that XLA:CPU
runs at its GEMM speed (:mod:`jaxdeconv._gemm`; the same zero-free sums, added in
another order). :func:`lowering_label` says which one a layer gets.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import _gemm
from ._gemm import out_dtype as _out_dtype
from ._plan import phase_plan
from ._shapes import ConvTransposeSpec

__all__ = ["phase", "phase_input_grad", "phase_plan", "phase_weight_grad"]

# ----------------------------------------------------------------------------- layouts


def _to_cl(a: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """Activation to channels-last ``[N, *spatial, C]``."""
    return a if spec.channels_last else jnp.moveaxis(a, 1, -1)


def _from_cl(a: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    return a if spec.channels_last else jnp.moveaxis(a, -1, 1)


def _w_to_cl(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """Weight to ``[*k, C_in, C_out/g]``."""
    return w if spec.channels_last else jnp.moveaxis(w, (0, 1), (-2, -1))


def _w_from_cl(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    return w if spec.channels_last else jnp.moveaxis(w, (-2, -1), (0, 1))


def _cl_dims(n: int) -> lax.ConvDimensionNumbers:
    act = (0, n + 1, *range(1, n + 1))
    return lax.ConvDimensionNumbers(lhs_spec=act, rhs_spec=(n + 1, n, *range(n)), out_spec=act)


def _pad_spatial(x: jax.Array, pads) -> jax.Array:
    """Pad (negative: crop) the spatial dims of a channels-last activation."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])


# ----------------------------------------------------------------------------- implementations


def _interleave(outs, spec, dtype, *, native=False):
    """Depth-to-space: phase outputs ``{p: [N, *n_p, C_out]}`` -> the output, spec layout.

    With ``native`` the phase outputs are already in spec's layout.
    """
    n = spec.ndim
    cl = spec.channels_last or not native
    sp = list(range(1, n + 1)) if cl else list(range(2, n + 2))
    q = tuple(-(-o // s) for o, s in zip(spec.output_size, spec.stride))
    shape = [spec.batch, *q, spec.out_channels] if cl else [spec.batch, spec.out_channels, *q]
    parts = []
    for p in itertools.product(*(range(s) for s in spec.stride)):
        y = outs.get(p)
        if y is None:
            parts.append(jnp.zeros(shape, dtype))
            continue
        pads = [(0, 0, 0)] * (n + 2)
        for ax, qi in zip(sp, q):
            pads[ax] = (0, qi - y.shape[ax], 0)
        parts.append(lax.pad(y.astype(dtype), jnp.zeros((), dtype), pads))
    y = jnp.stack(parts, axis=-1).reshape(*shape, *spec.stride)
    perm = []
    for a in range(n + 2):
        perm.append(a)
        if a in sp:
            perm.append(n + 2 + sp.index(a))
    y = y.transpose(perm)
    final = list(shape)
    for ax, qi, s in zip(sp, q, spec.stride):
        final[ax] = qi * s
    y = y.reshape(final)
    index = [slice(None)] * (n + 2)
    for ax, o in zip(sp, spec.output_size):
        index[ax] = slice(0, o)
    y = y[tuple(index)]
    return y if native else _from_cl(y, spec)


def _stride1_conv(x, k, pads, dils, groups, *, precision, preferred_element_type):
    """Stride-1 channels-last convolution ``[N, *sp, C] * [*T, C/g, O]``.

    With 3 or more spatial dimensions, the leading ones are folded into channels
    (their tap slices stacked) and batch, so XLA:CPU runs a 2-d convolution, which it
    does about twice as fast as a 3-d one (measured on the bench's 3-d layers).
    """
    n = x.ndim - 2
    if n < 3:
        return lax.conv_general_dilated(
            x,
            k,
            window_strides=(1,) * n,
            padding=pads,
            rhs_dilation=dils,
            dimension_numbers=_cl_dims(n),
            feature_group_count=groups,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    lead = n - 2
    t_lead = k.shape[:lead]
    x = _pad_spatial(x, [*pads[:lead], (0, 0), (0, 0)])
    sizes = [x.shape[1 + a] - (t - 1) * d for a, (t, d) in enumerate(zip(t_lead, dils))]
    slices = []
    for us in np.ndindex(*t_lead):
        index = [slice(None)] * x.ndim
        for a, (u, d, size) in enumerate(zip(us, dils, sizes)):
            index[1 + a] = slice(u * d, u * d + size)
        slices.append(x[tuple(index)])
    c = x.shape[-1]
    xs = jnp.stack(slices, axis=-2)  # [N, *L, H, W, T, C]
    t = xs.shape[-2]
    xs = xs.reshape(*xs.shape[:-2], t, groups, c // groups)
    xs = jnp.swapaxes(xs, -3, -2).reshape(-1, *xs.shape[1 + lead : n + 1], groups * t * c // groups)
    kk = k.reshape(t, *k.shape[lead:n], k.shape[-2], k.shape[-1])
    kk = jnp.moveaxis(kk, 0, 2).reshape(*k.shape[lead:n], t * k.shape[-2], k.shape[-1])
    y = lax.conv_general_dilated(
        xs,
        kk,
        window_strides=(1, 1),
        padding=pads[lead:],
        rhs_dilation=dils[lead:],
        dimension_numbers=_cl_dims(2),
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(x.shape[0], *sizes, *y.shape[1:])


def _forward_impl(x, w, *, spec, precision, preferred_element_type, lowering="conv"):
    """The transposed convolution, phase by phase (see the module docstring)."""
    dtype = jnp.result_type(x.dtype, w.dtype)
    if lowering == "gemm" and _gemm.applies(spec, dtype) and _gemm.strategy(spec) == "cols":
        return _gemm.forward(
            x, w, spec=spec, precision=precision, preferred_element_type=preferred_element_type
        )
    if _elementwise(spec):
        return _forward_elementwise(x, w, spec=spec, preferred_element_type=preferred_element_type)
    plan = phase_plan(spec)
    n = spec.ndim
    g = spec.groups
    cig, cog = spec.in_channels // g, spec.out_channels // g
    dtype = _out_dtype(jnp.result_type(x.dtype, w.dtype), preferred_element_type)
    xc = _to_cl(x, spec)
    wc = _w_to_cl(w, spec).reshape(*spec.kernel_size, g, cig, cog)
    wc = jnp.moveaxis(wc, n, n + 1)  # [*k, cig, g, cog]
    outs: dict[tuple[int, ...], jax.Array] = {}
    for combo, members in plan.convolutions():
        k = jnp.stack([_gemm.sub_kernel(wc, mem, 0) for mem in members], axis=-2)
        k = k.reshape(*k.shape[:n], cig, g * len(members) * cog)  # from [*T, cig, g, M, cog]
        pads = [grp.pad(i) for grp, i in zip(combo, spec.input_size)]
        y = _stride1_conv(
            xc,
            k,
            pads,
            tuple(grp.dil for grp in combo),
            g,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        y = y.reshape(*y.shape[:-1], g, len(members), cog)
        for mi, mem in enumerate(members):
            idx = (
                slice(None),
                *(slice(grp.offset(ph), grp.offset(ph) + ph.n) for grp, ph in zip(combo, mem)),
                slice(None),
                mi,
                slice(None),
            )
            outs[tuple(ph.p for ph in mem)] = y[idx].reshape(
                spec.batch, *(ph.n for ph in mem), spec.out_channels
            )
    return _interleave(outs, spec, dtype)


# Depthwise-like layers (one input channel per group, few outputs per group): XLA:CPU's
# grouped convolutions are slow there, and the work is memory-bound anyway, so each
# phase is a fused sum of (broadcast) products, one per tap.
ELEMENTWISE_MAX_OUT_PER_GROUP = 4


def _elementwise(spec: ConvTransposeSpec) -> bool:
    return (
        spec.groups > 1
        and spec.in_channels == spec.groups
        and spec.out_channels // spec.groups <= ELEMENTWISE_MAX_OUT_PER_GROUP
    )


def _forward_elementwise(x, w, *, spec, preferred_element_type):
    """Per phase, a fused sum over taps of input slices times per-channel weights.

    Works in spec's own layout (no transposes): ``[N, g, 1, *sp] * [g, cog, 1..]``.
    """
    plan = phase_plan(spec, 0.0)
    n, g = spec.ndim, spec.groups
    cog = spec.out_channels // g
    dtype = _out_dtype(jnp.result_type(x.dtype, w.dtype), preferred_element_type)
    x = x.astype(dtype)
    if spec.channels_last:
        xe, we = x[..., None], w.astype(dtype)  # [N, *sp, g, 1], [*k, g, cog]
    else:
        xe = x[:, :, None]  # [N, g, 1, *sp]
        we = jnp.moveaxis(w.astype(dtype), (0, 1), (-2, -1))  # [*k, g, cog]
    sp = list(range(1, n + 1)) if spec.channels_last else list(range(3, n + 3))
    # One padded copy of the input serves every phase (XLA would otherwise
    # materialize one per phase).
    lo_all, hi_all = [], []
    for dim, i in zip(plan.phases, spec.input_size):
        live = [ph for ph in dim if ph.taps]
        lo_all.append(max(ph.lo for ph in live) if live else 0)
        hi_all.append(max(ph.pad(i)[1] for ph in live) if live else 0)
    pads = [(0, 0, 0)] * xe.ndim
    for ax, lo, hi in zip(sp, lo_all, hi_all):
        pads[ax] = (lo, hi, 0)
    xp = lax.pad(xe, jnp.zeros((), dtype), pads)
    outs = {}
    for mem in itertools.product(*plan.phases):
        if any(not ph.taps for ph in mem):
            continue
        acc = None
        for us in itertools.product(*(range(len(ph.taps)) for ph in mem)):
            index = [slice(None)] * xe.ndim
            for ax, u, ph, lo in zip(sp, us, mem, lo_all):
                start = lo - ph.lo + u * ph.dil
                index[ax] = slice(start, start + ph.n)
            v = we[tuple(ph.taps[u] for u, ph in zip(us, mem))]  # [g, cog]
            if not spec.channels_last:
                v = v.reshape(g, cog, *(1,) * n)
            term = xp[tuple(index)] * v
            acc = term if acc is None else acc + term
        sizes = [ph.n for ph in mem]
        shape = (
            (spec.batch, *sizes, g * cog) if spec.channels_last else (spec.batch, g * cog, *sizes)
        )
        outs[tuple(ph.p for ph in mem)] = acc.reshape(shape)
    return _interleave(outs, spec, dtype, native=True)


def _grouped_native(a, spec, per_group):
    """Split the channel axis into ``[g, per_group]`` in spec's layout; spatial axes."""
    n = spec.ndim
    if spec.channels_last:
        return a.reshape(*a.shape[:-1], spec.groups, per_group), list(range(1, n + 1))
    return a.reshape(a.shape[0], spec.groups, per_group, *a.shape[2:]), list(range(3, n + 3))


def _tap_slices(g, spec):
    """``g`` at the full-result positions ``i * s + j * d`` of every input ``i``, per tap.

    ``g`` is grouped (:func:`_grouped_native`); yields ``(tap, slice)``.
    """
    ge, sp = _grouped_native(g, spec, spec.out_channels // spec.groups)
    return _gemm.tap_planes(ge, sp, spec)


def _w_taps(w, spec):
    """The weight as ``[*k, g, cog]`` (one input channel per group)."""
    return w if spec.channels_last else jnp.moveaxis(w, (0, 1), (-2, -1))


def _input_grad_elementwise(g, w, *, spec, preferred_element_type):
    n = spec.ndim
    dtype = _out_dtype(jnp.result_type(g.dtype, w.dtype), preferred_element_type)
    wt = _w_taps(w.astype(dtype), spec)
    cax = -1 if spec.channels_last else 2
    acc = None
    for tap, sl in _tap_slices(g.astype(dtype), spec):
        v = wt[tap] if spec.channels_last else wt[tap].reshape(*wt.shape[-2:], *(1,) * n)
        term = (sl * v).sum(cax)
        acc = term if acc is None else acc + term
    return acc


def _weight_grad_elementwise(x, g, *, spec, preferred_element_type):
    n = spec.ndim
    dtype = _out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    xe, sp = _grouped_native(x.astype(dtype), spec, 1)
    axes = (0, *sp)
    taps = [(xe * sl).sum(axes) for _, sl in _tap_slices(g.astype(dtype), spec)]
    wt = jnp.stack(taps).reshape(*spec.kernel_size, spec.groups, -1)  # [*k, g, cog]
    del n
    return wt if spec.channels_last else jnp.moveaxis(wt, (-2, -1), (0, 1))


def _input_grad_impl(g, w, *, spec, precision, preferred_element_type, lowering="conv"):
    """Transpose in ``x``: the strided forward convolution of ``g`` with ``w``."""
    if lowering == "gemm" and _gemm.applies(spec, jnp.result_type(g.dtype, w.dtype)):
        return _gemm.input_grad(
            g, w, spec=spec, precision=precision, preferred_element_type=preferred_element_type
        )
    if _elementwise(spec):
        return _input_grad_elementwise(
            g, w, spec=spec, preferred_element_type=preferred_element_type
        )
    from ._formulations import _dimension_numbers

    # Channels-last inside (XLA:CPU's convolutions are about 10% faster there, measured
    # on the bench's 2-d layers), spec's layout outside.
    cl = dataclasses.replace(spec, channels_last=True)
    dx = lax.conv_general_dilated(
        _to_cl(g, spec),
        _w_to_cl(w, spec),
        window_strides=spec.stride,
        padding=spec.crop,
        rhs_dilation=spec.dilation,
        dimension_numbers=_dimension_numbers(cl, kernel="torch"),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return _from_cl(dx, spec)


def _weight_grad_impl(x, g, *, spec, precision, preferred_element_type, lowering="conv"):
    """Transpose in ``w``: one GEMM per tap, of the tap's input window with its phase's ``g``.

    Tap ``j`` only ever meets the output phase whose residue it serves, so its gradient
    is ``sum_{n, q} xpad[n, q + u * dil, c_in] * g[n, p + s * q, c_out]``: a dot of two
    strided views contracting batch and space, in spec's own layout (measured faster on
    XLA:CPU than stacking patches or transposing to channels-last first).
    """
    if lowering == "gemm" and _gemm.applies(spec, jnp.result_type(x.dtype, g.dtype)):
        return _gemm.weight_grad(
            x, g, spec=spec, precision=precision, preferred_element_type=preferred_element_type
        )
    if _elementwise(spec):
        return _weight_grad_elementwise(
            x, g, spec=spec, preferred_element_type=preferred_element_type
        )
    plan = phase_plan(spec, 0.0)
    n, grp = spec.ndim, spec.groups
    cig, cog = spec.in_channels // grp, spec.out_channels // grp
    dtype = _out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    xe, sp = _grouped_native(x, spec, cig)
    ge, _ = _grouped_native(g, spec, cog)
    cax = n + 1 if spec.channels_last else 1  # the group axis
    contract = (0, *sp)
    dims = ((contract, contract), ((cax,), (cax,)))
    if grp == 1:
        xe, ge = jnp.squeeze(xe, cax), jnp.squeeze(ge, cax)
        sp = [a - 1 if a > cax else a for a in sp]
        contract = (0, *sp)
        dims = ((contract, contract), ((), ()))
    taps: dict[tuple[int, ...], jax.Array] = {}
    for mem in itertools.product(*plan.phases):
        if any(not ph.taps for ph in mem):
            continue
        index = [slice(None)] * ge.ndim
        pads = [(0, 0, 0)] * xe.ndim
        for ax, ph, s, i in zip(sp, mem, spec.stride, spec.input_size):
            index[ax] = slice(ph.p, None, s)
            pads[ax] = (*ph.pad(i), 0)
        gp = ge[tuple(index)]
        xp = lax.pad(xe, jnp.zeros((), xe.dtype), pads)
        for us in itertools.product(*(range(len(ph.taps)) for ph in mem)):
            window = [slice(None)] * xe.ndim
            for ax, u, ph in zip(sp, us, mem):
                window[ax] = slice(u * ph.dil, u * ph.dil + ph.n)
            dv = lax.dot_general(
                xp[tuple(window)],
                gp,
                dims,
                precision=precision,
                preferred_element_type=preferred_element_type,
            )  # [g, cig, cog] (or [cig, cog])
            taps[tuple(ph.taps[u] for u, ph in zip(us, mem))] = dv.reshape(spec.in_channels, cog)
    zero = jnp.zeros((spec.in_channels, cog), dtype)
    flat = [taps.get(t, zero).astype(dtype) for t in np.ndindex(*spec.kernel_size)]
    wc = jnp.stack(flat).reshape(*spec.kernel_size, spec.in_channels, cog)
    return _w_from_cl(wc, spec)


# ----------------------------------------------------------------------------- primitives


def _make_primitive(name, impl, out_shape):
    prim = Primitive(name)
    jitted = jax.jit(
        impl, static_argnames=("spec", "precision", "preferred_element_type", "lowering")
    )
    prim.def_impl(lambda a, b, **params: jitted(a, b, **params))

    def abstract_eval(a, b, *, spec, precision, preferred_element_type, lowering):
        del precision, lowering
        dtype = _out_dtype(jnp.result_type(a.dtype, b.dtype), preferred_element_type)
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

    def rule(args, dims, *, spec, **params):
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
            out = prim.bind(*folded, spec=new, **params)
            return out.reshape(size, -1, *out.shape[1:]), 0
        gspec = _grouped(spec, size)
        ins = [
            _act_in(arr, d, size, spec) if k == "act" else _w_in(arr, d, size, spec)
            for arr, d, k in zip(args, dims, kinds)
        ]
        out = prim.bind(*ins, spec=gspec, **params)
        if out_kind == "act":
            return _act_out(out, size, spec), 0
        return _w_out(out, size, spec), 0

    batching.primitive_batchers[prim] = rule


_batch_rule(forward_p, ("act", "w"), "act")
_batch_rule(input_grad_p, ("act", "w"), "act")
_batch_rule(weight_grad_p, ("act", "act"), "w")


# ----------------------------------------------------------------------------- public


def on_several_devices(*arrays) -> bool:
    """Whether the arrays (concrete or traced) are placed on a mesh of several devices."""
    try:
        if jax.sharding.get_abstract_mesh().size > 1:
            return True
    except (AttributeError, ValueError):
        pass
    for a in arrays:
        mesh = getattr(getattr(jax.typeof(a), "sharding", None), "mesh", None)
        if mesh is not None and getattr(mesh, "size", 1) > 1:
            return True
        sharding = getattr(a, "sharding", None)  # a concrete array
        if sharding is not None and len(getattr(sharding, "device_set", ())) > 1:
            return True
    return False


def _lowering(*arrays) -> str:
    """``"gemm"`` on one CPU device, else ``"conv"``.

    On a mesh the convolutions, which XLA's SPMD partitioner splits with halo
    exchanges (the GEMMs' flattened ``N * spatial`` axis would make it gather); on
    GPU and TPU the convolutions too, which XLA hands to cuDNN or the TPU's
    convolution units (the GEMM rule was measured on CPU only).
    """
    if jax.default_backend() != "cpu" or on_several_devices(*arrays):
        return "conv"
    return "gemm"


def lowering_label(spec: ConvTransposeSpec, dtype=np.float32, lowering: str = "gemm") -> str:
    """How the phase primitives run ``spec`` (``"gemm"``: on one CPU device).

    ``"GEMM+col2im"`` (the ``cols`` strategy of :mod:`jaxdeconv._gemm`, ``", via NHWC"``
    when its gradients go through channels-last), ``"phase convs+GEMM grads"`` (the
    ``phase`` strategy), ``"elementwise"`` (depthwise-like layers) or ``"convs"``
    (the convolution lowering).
    """
    if lowering == "gemm" and _gemm.applies(spec, dtype):
        if _gemm.strategy(spec) == "phase":
            return "phase convs+GEMM grads"
        return "GEMM+col2im" + (", via NHWC" if _gemm._via_channels_last(spec) else "")
    return "elementwise" if _elementwise(spec) else "convs"


def phase(x, w, spec, *, precision=None, preferred_element_type=None):
    """Zero-free phase (sub-pixel) decomposition with hand-written differentiation rules.

    Each of the ``prod(stride)`` output phases is a dense stride-1 convolution of the
    input with a sub-kernel (``ceil(k/s)`` or ``floor(k/s)`` taps per dimension, the taps
    ``j`` with ``j * dilation = phase + crop_lo (mod stride)``), and the phases are
    interleaved. Gradients: the input gradient is the strided forward convolution, the
    weight gradient one GEMM per phase; both are primitives with their own JVP,
    transpose and batching rules, so every order of ``jvp``/``vjp`` and ``vmap`` works.

    On one device, channels-first layers with one group are lowered to GEMMs instead
    (:mod:`jaxdeconv._gemm`): forward GEMM + col2im where that beats the phase
    convolutions, gradients from the im2col'd cotangent. The arithmetic is the same
    zero-free sum; only the order of the additions differs.

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
        precision=precision,
        preferred_element_type=None
        if preferred_element_type is None
        else np.dtype(preferred_element_type),
        lowering=_lowering(x, w),
    )


def phase_input_grad(g, w, spec, *, precision=None, preferred_element_type=None):
    """The transpose of :func:`phase` in ``x``: ``[N, C_in, *in]`` from ``g`` and ``w``."""
    return input_grad_p.bind(
        g,
        w,
        spec=spec,
        precision=precision,
        preferred_element_type=preferred_element_type,
        lowering=_lowering(g, w),
    )


def phase_weight_grad(x, g, spec, *, precision=None, preferred_element_type=None):
    """The transpose of :func:`phase` in ``w``: the weight gradient from ``x`` and ``g``."""
    return weight_grad_p.bind(
        x,
        g,
        spec=spec,
        precision=precision,
        preferred_element_type=preferred_element_type,
        lowering=_lowering(x, g),
    )

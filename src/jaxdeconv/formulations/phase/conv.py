"""The phase formulation's convolution lowering (and its depthwise special case).

Forward: one stride-1 convolution per group of output phases
(:mod:`jaxdeconv._phases`), interleaved (depth-to-space). Input gradient: the
strided forward convolution. Weight gradient: one dot per tap of the tap's input
window with its phase's cotangent. Depthwise-like layers (see
:func:`jaxdeconv._plan.elementwise`): fused per-tap products in spec's own layout.
XLA's SPMD partitioner splits all of these with halo exchanges, and XLA:GPU hands
the convolutions to cuDNN.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..._layout import (
    act_from_channels_last,
    act_to_channels_last,
    channels_last_dimension_numbers,
    dimension_numbers,
    weight_from_channels_last,
    weight_to_channels_last,
)
from ..._phases import phase_plan
from .gemm import out_dtype, settled, sub_kernel, tap_planes

__all__ = [
    "forward_convs",
    "forward_elementwise",
    "input_grad_convs",
    "input_grad_elementwise",
    "interleave",
    "weight_grad_convs",
    "weight_grad_elementwise",
]


def _pad_spatial(x: jax.Array, pads) -> jax.Array:
    """Pad (negative: crop) the spatial dims of a channels-last activation."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])


# ----------------------------------------------------------------------------- implementations


def interleave(outs, spec, dtype, *, native=False):
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
    return y if native else act_from_channels_last(y, spec)


def _stride1_conv(x, k, pads, dils, groups, *, precision, preferred_element_type, fold):
    """Stride-1 channels-last convolution ``[N, *sp, C] * [*T, C/g, O]``.

    With ``fold`` and 3 or more spatial dimensions, the leading ones are folded into
    channels (their tap slices stacked) and batch, so XLA:CPU runs a 2-d convolution,
    which it does faster than a 3-d one.
    """
    n = x.ndim - 2
    if n < 3 or not fold:
        return lax.conv_general_dilated(
            x,
            k,
            window_strides=(1,) * n,
            padding=pads,
            rhs_dilation=dils,
            dimension_numbers=channels_last_dimension_numbers(n),
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
        dimension_numbers=channels_last_dimension_numbers(2),
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(x.shape[0], *sizes, *y.shape[1:])


def forward_convs(x, w, *, spec, precision, preferred_element_type, fold_leading=True):
    """The transposed convolution, phase by phase (see the module docstring)."""
    plan = phase_plan(spec)
    n = spec.ndim
    g = spec.groups
    cig, cog = spec.in_channels // g, spec.out_channels // g
    dtype = out_dtype(jnp.result_type(x.dtype, w.dtype), preferred_element_type)
    xc = act_to_channels_last(x, spec)
    wc = weight_to_channels_last(w, spec).reshape(*spec.kernel_size, g, cig, cog)
    wc = jnp.moveaxis(wc, n, n + 1)  # [*k, cig, g, cog]
    outs: dict[tuple[int, ...], jax.Array] = {}
    for combo, members in plan.convolutions():
        k = jnp.stack([sub_kernel(wc, mem, 0) for mem in members], axis=-2)
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
            fold=fold_leading,
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
    return interleave(outs, spec, dtype)


def forward_elementwise(x, w, *, spec, preferred_element_type):
    """Per phase, a fused sum over taps of input slices times per-channel weights.

    Works in spec's own layout (no transposes): ``[N, g, 1, *sp] * [g, cog, 1..]``.
    """
    plan = phase_plan(spec, 0.0)
    n, g = spec.ndim, spec.groups
    cog = spec.out_channels // g
    dtype = out_dtype(jnp.result_type(x.dtype, w.dtype), preferred_element_type)
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
    return interleave(outs, spec, dtype, native=True)


def _grouped_native(a, spec, per_group):
    """Split the channel axis into ``[g, per_group]`` in spec's layout; spatial axes."""
    n = spec.ndim
    if spec.channels_last:
        return a.reshape(*a.shape[:-1], spec.groups, per_group), list(range(1, n + 1))
    return a.reshape(a.shape[0], spec.groups, per_group, *a.shape[2:]), list(range(3, n + 3))


def _tap_slices(g, spec):
    """``g`` at the full-result positions ``i * s + j * d`` of every input ``i``, per tap.

    ``g`` is grouped (:func:`_grouped_native`) and :func:`~.gemm.settled` (read once
    per tap); yields ``(tap, slice)``.
    """
    ge, sp = _grouped_native(settled(g, spec), spec, spec.out_channels // spec.groups)
    return tap_planes(ge, sp, spec)


def input_grad_elementwise(g, w, *, spec, preferred_element_type):
    n = spec.ndim
    dtype = out_dtype(jnp.result_type(g.dtype, w.dtype), preferred_element_type)
    wt = weight_to_channels_last(w.astype(dtype), spec)  # [*k, g, cog]
    cax = -1 if spec.channels_last else 2
    acc = None
    for tap, sl in _tap_slices(g.astype(dtype), spec):
        v = wt[tap] if spec.channels_last else wt[tap].reshape(*wt.shape[-2:], *(1,) * n)
        term = (sl * v).sum(cax)
        acc = term if acc is None else acc + term
    return acc


def weight_grad_elementwise(x, g, *, spec, preferred_element_type):
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    xe, sp = _grouped_native(x.astype(dtype), spec, 1)
    axes = (0, *sp)
    taps = [(xe * sl).sum(axes) for _, sl in _tap_slices(g.astype(dtype), spec)]
    wt = jnp.stack(taps).reshape(*spec.kernel_size, spec.groups, -1)  # [*k, g, cog]
    return weight_from_channels_last(wt, spec)


def input_grad_convs(g, w, *, spec, precision, preferred_element_type):
    """Transpose in ``x``: the strided forward convolution of ``g`` with ``w``."""
    # Channels-last inside (XLA:CPU's convolutions are faster there), spec's layout outside.
    dx = lax.conv_general_dilated(
        act_to_channels_last(g, spec),
        weight_to_channels_last(w, spec),
        window_strides=spec.stride,
        padding=spec.crop,
        rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(spec.ndim, channels_last=True, kernel="torch"),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return act_from_channels_last(dx, spec)


def weight_grad_convs(x, g, *, spec, precision, preferred_element_type):
    """Transpose in ``w``: one GEMM per tap, of the tap's input window with its phase's ``g``.

    Tap ``j`` only ever meets the output phase whose residue it serves, so its gradient
    is ``sum_{n, q} xpad[n, q + u * dil, c_in] * g[n, p + s * q, c_out]``: a dot of two
    strided views contracting batch and space, in spec's own layout (measured faster on
    XLA:CPU than stacking patches or transposing to channels-last first).
    """
    plan = phase_plan(spec, 0.0)
    n, grp = spec.ndim, spec.groups
    cig, cog = spec.in_channels // grp, spec.out_channels // grp
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
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
    return weight_from_channels_last(wc, spec)

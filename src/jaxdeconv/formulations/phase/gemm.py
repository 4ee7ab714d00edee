"""GEMM lowerings of the zero-free transposed convolution (one group, either layout).

The phase primitives (:mod:`.primitives`) lower here on one CPU device when the plan
(:mod:`jaxdeconv._plan`) says so. Every product below is a plain matrix product of
useful numbers; no inserted zero is multiplied. Two strategies:

``"cols"`` (torch's own CPU algorithm):

* forward, :func:`forward`: one GEMM of the whole kernel with the input,
  ``cols[C_out * K, N * in] = W^T @ X``, then col2im: tap ``j`` of input ``i`` lands
  on full-result position ``i * s + j * d``, so each output phase is a sum of
  shifted tap planes, and the phases are interleaved. XLA fuses the overlap-add,
  the interleave and the crop into one pass;
* gradients: ``G[C_out * K, N * in]``, the output cotangent read at the positions
  ``i * s + j * d`` of every tap (im2col with stride), serves both ``dX = W @ G`` and
  ``dW = X @ G^T``. The two gradient primitives build ``G`` with the same
  operations, so in one program XLA computes it once (common subexpressions).

``"phase"`` (where every output phase is one dense convolution and ``C_in`` is
small, so the GEMMs above would have a short inner dimension):

* forward: the phase convolutions of :mod:`.conv`;
* gradients: the transposes of those convolutions written as GEMMs. With ``P`` the
  patches of the input (im2col, stride 1) and ``Y`` the phases of the output
  cotangent (space-to-depth), ``dK = Y @ P^T`` and ``dP = K^T @ Y``, whose patches
  are added back into ``dX`` (col2im, stride 1). ``Y`` is again shared.

Layouts: channels-first activations are handled as ``[C, N, *spatial]`` (a swap of
the two leading axes, a block copy), which makes every product a row-major GEMM and
the interleave a pass over contiguous rows. Channels-last activations already are the
row-major ``X[N * in, C_in]``; there ``G`` is ``[N * in, K * C_out]`` (``C_out``
contiguous, as in ``g``) and ``dX = G @ W`` has the long axis as its rows. With few
input channels, channels-first gradients are computed that way too (``nhwc``).
XLA:CPU gives products to its fast GEMM (YNNPACK) only when the left operand is
contracted on its last axis; where a transposed operand is
needed it is materialized behind an optimization barrier (XLA would otherwise fold
the transpose back into the product).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..._layout import weight_from_torch, weight_to_torch
from ..._phases import phase_plan
from ..._spec import ConvTransposeSpec


def _acc_dtype(dtype, preferred_element_type):
    if preferred_element_type is not None:
        return np.dtype(preferred_element_type)
    # Half-precision products accumulate and overlap-add in float32, like a conv.
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)


def out_dtype(dtype, preferred_element_type):
    """The result dtype: ``preferred_element_type`` if given, else the inputs' dtype."""
    return np.dtype(preferred_element_type) if preferred_element_type is not None else dtype


def _to_cn(a: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """An activation in spec's layout -> ``[C, N, *sp]``."""
    return jnp.moveaxis(a, -1, 0) if spec.channels_last else jnp.swapaxes(a, 0, 1)


def _from_cn(a: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    return jnp.moveaxis(a, 0, -1) if spec.channels_last else jnp.swapaxes(a, 0, 1)


def _geometry(spec):
    """Per dimension ``(k_virtual, s_eff, A, Q)`` of the tap/residue regrouping.

    Tap ``j`` of input ``i`` lands on ``i * s + j * d``. With the virtual kernel
    ``kv = (k - 1) * d + 1`` (the dilated taps, zeros between them) padded to
    ``A * s`` taps (``A = ceil(kv / s)``), virtual tap ``a * s + r`` lands on
    ``(i + a) * s + r``: output row ``q = i + a`` (``Q = in + A - 1`` rows) at
    residue ``r``. So the overlap-add is a sum of ``prod(A)`` shifted planes, and
    ``k <= s`` (``A == 1``) is a pure reshape. A dimension with one input position
    may take any stride at least ``kv``: it takes ``kv`` (no overlap, ``A == 1``).
    """
    geo = []
    for k, s, d, i in zip(spec.kernel_size, spec.stride, spec.dilation, spec.input_size):
        kv = (k - 1) * d + 1
        se = max(s, kv) if i == 1 else s
        a = -(-kv // se)
        geo.append((kv, se, a, i + a - 1))
    return geo


def col2im(c, spec, nlead, ntrail, acc):
    """The overlap-add of ``c`` ``[*k, *lead, *in, *trail]`` -> ``[*lead, *out, *trail]``.

    The spatial output is the full result cropped (or extended) by ``spec.crop``.
    The program has ``prod(A)`` shifted adds (see :func:`_geometry`), not one per tap.
    """
    n = spec.ndim
    geo = _geometry(spec)
    zero = jnp.zeros((), acc)
    pads = [(0, a * se - kv, d - 1) for (kv, se, a, _), d in zip(geo, spec.dilation)]
    pads += [(0, 0, 0)] * (c.ndim - n)
    c = lax.pad(c.astype(acc), zero, pads)  # [*(A * s), *lead, *in, *trail]
    rest = c.shape[n:]
    c = c.reshape(*(v for kv, se, a, q in geo for v in (a, se)), *rest)
    sp = list(range(n + nlead, 2 * n + nlead))  # in axes of a plane [*s, *lead, *in, *trail]
    y = None
    for shift in itertools.product(*(range(a) for _, _, a, _ in geo)):
        index = tuple(v for u in shift for v in (u, slice(None)))
        t = c[index]
        tp = [(0, 0, 0)] * t.ndim
        for ax, u, (_, _, a, _) in zip(sp, shift, geo):
            tp[ax] = (u, a - 1 - u, 0)
        t = lax.pad(t, zero, tp)
        y = t if y is None else y + t
    # [*s, *lead, *Q, *trail] -> [*lead, Q0, s0, Q1, s1, ..., *trail]
    perm = list(range(n, n + nlead))
    for m in range(n):
        perm += [n + nlead + m, m]
    perm += list(range(2 * n + nlead, y.ndim))
    lead, trail = y.shape[n : n + nlead], y.shape[2 * n + nlead :]
    y = y.transpose(perm).reshape(*lead, *(q * se for _, se, _, q in geo), *trail)
    crop = [(0, 0, 0)] * y.ndim
    for m, ((lo, hi), (kv, se, _, q), i, s) in enumerate(
        zip(spec.crop, geo, spec.input_size, spec.stride)
    ):
        full = (i - 1) * s + kv
        crop[nlead + m] = (-lo, -hi - (q * se - full), 0)
    return lax.pad(y, zero, crop)


def im2col(a, spec, nlead, ntrail, tap_at):
    """``a`` ``[*lead, *out, *trail]`` at the full-result positions ``i * s + j * d``
    of every tap ``j`` and input ``i`` (im2col with stride, the adjoint of
    :func:`col2im`): ``[*lead, *in, *trail]`` with the ``n`` tap axes ``[*k]`` inserted
    at position ``tap_at`` of that shape. ``prod(A)`` slices, not one per tap.
    """
    n = spec.ndim
    geo = _geometry(spec)
    zero = jnp.zeros((), a.dtype)
    pads = [(0, 0, 0)] * a.ndim
    for m, ((lo, hi), (kv, se, _, q), i, s) in enumerate(
        zip(spec.crop, geo, spec.input_size, spec.stride)
    ):
        full = (i - 1) * s + kv
        pads[nlead + m] = (lo, hi + q * se - full, 0)
    ap = lax.pad(a, zero, pads)  # [*lead, *(Q * s), *trail]
    lead, trail = a.shape[:nlead], a.shape[nlead + n :]
    ap = ap.reshape(*lead, *(v for _, se, _, q in geo for v in (q, se)), *trail)
    planes = []
    for shift in itertools.product(*(range(a_) for _, _, a_, _ in geo)):
        start, limit = [0] * ap.ndim, list(ap.shape)
        for m, (u, i) in enumerate(zip(shift, spec.input_size)):
            start[nlead + 2 * m], limit[nlead + 2 * m] = u, u + i
        planes.append(lax.slice(ap, start, limit))  # [*lead, in0, s0, ..., *trail]
    g = jnp.stack(planes).reshape(*(a_ for _, _, a_, _ in geo), *planes[0].shape)
    # -> [*(A, s), *lead, *in, *trail], then the virtual taps -> the k real ones
    perm = []
    for m in range(n):
        perm += [m, n + nlead + 2 * m + 1]
    perm += list(range(n, n + nlead)) + [n + nlead + 2 * m for m in range(n)]
    perm += list(range(3 * n + nlead, g.ndim))
    g = g.transpose(perm).reshape(
        *(a_ * se for _, se, a_, _ in geo), *lead, *spec.input_size, *trail
    )
    start, limit, strides = [0] * g.ndim, list(g.shape), [1] * g.ndim
    for m, ((kv, _, _, _), d) in enumerate(zip(geo, spec.dilation)):
        limit[m], strides[m] = kv, d
    g = lax.slice(g, start, limit, strides)  # [*k, *lead, *in, *trail]
    rest = list(range(n, g.ndim))
    return g.transpose(rest[:tap_at] + list(range(n)) + rest[tap_at:])


def forward(x, w, *, spec, precision, preferred_element_type):
    """GEMM + col2im (see the module docstring), in spec's layout."""
    n = spec.ndim
    w = weight_to_torch(w, spec)
    ci, co = spec.in_channels, spec.out_channels
    size, k = spec.input_size, spec.kernel_size
    dtype = jnp.result_type(x.dtype, w.dtype)
    acc = _acc_dtype(dtype, preferred_element_type)
    taps_first = list(range(n))
    if spec.channels_last:
        # The input is already X[N * in, C_in]: cols[N, *in, K, C_out] = X @ W, the
        # weight arranged [C_in, K, C_out] so that each tap's plane keeps C_out
        # contiguous, as the output does.
        cols = lax.dot_general(
            x.reshape(-1, ci),
            jnp.moveaxis(w, 1, -1).reshape(ci, -1),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(spec.batch, *size, *k, co)
        cols = jnp.moveaxis(cols, [n + 1 + m for m in range(n)], taps_first)
        y = col2im(cols, spec, 1, 1, acc)  # [N, *out, C_out]
    elif w.size <= x.size:
        # cols[C_out * K, N * in] = W^T @ X. W^T is materialized (the barrier keeps XLA
        # from folding the transpose back into the product): XLA:CPU hands only
        # products whose left operand is contracted on its last axis to its fast
        # GEMM (YNNPACK).
        cols = lax.dot_general(
            lax.optimization_barrier(w.reshape(ci, -1).T),
            _to_cn(x, spec).reshape(ci, -1),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(co, *k, spec.batch, *size)
        cols = jnp.moveaxis(cols, [1 + m for m in range(n)], taps_first)
        y = jnp.swapaxes(col2im(cols, spec, 2, 0, acc), 0, 1)  # [C_out, N, *out] -> NC*
    else:
        # A weight larger than the input (deep, small layers): transpose the input
        # instead, cols[N * in, C_out * K] = X^T @ W.
        xt = jnp.moveaxis(x, 1, -1).reshape(-1, ci)
        cols = lax.dot_general(
            xt,
            w.reshape(ci, -1),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(spec.batch, *size, co, *k)
        cols = jnp.moveaxis(cols, [n + 2 + m for m in range(n)], taps_first)
        y = jnp.moveaxis(col2im(cols, spec, 1, 1, acc), -1, 1)  # [N, *out, C_out] -> NC*
    return y.astype(out_dtype(dtype, preferred_element_type))


def tap_planes(a, axes, spec):
    """``a`` (an output-sized activation, ``axes`` its spatial axes) at the full-result
    positions ``i * s + j * d`` of every input ``i``: yields ``(tap, plane)`` per tap."""
    pads = [(0, 0, 0)] * a.ndim
    for ax, (lo, hi) in zip(axes, spec.crop):
        pads[ax] = (lo, hi, 0)  # back to the full (uncropped) result
    ap = lax.pad(a, jnp.zeros((), a.dtype), pads)
    for tap in np.ndindex(*spec.kernel_size):
        start, limit, strides = [0] * ap.ndim, list(ap.shape), [1] * ap.ndim
        for ax, j, dd, i, st in zip(axes, tap, spec.dilation, spec.input_size, spec.stride):
            start[ax], limit[ax], strides[ax] = j * dd, j * dd + (i - 1) * st + 1, st
        yield tap, lax.slice(ap, start, limit, strides)


def cotangent_cols(g, spec):
    """``g`` at full-result positions ``i * s + j * d``, per tap (im2col with stride).

    Channels-first: ``G[C_out * K, N * in]``; channels-last: ``G[N * in, K * C_out]``
    (each layout's contiguous axis stays contiguous).
    """
    n = spec.ndim
    if spec.channels_last:  # [N, *out, C] -> [N, *in, *k, C]
        return im2col(g, spec, 1, 1, 1 + n).reshape(
            -1, spec.out_channels * math.prod(spec.kernel_size)
        )
    # [C, N, *out] -> [C, *k, N, *in]
    return im2col(_to_cn(g, spec), spec, 2, 0, 1).reshape(
        spec.out_channels * math.prod(spec.kernel_size), -1
    )


# ----------------------------------------------------------------------------- phase GEMMs


def _patches(xt, combo, spec):
    """``P[C_in * T, N * size]``: the convolution's input windows, ``xt`` ``[C_in, N, *in]``."""
    pads = [(0, 0, 0), (0, 0, 0)]
    pads += [(*grp.pad(i), 0) for grp, i in zip(combo, spec.input_size)]
    xp = lax.pad(xt, jnp.zeros((), xt.dtype), pads)
    planes = []
    for us in itertools.product(*(range(grp.n_taps) for grp in combo)):
        index = [slice(None), slice(None)]
        index += [slice(u * grp.dil, u * grp.dil + grp.size) for u, grp in zip(us, combo)]
        planes.append(xp[tuple(index)])
    return jnp.stack(planes, 1).reshape(xt.shape[0] * len(planes), -1)


def sub_kernel(w, phases, first_axis):
    """The taps of ``w`` that serve the output phase ``phases`` (one per dimension);
    ``w``'s kernel axes start at ``first_axis``."""
    for ax, ph in enumerate(phases):
        w = jnp.take(w, np.asarray(ph.taps), axis=first_axis + ax)
    return w


def _sub_kernels(w, members, spec):
    """``K[M * C_out, C_in * T]``: the members' sub-kernels, ``w`` in torch's layout."""
    ci, co = spec.in_channels, spec.out_channels
    kernels = [sub_kernel(w, mem, 2).reshape(ci, co, -1) for mem in members]
    return jnp.stack(kernels).transpose(0, 2, 1, 3).reshape(len(members) * co, -1)


def _cotangent_phases(gt, combo, members, spec):
    """``Y[M * C_out, N * size]``: the members' output phases placed in the window."""
    parts = []
    for mem in members:
        index = [slice(None), slice(None)]
        index += [slice(ph.p, None, s) for ph, s in zip(mem, spec.stride)]
        pads = [(0, 0, 0), (0, 0, 0)]
        pads += [
            (grp.offset(ph), grp.size - grp.offset(ph) - ph.n, 0) for grp, ph in zip(combo, mem)
        ]
        parts.append(lax.pad(gt[tuple(index)], jnp.zeros((), gt.dtype), pads))
    return jnp.stack(parts).reshape(len(members) * spec.out_channels, -1)


def _input_grad_phase(g, w, *, spec, precision, acc):
    """Per convolution ``dP = K^T @ Y``, its patches added back (col2im, stride 1)."""
    ci = spec.in_channels
    gt = _to_cn(g, spec)
    w = weight_to_torch(w, spec)
    dx = None
    zero = jnp.zeros((), acc)
    for combo, members in phase_plan(spec).convolutions():
        kt = lax.optimization_barrier(_sub_kernels(w, members, spec).T)  # see forward
        dp = lax.dot_general(
            kt,
            _cotangent_phases(gt, combo, members, spec),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        )
        taps = [grp.n_taps for grp in combo]
        dp = dp.reshape(ci, *taps, spec.batch, *(grp.size for grp in combo))
        for us in itertools.product(*(range(t) for t in taps)):
            pads = [(0, 0, 0), (0, 0, 0)]
            for u, grp, i in zip(us, combo, spec.input_size):
                lo, hi = grp.pad(i)
                pads.append((u * grp.dil - lo, (grp.n_taps - 1 - u) * grp.dil - hi, 0))
            t = lax.pad(dp[(slice(None), *us)], zero, pads)
            dx = t if dx is None else dx + t
    return _from_cn(dx, spec)


def _weight_grad_phase(x, g, *, spec, precision, acc):
    """Per convolution ``dK = Y @ P^T``, scattered back to the taps."""
    ci, co = spec.in_channels, spec.out_channels
    xt, gt = _to_cn(x, spec), _to_cn(g, spec)
    taps: dict[tuple[int, ...], jax.Array] = {}
    for combo, members in phase_plan(spec).convolutions():
        dk = lax.dot_general(
            _cotangent_phases(gt, combo, members, spec),
            _patches(xt, combo, spec),
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        )
        counts = [grp.n_taps for grp in combo]
        dk = dk.reshape(len(members), co, ci, *counts)
        for mi, mem in enumerate(members):
            for us in itertools.product(*(range(t) for t in counts)):
                tap = tuple(ph.taps[u] for u, ph in zip(us, mem))
                taps[tap] = dk[(mi, slice(None), slice(None), *us)]
    zero = jnp.zeros((co, ci), acc)
    flat = [taps.get(t, zero) for t in np.ndindex(*spec.kernel_size)]
    return jnp.stack(flat, -1).reshape(co, ci, *spec.kernel_size).swapaxes(0, 1)  # torch


# ----------------------------------------------------------------------------- gradients


def _cl_spec(spec: ConvTransposeSpec) -> ConvTransposeSpec:
    return dataclasses.replace(spec, channels_last=True)


def input_grad(g, w, *, spec, precision, preferred_element_type, strategy, nhwc=False):
    """The input gradient: ``dX = W @ G`` (``"cols"``) or the phase GEMMs (``"phase"``).

    With ``nhwc`` a channels-first layer is computed channels-last (where ``dX``'s
    rows are ``N * in`` instead of the few ``C_in``).
    """
    if nhwc and not spec.channels_last:
        dx = input_grad(
            jnp.moveaxis(g, 1, -1),
            jnp.moveaxis(w, (0, 1), (-2, -1)),
            spec=_cl_spec(spec),
            precision=precision,
            preferred_element_type=preferred_element_type,
            strategy=strategy,
        )
        return jnp.moveaxis(dx, -1, 1)
    dtype = jnp.result_type(g.dtype, w.dtype)
    acc = _acc_dtype(dtype, preferred_element_type)
    if strategy == "phase":
        dx = _input_grad_phase(g, w, spec=spec, precision=precision, acc=acc)
    elif spec.channels_last:  # dX[N * in, C_in] = G @ W[K * C_out, C_in]
        ci = spec.in_channels
        dx = lax.dot_general(
            cotangent_cols(g, spec),
            jnp.moveaxis(w, -2, -1).reshape(-1, ci),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(spec.batch, *spec.input_size, ci)
    else:
        ci = spec.in_channels
        dx = lax.dot_general(
            w.reshape(ci, -1),
            cotangent_cols(g, spec),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        )
        dx = _from_cn(dx.reshape(ci, spec.batch, *spec.input_size), spec)
    return dx.astype(out_dtype(dtype, preferred_element_type))


def weight_grad(x, g, *, spec, precision, preferred_element_type, strategy, nhwc=False):
    """The weight gradient: ``dW = X @ G^T`` (``"cols"``) or the phase GEMMs (``"phase"``)."""
    if nhwc and not spec.channels_last:
        dw = weight_grad(
            jnp.moveaxis(x, 1, -1),
            jnp.moveaxis(g, 1, -1),
            spec=_cl_spec(spec),
            precision=precision,
            preferred_element_type=preferred_element_type,
            strategy=strategy,
        )
        return jnp.moveaxis(dw, (-2, -1), (0, 1))
    dtype = jnp.result_type(x.dtype, g.dtype)
    acc = _acc_dtype(dtype, preferred_element_type)
    if strategy == "phase":
        dw = _weight_grad_phase(x, g, spec=spec, precision=precision, acc=acc)
        dw = weight_from_torch(dw, spec)
    elif spec.channels_last:  # dW[C_in, K * C_out] = X^T @ G
        ci = spec.in_channels
        dw = lax.dot_general(
            lax.optimization_barrier(x.reshape(-1, ci).T),  # see forward
            cotangent_cols(g, spec),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(ci, *spec.kernel_size, spec.out_channels)
        dw = jnp.moveaxis(dw, 0, -2)
    else:
        ci = spec.in_channels
        dw = lax.dot_general(
            x.swapaxes(0, 1).reshape(ci, -1),
            cotangent_cols(g, spec),
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(spec.weight_shape)
    return dw.astype(out_dtype(dtype, preferred_element_type))

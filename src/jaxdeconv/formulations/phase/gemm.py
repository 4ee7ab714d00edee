"""GEMM lowerings of the zero-free transposed convolution (either layout, ungrouped:
the primitives run a grouped layer group by group).

The phase primitives (:mod:`.primitives`) lower here on one CPU device when the plan
(:mod:`jaxdeconv._plan`) says so. Every product below is a plain matrix product of
useful numbers; no inserted zero is multiplied. Two strategies:

``"cols"`` (torch's own CPU algorithm):

* forward, :func:`forward`: one GEMM of the whole kernel with the input,
  ``cols[C_out * K, N * in] = W^T @ X``, then col2im: tap ``j`` of input ``i`` lands
  on full-result position ``i * s + j * d = (i + a) * s + r``, so the taps of one
  shift ``a`` fill residues ``r`` of output row ``i + a`` and the overlap-add is a
  sum of ``prod(ceil(k * d / s))`` shifted slices of ``cols`` (:func:`col2im`; one
  per shift, not per tap, so the program does not grow with the taps; ``k = s`` is a
  reshape). XLA fuses the overlap-add, the interleave and the crop;
* gradients: ``G[C_out * K, N * in]``, the output cotangent read at the positions
  ``i * s + j * d`` of every tap (im2col with stride), serves both ``dX = W @ G`` and
  ``dW = X @ G^T``. The two gradient primitives build ``G`` with the same
  operations, so in one program XLA computes it once (common subexpressions). Where
  taps overlap, the cotangent is first materialized (:func:`settled`): XLA would
  otherwise recompute its producer, often the forward's own col2im, once per shift.

``"phase"`` (the cost model, :mod:`jaxdeconv._cost`, picks each kernel):

* forward: the phase convolutions of :mod:`.conv`;
* gradients: the transposes of those convolutions written as GEMMs. With ``P`` the
  patches of the input (im2col, stride 1) and ``Y`` the phases of the output
  cotangent (space-to-depth), ``dK = Y @ P^T`` and ``dP = K^T @ Y``, whose patches
  are added back into ``dX`` (col2im, stride 1). ``Y`` is again shared.

Layouts: channels-first activations are handled as ``[C, N, *spatial]`` (a swap of
the two leading axes, a block copy), which makes every product a row-major GEMM and
the interleave a pass over contiguous rows. Channels-last activations already are the
row-major ``X[N * in, C_in]``; there ``G`` is ``[N * in, K * C_out]`` (``C_out``
contiguous, as in ``g``) and ``dX = G @ W`` has the long axis as its rows. A
channels-first layer may be computed that way too (``nhwc``, its operands and result
transposed around the kernel): the forward pass where col2im would interleave the
output's last axis one scalar at a time (:func:`jaxdeconv._cost._overlap_add`), the
gradients where the cost model or measured mode says so. Or it may run one GEMM per
image (``batched``: :func:`_cols_per_image`, :func:`_cotangent_cols_per_image`), which
reads and writes the activations in their own layout, where the input outweighs the
weight that every image then needs.
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

from ..._layout import (
    act_from_channels_last,
    act_to_channels_last,
    weight_from_channels_last,
    weight_from_torch,
    weight_to_channels_last,
    weight_to_torch,
)
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


def _r(start, n):
    return list(range(start, start + n))


def _geometry(spec):
    """Per dimension ``(s_eff, A, Q, shifts)`` of the tap/residue regrouping.

    Tap ``j`` of input ``i`` lands on ``i * s + j * d = (i + a) * s + r`` with
    ``a, r = divmod(j * d, s)``: output row ``q = i + a`` (``Q = in + A - 1`` rows,
    ``A = ceil(kv / s)``, ``kv = (k - 1) * d + 1``) at residue ``r``. The taps of one
    shift ``a`` are a contiguous range ``[j0, j1)`` whose residues run from ``r0`` in
    steps of ``d``; ``shifts`` lists the non-empty ``(a, j0, j1, r0)``. So the
    overlap-add is a sum of at most ``prod(A)`` shifted planes, and ``k * d <= s``
    (``A == 1``) is a pure reshape. A dimension with one input position may take any
    stride of at least ``kv``: it takes ``kv`` (no overlap, ``A == 1``).
    """
    geo = []
    for k, s, d, i in zip(spec.kernel_size, spec.stride, spec.dilation, spec.input_size):
        kv = (k - 1) * d + 1
        se = max(s, kv) if i == 1 else s
        a_count = -(-kv // se)
        shifts = []
        for a in range(a_count):
            j0 = -(-a * se // d)
            j1 = min(k, -(-(a + 1) * se // d))
            if j0 < j1:
                shifts.append((a, j0, j1, j0 * d - a * se))
        geo.append((se, a_count, i + a_count - 1, tuple(shifts)))
    return geo


def _spatial_crop(spec, geo, sign):
    """``(lo, hi)`` per dimension between the output and ``[Q * s_eff]`` (``sign=1``:
    crop the latter to the former; ``-1``: pad the former to the latter)."""
    out = []
    for (lo, hi), (se, _, q, _), i, s, k, d in zip(
        spec.crop, geo, spec.input_size, spec.stride, spec.kernel_size, spec.dilation
    ):
        full = (i - 1) * s + (k - 1) * d + 1
        out.append((sign * lo, sign * (hi + q * se - full)))
    return out


def col2im(c, spec, tap_axes, in_axes, acc):
    """The overlap-add of ``c`` (tap axes ``tap_axes``, input axes ``in_axes``, any
    others) -> the output: each tap axis becomes the output's spatial axis (the
    input axis is dropped), cropped (or extended) by ``spec.crop``.

    The program has one shifted add per non-empty shift (see :func:`_geometry`),
    not one per tap, and reads ``c`` in place (no transposed or padded copy).
    """
    geo = _geometry(spec)
    zero = jnp.zeros((), acc)

    def overlap_add(c, dims):
        """Sum over the shifts of ``dims`` (their taps -> residues, inputs -> rows)."""
        y = None
        for combo in itertools.product(*(geo[m][3] for m in dims)):
            start, limit = [0] * c.ndim, list(c.shape)
            pads = [(0, 0, 0)] * c.ndim
            for m, (a, j0, j1, r0) in zip(dims, combo):
                ax, iax, (se, a_count, _, _), d = tap_axes[m], in_axes[m], geo[m], spec.dilation[m]
                start[ax], limit[ax] = j0, j1
                pads[ax] = (r0, se - r0 - (j1 - j0 - 1) * d - 1, d - 1)  # taps -> residues
                pads[iax] = (a, a_count - 1 - a, 0)  # inputs -> rows
            t = lax.pad(lax.slice(c, start, limit).astype(acc), zero, pads)
            y = t if y is None else y + t
        return y

    if math.prod(len(g[3]) for g in geo) > COL2IM_FUSED_MAX_SHIFTS:
        # one dimension at a time, materialized (see COL2IM_FUSED_MAX_SHIFTS)
        y = c
        for m in range(len(geo)):
            y = overlap_add(y, [m])
            if m < len(geo) - 1:
                y = lax.optimization_barrier(y)
    else:
        y = overlap_add(c, list(range(len(geo))))
    # rows Q and residues s of each dimension next to each other: [.., Q, s, ..]
    others = [ax for ax in range(c.ndim) if ax not in tap_axes and ax not in in_axes]
    order = sorted(others + list(in_axes), key=lambda ax: ax)
    perm = []
    for ax in order:
        perm.append(ax)
        if ax in in_axes:
            perm.append(tap_axes[in_axes.index(ax)])
    y = y.transpose(perm)
    shape = []
    for ax in order:
        if ax in in_axes:
            m = in_axes.index(ax)
            shape.append(geo[m][2] * geo[m][0])
        else:
            shape.append(c.shape[ax])
    y = y.reshape(shape)
    crop = [(0, 0, 0)] * y.ndim
    spatial = [order.index(ax) for ax in in_axes]
    for ax, (lo, hi) in zip(spatial, _spatial_crop(spec, geo, -1)):
        crop[ax] = (lo, hi, 0)
    return lax.pad(y, zero, crop)


# im2col with more shifts than this expands one dimension at a time (a concatenate of
# that dimension's shifts, materialized) instead of one concatenate of all of them: XLA's
# fused concatenate picks every element's operand through a chain of compares whose
# cost grows with the operands (2-d k5 s1, 25 shifts, tfgan.up1's cotangent: 9.8 ms one
# concatenate, 3.0 ms per dimension; both gradients 24.7 -> 17.4 ms, the same temporary
# memory). With 9 or fewer shifts one concatenate is as fast and holds no intermediate
# (tfgan.up2, vae.up3, dcgan.up3: equal times, 10-20% more memory per dimension).
IM2COL_CONCAT_MAX_SHIFTS = 9
# im2col expands a dimension of more shifts than this by reshapes (:func:`_windows`), not
# one slice per shift, each of which XLA:CPU materializes and compiles. Both gradients,
# channels-first, interleaved (2026-12-02 06:13 UTC, load 0.6, this 2-core machine):
# 2-d k9 s1 (4x32x32x32) 81 -> 52 ms, 81 -> 42 MiB of temporaries, compiled in 1.1 ->
# 0.3 s; 3-d k9 s1 9.0 -> 4.6 ms; 2-d k31 s1 10.5 -> 6.5 ms, compiled in 3.3 -> 0.3 s
# (computed channels-last, "_nhwc", 5.8 -> 9.2 ms: the transposed cotangent fused into
# the loop; 1-d k64 0.61 -> 1.08). With fewer shifts the slices run faster: reshapes
# everywhere made the suite layers' gradients 1.1-3x slower (fcn8s channels-last 17 ->
# 53 ms, load 1.6), though G alone, written to a buffer of its own, was often faster.
IM2COL_WINDOWS_SHIFTS = 8
# col2im with more shifts than this overlap-adds one dimension at a time (materialized)
# instead of one fused sum of every shift's plane. The fused sum stays faster far longer
# than im2col's concatenate (2-d k8 s1, 64 shifts: 8.3 ms fused, 18.6 per dimension; 3-d
# k3 s1, 27: 3.0 against 3.9), but with hundreds of shifts it is one huge fusion: 3-d k8
# dilation 2 s2 (512 shifts) ran 5.1 ms and compiled 4.5 s fused, 0.9 ms and 1.0 s per
# dimension. (Forward GEMM + col2im, one CPU, 2026-12-01.)
COL2IM_FUSED_MAX_SHIFTS = 64


def im2col(a, spec, sp_axes, tap_at, settle=False):
    """``a`` (an output-sized activation, spatial axes ``sp_axes``) at the full-result
    positions ``i * s + j * d`` of every tap ``j`` and input ``i`` (im2col with
    stride, the adjoint of :func:`col2im`): ``a``'s layout with each spatial axis
    replaced by its input axis and the ``n`` tap axes inserted at ``tap_at``. One
    slice per non-empty shift (:func:`_geometry`), not one per tap. With ``settle``
    the padded ``a`` they slice is :func:`settled` first.
    """
    n = spec.ndim
    geo = _geometry(spec)
    pads = [(0, 0, 0)] * a.ndim
    for ax, (lo, hi) in zip(sp_axes, _spatial_crop(spec, geo, 1)):
        pads[ax] = (lo, hi, 0)
    ap = lax.pad(a, jnp.zeros((), a.dtype), pads)
    if settle:
        ap = settled(ap, spec)
    shape, pos = [], {}  # each spatial axis -> (Q, s): pos[m] = the Q axis
    for ax in range(a.ndim):
        if ax in sp_axes:
            m = sp_axes.index(ax)
            pos[m] = len(shape)
            shape += [geo[m][2], geo[m][0]]
        else:
            shape.append(ap.shape[ax])
    ap = ap.reshape(shape)
    tap_axis = [pos[m] + 1 for m in range(n)]  # [.., in_m, k_m, ..] (_windows: k_m, in_m)

    def result(ap):
        rest = [ax for ax in range(ap.ndim) if ax not in tap_axis]
        return ap.transpose(rest[:tap_at] + tap_axis + rest[tap_at:])

    def plane(arr, shifts):
        """``arr`` sliced to the shifts ``[(m, shift), ..]`` of those dimensions: each
        ``(Q, s)`` pair of axes becomes ``[in, taps of the shift]``."""
        start, limit, strides = [0] * arr.ndim, list(arr.shape), [1] * arr.ndim
        for m, (sh, j0, j1, r0) in shifts:
            d = spec.dilation[m]
            start[pos[m]], limit[pos[m]] = sh, sh + spec.input_size[m]
            start[pos[m] + 1], limit[pos[m] + 1] = r0, r0 + (j1 - j0 - 1) * d + 1
            strides[pos[m] + 1] = d
        return lax.slice(arr, start, limit, strides)

    def cat(parts, m):
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, pos[m] + 1)

    windows = [len(g[3]) > IM2COL_WINDOWS_SHIFTS for g in geo]  # by reshapes, else slices
    if any(windows) or math.prod(len(g[3]) for g in geo) > IM2COL_CONCAT_MAX_SHIFTS:
        # one dimension at a time, each step one concatenate of that dimension's shifts
        # or its windows, materialized before the next (the barrier keeps XLA from
        # fusing a concatenate's operands back); windows fuse with windows
        for m in range(n):
            if windows[m]:
                ap = _windows(ap, pos[m], geo[m][0], spec, m)
                tap_axis[m] = pos[m]
            else:
                ap = cat([plane(ap, [(m, sh)]) for sh in geo[m][3]], m)
            if m < n - 1 and not (windows[m] and windows[m + 1]):
                ap = lax.optimization_barrier(ap)
        return result(ap)

    def nested(prefix):  # one concatenate of every shift (nested per dimension)
        m = len(prefix)
        if m == n:
            return plane(ap, list(enumerate(prefix)))
        return cat([nested((*prefix, sh)) for sh in geo[m][3]], m)

    return result(nested(()))


def _windows(ap, ax, se, spec, m):
    """Dimension ``m`` of :func:`im2col` by reshapes: no slice per shift or tap.

    ``ap``'s axes ``ax, ax + 1`` are ``[Q, s_eff]``, together the padded full result's
    ``P`` positions; tap ``j`` of input ``i`` reads position ``i * s_eff + j * d``.
    ``k`` copies of them laid end to end and read back as rows of ``P + d`` shift
    copy ``j`` by ``j * d``; every input's positions, taken with stride ``s_eff``, are
    then its taps. XLA fuses the broadcast, pads, reshapes and strided slice into one
    loop with no temporary buffer whatever the taps (one slice per shift made XLA:CPU
    materialize and compile each: a 1-d k128 stride-1 layer's gradients compiled in 4.5
    s, lax's autodiff in 0.3 s). The loop computes each element's source index, which
    costs more than the slices' copies where there are few shifts
    (``IM2COL_WINDOWS_SHIFTS``). Returns ``ap`` with those axes ``[k, in]``.
    """
    k, d, size = spec.kernel_size[m], spec.dilation[m], spec.input_size[m]
    flat = ap.reshape(*ap.shape[:ax], -1, *ap.shape[ax + 2 :])
    lead, p, rest = flat.shape[:ax], flat.shape[ax], flat.shape[ax + 1 :]
    copies = jnp.broadcast_to(jnp.expand_dims(flat, ax), (*lead, k, p, *rest))
    pads = [(0, 0, 0)] * flat.ndim
    pads[ax] = (0, k * d, 0)  # k copies of P -> k rows of P + d
    rows = lax.pad(copies.reshape(*lead, k * p, *rest), jnp.zeros((), flat.dtype), pads)
    rows = rows.reshape(*lead, k, p + d, *rest)
    return lax.slice_in_dim(rows, 0, (size - 1) * se + 1, se, axis=ax + 1)


def _apart(f, a):
    """``f(a)`` (a layout change) as a loop of its own over the materialized ``a``,
    its result materialized for every reader.

    XLA:CPU fuses a transpose into the fusion that produces its operand, which then
    runs in the transposed order: a channels-last overlap-add whose loop ran over
    ``C_out`` (contiguous, vectorized) runs over the interleaved output columns, one
    scalar at a time (dilated.d3's forward: 2.2 ms channels-last, 6.9 ms so fused).
    It also fuses a cheap producer into every one of several readers, computing it
    once per reader (see :func:`settled`). Optimization barriers are gone before
    XLA:CPU fuses; a conditional is a boundary it keeps (it then makes the transpose a
    copy of the conditional's result, a fusion of its own). Both branches are ``f``
    behind a barrier (a branch with no instruction, ``f`` the identity, would be
    inlined away), so the predicate changes nothing but the schedule. The predicate
    is a random bit of a constant key: XLA cannot fold it, and unlike an element of
    ``a`` it is not one more reader of ``a``'s producer (which would make XLA
    materialize that producer's own operands). Two such conditionals of the same ``f``
    and ``a`` are merged into one.
    """
    if a.size == 0:
        return f(a)
    _, bits = lax.rng_bit_generator(jnp.zeros((4,), jnp.uint32), (1,), jnp.uint32)

    def branch(v):
        return lax.optimization_barrier(f(v))

    return lax.cond(bits[0] != 0, branch, branch, a)


# Below this many elements a cotangent's producer is cheaper to recompute per slice
# than a conditional is to run (10-30 us more on layers of 0.05-0.1 ms, 2026-12-01).
SETTLE_MIN_ELEMENTS = 16384


def settled(g, spec):
    """The cotangent ``g``, materialized once where the gradient kernels read its
    elements more than once.

    The kernels read ``g`` through one slice per shift (im2col), per phase or per tap.
    XLA:CPU fuses ``g``'s producer into each of those readers, so a cheap producer
    runs once per slice, in the slice's order. In ``grad(sum(y**2))`` the producer is
    the forward's col2im itself (in a model, ``relu'(y) * g`` and the same col2im):
    a 2-d k4 stride-1 layer's forward+backward took 34 ms against 15 so materialized
    channels-last, 29 against 14 channels-first, a channels-last k5 stride-4 one 3.9
    against 1.2 ms (2026-12-01). The padded ``g`` is what :func:`im2col` settles, so
    that the producer still writes the padding in its one pass. Where the taps do not
    overlap (``d * (k - 1) < s`` on every axis: ``k = s``, each element read once)
    there is nothing to recompute, and the boundary would only add a copy
    (``unet.up4``). Nor is it worth it under ``SETTLE_MIN_ELEMENTS``: the conditional
    costs 10-30 us.
    """
    if g.size < SETTLE_MIN_ELEMENTS or all(
        d * (k - 1) < s for k, s, d in zip(spec.kernel_size, spec.stride, spec.dilation)
    ):
        return g
    return _apart(lambda v: v, g)


def forward(x, w, *, spec, precision, preferred_element_type, nhwc=False, batched=False):
    """GEMM + col2im (see the module docstring), in spec's layout.

    With ``nhwc`` a channels-first layer is computed channels-last (the overlap-add
    then vectorizes over ``C_out`` instead of interleaving the output's last axis),
    the input and the output transposed around it (:func:`_apart`). With ``batched``
    a channels-first layer runs one GEMM per image (:func:`_cols_per_image`).
    """
    if nhwc and not spec.channels_last:
        y = forward(
            act_to_channels_last(x, spec),
            weight_to_channels_last(w, spec),
            spec=_cl_spec(spec),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        return _apart(lambda y: act_from_channels_last(y, spec), y)
    n = spec.ndim
    w = weight_to_torch(w, spec)
    ci, co = spec.in_channels, spec.out_channels
    size, k = spec.input_size, spec.kernel_size
    dtype = jnp.result_type(x.dtype, w.dtype)
    acc = _acc_dtype(dtype, preferred_element_type)
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
        y = col2im(cols, spec, _r(n + 1, n), _r(1, n), acc)  # [N, *out, C_out]
    elif batched:
        cols = _cols_per_image(x, w, spec, precision, acc)  # [N, C_out, *k, *in]
        y = col2im(cols, spec, _r(2, n), _r(n + 2, n), acc)  # [N, C_out, *out]
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
        y = col2im(cols, spec, _r(1, n), _r(n + 2, n), acc)  # [C_out, N, *out]
        y = jnp.swapaxes(y, 0, 1)
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
        y = jnp.moveaxis(col2im(cols, spec, _r(n + 2, n), _r(1, n), acc), -1, 1)
    return y.astype(out_dtype(dtype, preferred_element_type))


def _per_image_product(left, right, precision, acc):
    """``left @ right[n]`` for every image ``n``: ``left`` ``[M, K]``, ``right``
    ``[N, K, P]`` -> ``[N, M, P]``, one batched product.

    XLA's batched products need the batch on both operands, so ``left`` is broadcast
    to every image, materialized behind the barrier (which also keeps a transpose of
    ``left`` out of the product, see :func:`forward`): the cost model weighs that copy
    (``batch * |W|``) against the activations' copies it saves.
    """
    left = lax.optimization_barrier(jnp.broadcast_to(left, (right.shape[0], *left.shape)))
    return lax.dot_general(
        left,
        right,
        (((2,), (1,)), ((0,), (0,))),
        precision=precision,
        preferred_element_type=acc,
    )


def _cols_per_image(x, w, spec, precision, acc):
    """``cols[N, C_out * K, in] = W^T @ X[n]`` for every image ``n`` of a channels-first
    input ``x`` (``w`` in torch's layout), as ``[N, C_out, *k, *in]``.

    One batched product (:func:`_per_image_product`) reads the input where it lies and
    writes cols image-major, so that col2im writes the output in its own layout: no
    ``[C, N, *in]`` copy of the input (or of the output) as :func:`forward`'s other
    channels-first routes make (Conv-TasNet's decoder, 512 -> 1, k16 s8, N4 x 3999
    frames: 26.7 -> 4.8 ms; 2026-12-01, this 2-core machine).
    """
    ci, n = spec.in_channels, spec.batch
    wt = w.reshape(ci, -1).T  # [C_out * K, C_in]
    cols = _per_image_product(wt, x.reshape(n, ci, -1), precision, acc)
    return cols.reshape(n, spec.out_channels, *spec.kernel_size, *spec.input_size)


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


def cotangent_cols(g, spec, settle=True):
    """``g`` at full-result positions ``i * s + j * d``, per tap (im2col with stride).

    Channels-first: ``G[C_out * K, N * in]``; channels-last: ``G[N * in, K * C_out]``
    (each layout's contiguous axis stays contiguous). With ``settle`` the padded ``g``
    the slices read is :func:`settled`.
    """
    n, rows = spec.ndim, spec.out_channels * math.prod(spec.kernel_size)
    if spec.channels_last:  # [N, *out, C] -> [N, *in, *k, C]
        return im2col(g, spec, _r(1, n), 1 + n, settle).reshape(-1, rows)
    g = _to_cn(g, spec)
    return im2col(g, spec, _r(2, n), 1, settle).reshape(rows, -1)  # [C, *k, N, *in]


def _cotangent_cols_per_image(g, spec, settle):
    """``G[N, C_out * K, in]``: :func:`cotangent_cols` of a channels-first ``g`` kept
    image-major, for one GEMM per image in either gradient (``batched``).

    Like the forward's :func:`_cols_per_image`, the products then read ``x`` and write
    ``dX`` in their own layout, where the whole-batch GEMMs copy both to and from
    ``[C, N, *in]``; the weight is broadcast to every image (``dX``) and the weight
    gradient is the sum of per-image products (``N`` partial ``dW``): the cost model
    weighs these against the copies.
    """
    n = spec.ndim
    rows = spec.out_channels * math.prod(spec.kernel_size)
    return im2col(g, spec, _r(2, n), 2, settle).reshape(spec.batch, rows, -1)


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


def _input_grad_phase(g, w, *, spec, precision, acc, settle):
    """Per convolution ``dP = K^T @ Y``, its patches added back (col2im, stride 1)."""
    ci = spec.in_channels
    gt = _to_cn(settled(g, spec) if settle else g, spec)
    w = weight_to_torch(w, spec)
    zero = jnp.zeros((), acc)
    # no convolution at all when no output position meets a tap (the crop keeps only gaps)
    dx = jnp.zeros((ci, spec.batch, *spec.input_size), acc)
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
            dx = dx + lax.pad(dp[(slice(None), *us)], zero, pads)
    return _from_cn(dx, spec)


def _weight_grad_phase(x, g, *, spec, precision, acc, settle):
    """Per convolution ``dK = Y @ P^T``, each member's taps padded into the kernel.

    A phase's taps are an arithmetic sequence (step ``s / gcd(s, d)``, listed from the
    last), so its sub-kernel gradient lands on the kernel by one interior-padded copy;
    the phases' taps are disjoint, so the kernel gradient is the sum of those copies
    (one per member phase, not one op per tap: the program stays small).
    """
    ci, co = spec.in_channels, spec.out_channels
    xt, gt = _to_cn(x, spec), _to_cn(settled(g, spec) if settle else g, spec)
    zero = jnp.zeros((), acc)
    dw = jnp.zeros((co, ci, *spec.kernel_size), acc)
    for combo, members in phase_plan(spec).convolutions():
        dk = lax.dot_general(
            _cotangent_phases(gt, combo, members, spec),
            _patches(xt, combo, spec),
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        )
        dk = dk.reshape(len(members), co, ci, *(grp.n_taps for grp in combo))
        for mi, mem in enumerate(members):
            part = jnp.flip(dk[mi], range(2, 2 + spec.ndim))  # taps in increasing order
            pads = [(0, 0, 0), (0, 0, 0)]
            for ph, k in zip(mem, spec.kernel_size):
                step = ph.taps[0] - ph.taps[1] if len(ph.taps) > 1 else 1
                pads.append((ph.taps[-1], k - 1 - ph.taps[0], step - 1))
            dw = dw + lax.pad(part, zero, pads)
    return dw.swapaxes(0, 1)  # torch


# ----------------------------------------------------------------------------- gradients


def _cl_spec(spec: ConvTransposeSpec) -> ConvTransposeSpec:
    return dataclasses.replace(spec, channels_last=True)


def input_grad(
    g,
    w,
    *,
    spec,
    precision,
    preferred_element_type,
    strategy,
    nhwc=False,
    batched=False,
    settle=True,
):
    """The input gradient: ``dX = W @ G`` (``"cols"``) or the phase GEMMs (``"phase"``).

    With ``nhwc`` a channels-first layer is computed channels-last (where ``dX``'s
    rows are ``N * in`` instead of ``C_in``); with ``batched`` one GEMM per image
    (:func:`_cotangent_cols_per_image`).
    """
    if nhwc and not spec.channels_last:
        dx = input_grad(
            act_to_channels_last(g, spec),
            weight_to_channels_last(w, spec),
            spec=_cl_spec(spec),
            precision=precision,
            preferred_element_type=preferred_element_type,
            strategy=strategy,
            settle=settle,
        )
        return act_from_channels_last(dx, spec)
    dtype = jnp.result_type(g.dtype, w.dtype)
    acc = _acc_dtype(dtype, preferred_element_type)
    if strategy == "phase":
        dx = _input_grad_phase(g, w, spec=spec, precision=precision, acc=acc, settle=settle)
    elif spec.channels_last:  # dX[N * in, C_in] = G @ W[K * C_out, C_in]
        ci = spec.in_channels
        dx = lax.dot_general(
            cotangent_cols(g, spec, settle),
            jnp.moveaxis(w, -2, -1).reshape(-1, ci),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(spec.batch, *spec.input_size, ci)
    elif batched:  # dX[n] = W @ G[n]
        w2 = w.reshape(spec.in_channels, -1)
        g2 = _cotangent_cols_per_image(g, spec, settle)
        dx = _per_image_product(w2, g2, precision, acc).reshape(spec.input_shape)
    else:
        ci = spec.in_channels
        dx = lax.dot_general(
            w.reshape(ci, -1),
            cotangent_cols(g, spec, settle),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        )
        dx = _from_cn(dx.reshape(ci, spec.batch, *spec.input_size), spec)
    return dx.astype(out_dtype(dtype, preferred_element_type))


def weight_grad(
    x,
    g,
    *,
    spec,
    precision,
    preferred_element_type,
    strategy,
    nhwc=False,
    batched=False,
    settle=True,
):
    """The weight gradient: ``dW = X @ G^T`` (``"cols"``) or the phase GEMMs (``"phase"``);
    ``nhwc`` and ``batched`` as in :func:`input_grad`."""
    if nhwc and not spec.channels_last:
        dw = weight_grad(
            act_to_channels_last(x, spec),
            act_to_channels_last(g, spec),
            spec=_cl_spec(spec),
            precision=precision,
            preferred_element_type=preferred_element_type,
            strategy=strategy,
            settle=settle,
        )
        return weight_from_channels_last(dw, spec)
    dtype = jnp.result_type(x.dtype, g.dtype)
    acc = _acc_dtype(dtype, preferred_element_type)
    if strategy == "phase":
        dw = _weight_grad_phase(x, g, spec=spec, precision=precision, acc=acc, settle=settle)
        dw = weight_from_torch(dw, spec)
    elif spec.channels_last:  # dW[C_in, K * C_out] = X^T @ G
        ci = spec.in_channels
        dw = lax.dot_general(
            lax.optimization_barrier(x.reshape(-1, ci).T),  # see forward
            cotangent_cols(g, spec, settle),
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(ci, *spec.kernel_size, spec.out_channels)
        dw = jnp.moveaxis(dw, 0, -2)
    elif batched:  # dW = sum over n of X[n] @ G[n]^T, the partial sums in acc
        ci = spec.in_channels
        dw = lax.dot_general(
            x.reshape(spec.batch, ci, -1),
            _cotangent_cols_per_image(g, spec, settle),
            (((2,), (2,)), ((0,), (0,))),
            precision=precision,
            preferred_element_type=acc,
        )
        dw = dw.sum(0).reshape(spec.weight_shape)
    else:
        ci = spec.in_channels
        dw = lax.dot_general(
            x.swapaxes(0, 1).reshape(ci, -1),
            cotangent_cols(g, spec, settle),
            (((1,), (1,)), ((), ())),
            precision=precision,
            preferred_element_type=acc,
        ).reshape(spec.weight_shape)
    return dw.astype(out_dtype(dtype, preferred_element_type))

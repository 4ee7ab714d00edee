"""The phase formulation's convolution lowering (and its depthwise special case).

Forward: one stride-1 convolution per group of output phases
(:mod:`jaxdeconv._phases`), interleaved (depth-to-space). Input gradient: the
strided forward convolution. Weight gradient: one dot per tap of the tap's input
window with its phase's cotangent, or, past ``MAX_UNROLLED`` taps, one convolution
(:func:`weight_grad_filter_conv`, the strided convolution's filter gradient, so that
the program does not grow with the taps). Depthwise-like layers (see
:func:`jaxdeconv._plan.elementwise`): fused elementwise products in spec's own layout.
XLA's SPMD partitioner splits all of these with halo exchanges, and XLA:GPU hands
the convolutions to cuDNN.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ... import _cost
from ..._layout import (
    act_from_channels_last,
    act_to_channels_last,
    channels_last_dimension_numbers,
    dimension_numbers,
    weight_from_channels_last,
    weight_to_channels_last,
)
from ..._phases import phase_plan
from ..lax_based import forward_conv
from .gemm import (
    _apart,
    _cl_spec,
    _geometry,
    _spatial_crop,
    out_dtype,
    settled,
    sub_kernel,
    tap_planes,
)

__all__ = [
    "forward_convs",
    "forward_elementwise",
    "input_grad_convs",
    "input_grad_elementwise",
    "interleave",
    "weight_grad_convs",
    "weight_grad_elementwise",
    "weight_grad_filter_conv",
]


def _pad_spatial(x: jax.Array, pads) -> jax.Array:
    """Pad (negative: crop) the spatial dims of a channels-last activation."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])


# ----------------------------------------------------------------------------- implementations

# forward_elementwise up-samples (where taps overlap) while its products are at most this
# many times the taps' (depthwise 8x128x32x32, k4 s2: 1.0x, 2.2-2.9 against 4.4-5.7 ms per
# phase; k3 s2 op1: 1.8x, same time; k3 s2 dilation 2: 4x, 5.4 against 2.1 ms).
UPSAMPLED_MAX_WASTE = 1.5
# forward_elementwise computes a channels-first layer channels-last from this many
# up-sampled terms (8x256x8x8 k8 s3, 9 terms: 4.7 -> 1.65 ms, torch 1.07; 3-d k4 s2, 8
# terms: 4.8 -> 1.6; k7 s2, 16 terms: 0.68 -> 0.17; bilinear k4 s2, 4 terms: 3.7 -> 10.2;
# 1-d k4 s2, 2 terms: 2.2 -> 5.7).
NHWC_MIN_TERMS = 8
# weight_grad_elementwise's batched products run where their temporaries are at most this
# fraction of the per-tap form's; its loop over taps, where the per-tap form would hold
# this many bytes (a 1-d k4 s3 dilation-2 layer of 0.15 ms took 0.29 in the loop).
WEIGHT_GRAD_DOT_MAX_BYTES = 0.75
WEIGHT_GRAD_LOOP_MIN_BYTES = 8 << 20
# Past MAX_UNROLLED taps the per-phase depthwise forward loops over each live phase's
# taps; it then runs only with this many live phases or fewer (each loop is a part of
# the program), where the up-sampled form would multiply many zeros: a 3-d k8 s4 dilation-2
# layer (512 taps, 8 live phases of 64) ran 1.2-1.5 ms per phase against 4.5 up-sampled.
PER_PHASE_MAX_LOOPS = 8
# The elementwise loops over taps or terms (past MAX_UNROLLED of them) run this many per
# iteration, which XLA fuses into one pass over the accumulator: a depthwise input
# gradient of 8x64x32x32, k9 stride 1 (81 taps), 24.6 ms one tap per iteration, 2.7
# ms at 8, 6.1 ms at 32, 4.0 ms unrolled (2026-12-01, this 2-core machine).
UNROLL = 8


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


def _upsampled_terms(phases, in_size, s, out):
    """One dimension of :func:`forward_elementwise`: ``(lo, hi, offsets, taps)``.

    With ``x`` padded by ``(lo, hi)`` and up-sampled by ``s`` (each element repeated
    ``s`` times), output ``o`` of phase ``p = o % s`` reads, from the window at offset
    ``offsets[t]``, element ``(o + offsets[t]) // s``: tap ``taps[t][p]``'s input
    (``-1``: none). Tap ``u`` of phase ``p`` is the input at ``c = u * dil - ph.lo + lo``,
    which the offsets in ``[c * s - p, c * s - p + s)`` reach; as few offsets as
    reach every tap (greedy interval stabbing, which is optimal) are the terms.
    """
    lo = max([0, *(ph.lo for ph in phases if ph.taps)])
    spans = []
    for ph in phases:
        for u, tap in enumerate(ph.taps):
            c = u * ph.dil - ph.lo + lo
            spans.append((c * s - ph.p + s - 1, c * s - ph.p, ph.p, tap))
    offsets, taps = [], []
    for end, begin, p, tap in sorted(spans):
        if not offsets or offsets[-1] < begin:
            offsets.append(end)
            taps.append([-1] * s)
        taps[-1][p] = tap
    hi = max(0, -(-(max(offsets, default=0) + out) // s) - in_size - lo)
    return lo, hi, offsets, taps


def _forward_per_phase(x, w, plan, *, spec, preferred_element_type):
    """Per phase, a fused sum over taps of input slices times per-channel weights, interleaved.

    Works in spec's own layout (no transposes): ``[N, g, 1, *sp] * [g, cog, 1..]``.
    """
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
    taps = sum(math.prod(len(ph.taps) for ph in mem) for mem in itertools.product(*plan.phases))
    wflat = we.reshape(-1, g, cog)

    def phase_sum(rows, sizes):
        """One phase: the sum over its taps (``rows``: window start, flat tap index) of
        the input window times the tap's ``[g, cog]``."""
        size = list(xe.shape)
        for ax, m in zip(sp, sizes):
            size[ax] = m

        def term(starts, tap):
            v = wflat[tap] if spec.channels_last else wflat[tap].reshape(g, cog, *(1,) * n)
            return lax.dynamic_slice(xp, starts, size) * v

        if taps <= _cost.MAX_UNROLLED:
            acc = None
            for at, tap in rows:
                t = term(at, tap)
                acc = t if acc is None else acc + t
            return acc
        # the taps in a loop, UNROLL per iteration: the program stays bounded
        starts = jnp.asarray([at for at, _ in rows], jnp.int32)
        index = jnp.asarray([tap for _, tap in rows], jnp.int32)
        zero = jnp.zeros(jax.eval_shape(term, rows[0][0], 0).shape, dtype)
        return lax.fori_loop(
            0, len(rows), lambda i, acc: acc + term(tuple(starts[i]), index[i]), zero, unroll=UNROLL
        )

    outs = {}
    for mem in itertools.product(*plan.phases):
        if any(not ph.taps for ph in mem):
            continue
        sizes = [ph.n for ph in mem]
        rows = []  # per tap of the phase: the window's start, the tap's flat index
        for us in itertools.product(*(range(len(ph.taps)) for ph in mem)):
            at = [0] * xe.ndim
            for ax, u, ph, lo in zip(sp, us, mem, lo_all):
                at[ax] = lo - ph.lo + u * ph.dil
            tap = tuple(ph.taps[u] for u, ph in zip(us, mem))
            rows.append((at, int(np.ravel_multi_index(tap, spec.kernel_size))))
        acc = phase_sum(rows, sizes)
        shape = (
            (spec.batch, *sizes, g * cog) if spec.channels_last else (spec.batch, g * cog, *sizes)
        )
        outs[tuple(ph.p for ph in mem)] = acc.reshape(shape)
    return interleave(outs, spec, dtype, native=True)


def _forward_upsampled(x, w, dims, *, spec, preferred_element_type):
    """A fused sum of products of the up-sampled input with periodic per-channel weights.

    Works in spec's own layout, without phase outputs to interleave: the input is
    padded and up-sampled (each element repeated ``stride`` times, a broadcast), and
    every term of :func:`_upsampled_terms` multiplies a window of it by a weight
    pattern that repeats with the stride (phase ``p`` of the output gets its own tap's
    weight). XLA fuses the whole sum into one loop that writes the output once; the
    per-phase sums and a depth-to-space ran 1.7x slower (depthwise.bilinear, 4.8
    against 2.8 ms). ``[N, g, 1, *up] * [g, cog, *out]`` channels-first. Past
    ``MAX_UNROLLED`` terms (large stride-1 kernels) they are added in a loop,
    :data:`UNROLL` per iteration (fused as one), so that the program stays bounded.
    """
    n, g = spec.ndim, spec.groups
    cog = spec.out_channels // g
    dtype = out_dtype(jnp.result_type(x.dtype, w.dtype), preferred_element_type)
    cl = spec.channels_last
    xe = x.astype(dtype)[..., None] if cl else x.astype(dtype)[:, :, None]
    sp = list(range(1, n + 1)) if cl else list(range(3, n + 3))
    pads = [(0, 0, 0)] * xe.ndim
    for ax, (lo, hi, _, _) in zip(sp, dims):
        pads[ax] = (lo, hi, 0)
    xp = lax.pad(xe, jnp.zeros((), dtype), pads)
    # Up-sample: [.., I, ..] -> [.., I, s, ..] -> [.., I * s, ..].
    shape, up = [], []
    for ax, size in enumerate(xp.shape):
        shape.append(size)
        up.append(size)
        if ax in sp:
            s = spec.stride[sp.index(ax)]
            shape.append(s)
            up[-1] *= s
    expand = tuple(a + sum(b < a for b in sp) for a in range(xp.ndim))
    xu = lax.broadcast_in_dim(xp, shape, expand).reshape(up)
    # Weight patterns by one gather from the weight plus a zero tap, in spec's layout:
    # [T, *s, g, cog] channels-last, [g, cog, T, *s] channels-first.
    kax = list(range(n)) if cl else list(range(2, n + 2))
    wpad = [(0, 0)] * (n + 2)
    for ax in kax:
        wpad[ax] = (0, 1)
    wz = jnp.pad(w.astype(dtype), wpad)
    terms = list(itertools.product(*(range(len(d[2])) for d in dims)))
    index = [slice(None)] * (n + 2)
    for a, ((_, _, _, taps), k) in enumerate(zip(dims, spec.kernel_size)):
        table = np.array([[t if t >= 0 else k for t in taps[term[a]]] for term in terms])
        index[kax[a]] = table.reshape(len(terms), *(-1 if b == a else 1 for b in range(n)))
    pats = wz[tuple(index)]
    if not cl:
        pats = jnp.moveaxis(pats, 2, 0)  # one pattern per term: [T, g, cog, *s]
    q = [-(-o // s) for o, s in zip(spec.output_size, spec.stride)]
    rep = [v for qi, s in zip(q, spec.stride) for v in (qi, s)]
    full = [qi * s for qi, s in zip(q, spec.stride)]
    if cl:
        rep, dims_in, full, crop = (
            (*rep, g, cog),
            (*range(1, 2 * n, 2), 2 * n, 2 * n + 1),
            (*full, g, cog),
            (),
        )
    else:
        rep, dims_in, full, crop = (
            (g, cog, *rep),
            (0, 1, *range(3, 2 * n + 2, 2)),
            (g, cog, *full),
            (slice(None),) * 2,
        )

    def product(pat, starts):
        pat = lax.broadcast_in_dim(pat, rep, dims_in).reshape(full)
        pat = pat[(*crop, *(slice(0, o) for o in spec.output_size))]
        size = list(xu.shape)
        for ax, o in zip(sp, spec.output_size):
            size[ax] = o
        return lax.dynamic_slice(xu, starts, size) * pat

    def starts(term):
        at = [0] * xu.ndim
        for ax, (_, _, offsets, _) in zip(sp, dims):
            at[ax] = offsets[term[sp.index(ax)]]
        return at

    if len(terms) <= _cost.MAX_UNROLLED:
        acc = None
        for t, term in enumerate(terms):
            term_ = product(pats[t], starts(term))
            acc = term_ if acc is None else acc + term_
    else:  # a loop over the terms, UNROLL at a time: the program does not grow with them
        table = jnp.asarray([starts(t) for t in terms], jnp.int32)

        def body(t, acc):
            return acc + product(pats[t], tuple(table[t]))

        zero = jnp.zeros(jax.eval_shape(product, pats[0], tuple(table[0])).shape, dtype)
        acc = lax.fori_loop(0, len(terms), body, zero, unroll=UNROLL)
    shape = (
        (spec.batch, *spec.output_size, g * cog) if cl else (spec.batch, g * cog, *spec.output_size)
    )
    return acc.reshape(shape)


def _upsampled_dims(spec, plan):
    return [
        _upsampled_terms(phases, i, s, o)
        for phases, i, s, o in zip(plan.phases, spec.input_size, spec.stride, spec.output_size)
    ]


def _forward_form(spec, plan=None, dims=None):
    """Which form :func:`forward_elementwise` runs: ``"upsampled"`` or ``"per_phase"``.

    The per-phase form's program has a slice per phase and a term per tap; past
    ``MAX_UNROLLED`` taps each live phase sums its own in a loop, so it runs only with up
    to ``MAX_UNROLLED`` phases and then up to :data:`PER_PHASE_MAX_LOOPS` live ones.
    The up-sampled form's has a term per offset, in a loop past ``MAX_UNROLLED``. So
    the program stays bounded.
    """
    plan = plan if plan is not None else phase_plan(spec, 0.0)
    dims = dims if dims is not None else _upsampled_dims(spec, plan)
    products = math.prod(len(d[2]) * s for d, s in zip(dims, spec.stride))
    taps = math.prod(sum(len(ph.taps) for ph in phases) for phases in plan.phases)
    overlap = any(len(ph.taps) > 1 for phases in plan.phases for ph in phases)
    live = math.prod(sum(1 for ph in phases if ph.taps) for phases in plan.phases)
    if math.prod(spec.stride) > _cost.MAX_UNROLLED:
        return "upsampled"
    if taps > _cost.MAX_UNROLLED and live > PER_PHASE_MAX_LOOPS:
        return "upsampled"
    return "upsampled" if overlap and products <= UPSAMPLED_MAX_WASTE * taps else "per_phase"


def forward_elementwise(x, w, *, spec, preferred_element_type, nhwc=False):
    """Depthwise-like forward: a fused sum of products in spec's own layout.

    Up-sampled (:func:`_forward_upsampled`) where taps overlap (some phase sums
    several), unless its terms multiply more than :data:`UPSAMPLED_MAX_WASTE` times
    as many products as the layer's taps (a tap of an up-sampled term covers every
    phase, so when phases have unequal or offset taps, e.g. dilation 2 with stride 2,
    most of its products are by zero); else per phase (:func:`_forward_per_phase`),
    which without overlap is one product per output too, and ran faster (k2 s2:
    0.6-0.9 against 0.7-1.2 ms); up-sampled also where the per-phase program would
    pass ``MAX_UNROLLED`` taps or phases (:func:`_forward_form`). With ``nhwc`` (one
    CPU device) a channels-first layer whose last axis is strided and whose terms
    number :data:`NHWC_MIN_TERMS` or more is up-sampled channels-last, the input and
    the output transposed around it (:func:`~.gemm._apart`): channels-first the fused
    loop runs along the interleaved last axis one scalar at a time, about 0.3 ns per
    output and term here, channels-last along the channels, vectorized, and the
    transposes cost about 1-2.5 ns per output.
    """
    plan = phase_plan(spec, 0.0)
    dims = _upsampled_dims(spec, plan)
    if _forward_form(spec, plan, dims) == "upsampled":
        terms = math.prod(len(d[2]) for d in dims)
        if nhwc and not spec.channels_last and spec.stride[-1] > 1 and terms >= NHWC_MIN_TERMS:
            y = _forward_upsampled(
                act_to_channels_last(x, spec),
                weight_to_channels_last(w, spec),
                dims,
                spec=_cl_spec(spec),
                preferred_element_type=preferred_element_type,
            )
            return _apart(lambda y: act_from_channels_last(y, spec), y)
        return _forward_upsampled(
            x, w, dims, spec=spec, preferred_element_type=preferred_element_type
        )
    return _forward_per_phase(x, w, plan, spec=spec, preferred_element_type=preferred_element_type)


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
    """Depthwise-like input gradient: a fused sum over taps of the cotangent's slice
    times the tap's weights, summed over each group's outputs; past ``MAX_UNROLLED``
    taps a loop over them (:func:`_input_grad_loop`)."""
    if math.prod(spec.kernel_size) > _cost.MAX_UNROLLED:
        return _input_grad_loop(g, w, spec=spec, preferred_element_type=preferred_element_type)
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


def _weight_grad_per_tap(x, g, *, spec, preferred_element_type):
    """Per tap, the product of the input with the cotangent's slice, summed."""
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    xe, sp = _grouped_native(x.astype(dtype), spec, 1)
    axes = (0, *sp)
    taps = [(xe * sl).sum(axes) for _, sl in _tap_slices(g.astype(dtype), spec)]
    wt = jnp.stack(taps).reshape(*spec.kernel_size, spec.groups, -1)  # [*k, g, cog]
    return weight_from_channels_last(wt, spec)


def _residue_planes(x, g, spec, dtype):
    """The depthwise weight gradient's operands, channel-major (see :func:`_weight_grad_dot`).

    The regrouping of :func:`~.gemm._geometry` (as :func:`~.gemm.im2col` uses it): tap
    ``j`` reads the full result's cotangent at ``i * s + j * d = (i + a) * s + r``,
    residue plane ``r`` at offset ``a``. Returns ``x`` as ``[N, g, *in]``, the padded
    full result's residue planes ``[N, g, cog, *s_eff, *Q]`` (one copy of the
    cotangent, in any layout), and the geometry.
    """
    xc = x.astype(dtype)
    if spec.channels_last:
        xc = jnp.moveaxis(xc, -1, 1)
    planes, geo = _cotangent_planes(g, spec, dtype)
    return xc, planes, geo


def _cotangent_planes(g, spec, dtype):
    """The padded full result's residue planes of ``g``, ``[N, g, cog, *s_eff, *Q]``,
    and the geometry (see :func:`_residue_planes`)."""
    n, grp = spec.ndim, spec.groups
    cog = spec.out_channels // grp
    geo = _geometry(spec)
    gc = g.astype(dtype)
    if spec.channels_last:
        gc = jnp.moveaxis(gc, -1, 1)
    gc = gc.reshape(spec.batch, grp, cog, *spec.output_size)
    pads = [(0, 0, 0)] * 3 + [(lo, hi, 0) for lo, hi in _spatial_crop(spec, geo, 1)]
    gp = lax.pad(gc, jnp.zeros((), dtype), pads)
    gp = gp.reshape(spec.batch, grp, cog, *(v for se, _, q, _ in geo for v in (q, se)))
    perm = [0, 1, 2, *range(4, 3 + 2 * n, 2), *range(3, 3 + 2 * n, 2)]
    return gp.transpose(perm), geo


def _tap_table(spec, geo):
    """Per tap (row-major over the kernel), where its window of the residue planes
    starts: ``(*r, *a)``, as a device array for a loop to index."""
    return jnp.asarray([r + a for a, r in _tap_residues(spec, geo)], jnp.int32)


def _tap_window(planes, row, spec):
    """Tap ``row``'s window (:func:`_tap_table`) of the residue planes: ``[N, g, cog, *in]``."""
    zero = jnp.zeros((), jnp.int32)
    size = (*planes.shape[:3], *(1,) * spec.ndim, *spec.input_size)
    window = lax.dynamic_slice(planes, (zero,) * 3 + tuple(row), size)
    return window.reshape(*planes.shape[:3], *spec.input_size)


def _input_grad_loop(g, w, *, spec, preferred_element_type):
    """Depthwise-like input gradient, one tap per iteration of a loop: the tap's window
    of the cotangent's residue planes (:func:`_cotangent_planes`) times its weights,
    summed over each group's outputs and accumulated. The program does not grow with
    the taps."""
    n, grp = spec.ndim, spec.groups
    cog = spec.out_channels // grp
    dtype = out_dtype(jnp.result_type(g.dtype, w.dtype), preferred_element_type)
    planes, geo = _cotangent_planes(g, spec, dtype)
    wt = weight_to_channels_last(w.astype(dtype), spec).reshape(-1, grp, cog, *(1,) * n)
    table = _tap_table(spec, geo)

    def body(t, acc):
        return acc + (_tap_window(planes, table[t], spec) * wt[t]).sum(2)

    zero = jnp.zeros((spec.batch, grp, *spec.input_size), dtype)
    dx = lax.fori_loop(0, table.shape[0], body, zero, unroll=UNROLL)
    return jnp.moveaxis(dx, 1, -1) if spec.channels_last else dx


def _tap_residues(spec, geo):
    """Per tap (row-major over the kernel): its offsets ``a`` and residues ``r``."""
    return [
        tuple(zip(*(divmod(j * d, se) for j, d, (se, *_) in zip(t, spec.dilation, geo))))
        for t in np.ndindex(*spec.kernel_size)
    ]


def _weight_grad_dot(x, g, *, spec, preferred_element_type):
    """Depthwise-like weight gradient: per image and channel, one small product of
    matrices.

    With ``P`` the cotangent's residue planes and ``X`` the input placed at every
    offset ``q`` (one copy per offset; :func:`_residue_planes`),
    ``dw[tap(q, r)] = sum_n X[n, q] . P[n, r]``: a ``dot_general`` batched over images
    and channels, summed over images.
    """
    grp = spec.groups
    cog = spec.out_channels // grp
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    xc, planes, geo = _residue_planes(x, g, spec, dtype)
    strides, offsets = [se for se, *_ in geo], [a for _, a, _, _ in geo]
    planes = planes.reshape(spec.batch, grp, cog * math.prod(strides), -1)
    shifted = []  # X: [N, g, prod(A), prod(Q)]
    for offs in itertools.product(*(range(a) for a in offsets)):
        pads = [(0, 0, 0)] * 2
        pads += [(o, q - i - o, 0) for o, (_, _, q, _), i in zip(offs, geo, spec.input_size)]
        shifted.append(lax.pad(xc, jnp.zeros((), dtype), pads).reshape(spec.batch, grp, -1))
    prods = lax.dot_general(
        jnp.stack(shifted, 2),
        planes,
        (((3,), (3,)), ((0, 1), (0, 1))),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.promote_types(dtype, jnp.float32),
    )  # [N, g, prod(A), cog * R]
    prods = prods.sum(0).reshape(grp, math.prod(offsets), cog, math.prod(strides))
    taps = _tap_residues(spec, geo)
    q_of = np.array([np.ravel_multi_index(a, offsets) for a, _ in taps])
    r_of = np.array([np.ravel_multi_index(r, strides) for _, r in taps])
    wt = prods[:, q_of, :, r_of].reshape(*spec.kernel_size, grp, cog)  # [*k, g, cog]
    return weight_from_channels_last(wt.astype(dtype), spec)


def _weight_grad_loop(x, g, *, spec, preferred_element_type):
    """Depthwise-like weight gradient: one tap per iteration of a loop (``lax.map``), its
    window of the residue planes (:func:`_residue_planes`) times the input, summed.

    One window is live at a time: unrolled, XLA:CPU materializes every tap's window and
    its scheduler keeps them all live together.
    """
    n, grp = spec.ndim, spec.groups
    cog = spec.out_channels // grp
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    xc, planes, geo = _residue_planes(x, g, spec, dtype)
    xc = xc.reshape(spec.batch, grp, 1, *spec.input_size)
    table = _tap_table(spec, geo)
    axes = (0, *range(3, n + 3))

    def tap(row):
        return (xc * _tap_window(planes, row, spec)).sum(axes)

    wt = lax.map(tap, table).reshape(*spec.kernel_size, grp, cog)
    return weight_from_channels_last(wt, spec)


def _weight_grad_bytes(spec):
    """Temporary elements of :func:`_weight_grad_per_tap` (a slice of the cotangent per
    tap) and :func:`_weight_grad_dot` (the padded input per offset, the residue planes)."""
    cog = spec.out_channels // spec.groups
    images = spec.batch * spec.groups
    geo = _geometry(spec)
    per_tap = math.prod(spec.kernel_size) * images * cog * math.prod(spec.input_size)
    planes = math.prod(a for _, a, _, _ in geo) + cog * math.prod(se for se, *_ in geo)
    return per_tap, planes * images * math.prod(q for _, _, q, _ in geo)


def weight_grad_elementwise(x, g, *, spec, preferred_element_type):
    """Depthwise-like weight gradient, in the form that holds the fewest temporaries.

    XLA:CPU takes all of a call's temporary buffers in one allocation, which glibc maps
    afresh on every call once it passes 32 MiB: every page is then faulted in, about
    0.4 ms per MiB here, more than writing it. Unrolled per-tap products
    (:func:`_weight_grad_per_tap`) hold every tap's slice of the cotangent at once (XLA
    materializes each for its fused reductions, and its scheduler keeps them all
    live): ``prod(k)`` input-sized buffers. So:

    * the batched products (:func:`_weight_grad_dot`: one copy of the input per offset
      plus the cotangent once) where they hold at most
      :data:`WEIGHT_GRAD_DOT_MAX_BYTES` of that (k4 s2, k8 s4, 3-d);
    * else, where taps overlap (more taps than residues: stride 1, k3 s2, dilation) and
      the per-tap slices would hold :data:`WEIGHT_GRAD_LOOP_MIN_BYTES` or more, a loop
      over the taps (:func:`_weight_grad_loop`: the cotangent once plus one window;
      on smaller layers the loop's overhead, about 0.1 ms, is what shows);
    * else (each residue one tap, e.g. ``k = s``, or a small layer) the per-tap products.

    Forward+backward, 8x128x32x32 (64 channels for k3 s2), one process, interleaved
    (per tap / dot / loop, ms): k4 s2 56 / 39 / 46; stride-1 k3 22 / 54 / 11; k3 s2 op1
    24 / 22 / 9.9; k3 s2 dilation 2 20 / 30 / 8.8; k2 s2 18.5 / 18 / 20.5.
    """
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    form = {"dot": _weight_grad_dot, "loop": _weight_grad_loop, "per_tap": _weight_grad_per_tap}
    return form[_weight_grad_form(spec, np.dtype(dtype).itemsize)](
        x, g, spec=spec, preferred_element_type=preferred_element_type
    )


def _weight_grad_form(spec, itemsize):
    """Which form :func:`weight_grad_elementwise` runs: ``"dot"``, ``"loop"`` or
    ``"per_tap"`` (never past ``MAX_UNROLLED`` taps: the program would grow with them)."""
    per_tap, dot = _weight_grad_bytes(spec)
    offsets = math.prod(a for _, a, _, _ in _geometry(spec))  # the dot's copies of x
    if dot <= WEIGHT_GRAD_DOT_MAX_BYTES * per_tap and offsets <= _cost.MAX_UNROLLED:
        return "dot"
    taps = math.prod(spec.kernel_size)
    overlap = taps > math.prod(spec.stride)
    if (overlap and per_tap * itemsize >= WEIGHT_GRAD_LOOP_MIN_BYTES) or taps > _cost.MAX_UNROLLED:
        return "loop"
    return "per_tap"


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


def weight_grad_filter_conv(x, g, *, spec, precision, preferred_element_type):
    """Transpose in ``w`` as one convolution: the filter gradient of the strided forward
    convolution (the one :func:`input_grad_convs` runs).

    ``<conv_transpose(x, w), g> = <x, forward_conv(g, w)>``, so ``dw`` is
    ``forward_conv(g, .)`` transposed, applied to ``x``: one convolution whatever the
    number of taps (what cuDNN's backward-filter kernel computes; XLA:CPU runs it far
    slower than the per-tap dots, so the plan takes it only past ``MAX_UNROLLED`` taps,
    where the per-tap program would grow without bound).
    """
    # Computed in the result's dtype: JAX transposes a convolution in its operands' dtype,
    # so with ``preferred_element_type`` the operands are cast up to it first.
    dtype = out_dtype(jnp.result_type(x.dtype, g.dtype), preferred_element_type)
    w_aval = jax.ShapeDtypeStruct(spec.weight_shape, dtype)

    def forward(w):
        return forward_conv(g.astype(dtype), w, spec, precision=precision)

    (dw,) = jax.linear_transpose(forward, w_aval)(x.astype(dtype))
    return dw

"""The sub-pixel lowering of the forward pass: one stride-1 convolution, then depth-to-space.

Tap ``j`` of input ``i`` lands on full-result position ``i * s + j * d = (i + a) * s + r``
(:func:`.gemm._geometry`). Padding the kernel (dilated) to ``A * s`` taps per dimension
and splitting each tap index into ``(a, r)`` turns the transposed convolution into

``Y2[q, r] = sum_a X[q - a] * W2[a, r]``

a stride-1 convolution of the input with ``A`` taps per dimension and
``C_out * prod(s)`` output channels (every residue ``r`` of every output channel), whose
result rows ``q`` and residues ``r`` interleave into the output (depth-to-space: Shi et
al. 2016, "Is the deconvolution layer the same as a convolutional layer?"). It is
the phase decomposition with every phase's sub-kernel padded to a common window: when
``s`` divides ``k * d`` nothing is padded and the whole layer is a single convolution
(no per-phase programs, no interleave of separately computed phases); otherwise the
padded taps multiply zeros, which the cost model (:mod:`jaxdeconv._cost`) charges. A
dimension of stride 1 keeps its ``k`` taps and dilates the convolution's window
instead (:func:`_taps`): zero-filled, a 3-d k7 d2 layer's window held 13^3 taps for
7^3 useful ones and ran 10 s against 0.11 s.
Only the result rows the output keeps are computed, and nothing larger than the output
is materialized.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from ..._layout import act_from_channels_last, act_to_channels_last, weight_to_torch
from ..._spec import ConvTransposeSpec
from .conv import _stride1_conv
from .gemm import _geometry, _spatial_crop, out_dtype

__all__ = ["forward", "window"]


def window(spec: ConvTransposeSpec) -> tuple[int, int, int]:
    """``(prod(A), prod(s), rows)``: the convolution's window, its residues per output
    channel (``prod(A * s)`` taps multiplied against ``prod(k)`` useful ones) and its
    result rows per image."""
    geo = _geometry(spec)
    return (
        math.prod(t for t, _ in _taps(spec, geo)),
        math.prod(se for se, _, _, _ in geo),
        math.prod(r for _, r, _ in _rows(spec, geo)),
    )


def _taps(spec: ConvTransposeSpec, geo):
    """Per dimension ``(taps, dilation)`` of the convolution's window: ``A`` taps, or at
    stride 1 (one residue) the kernel's own ``k`` taps, dilated by ``d``."""
    return [
        (k, d) if se == 1 else (a_count, 1)
        for k, d, (se, a_count, _, _) in zip(spec.kernel_size, spec.dilation, geo)
    ]


def _rows(spec: ConvTransposeSpec, geo):
    """Per dimension ``(q0, rows, start)``: the result rows ``[q0, q0 + rows)`` the output
    needs, and where the output starts in their ``rows * s`` positions."""
    out = []
    for (lo, _), (se, _, _, _), o in zip(_spatial_crop(spec, geo, 1), geo, spec.output_size):
        q0 = lo // se
        q1 = (lo + o - 1) // se + 1 if o else q0
        out.append((q0, q1 - q0, lo - q0 * se))
    return out


def forward(x, w, *, spec: ConvTransposeSpec, precision, preferred_element_type, fold_leading=True):
    """The transposed convolution as one stride-1 convolution + depth-to-space."""
    n, grp = spec.ndim, spec.groups
    ci, co = spec.in_channels, spec.out_channels
    geo = _geometry(spec)
    dtype = jnp.result_type(x.dtype, w.dtype)
    wt = weight_to_torch(w, spec)  # [C_in, C_out/g, *k]
    zero = jnp.zeros((), wt.dtype)
    # the kernel dilated and padded to A * s taps, split (A, s), A flipped (a convolution);
    # at stride 1 left as it is, the convolution dilated (_taps)
    taps = _taps(spec, geo)
    pads = [(0, 0, 0), (0, 0, 0)]
    for k, d, (se, a_count, _, _), (_, dil) in zip(spec.kernel_size, spec.dilation, geo, taps):
        pads.append((0, 0, 0) if dil > 1 else (0, a_count * se - (k - 1) * d - 1, d - 1))
    w2 = lax.pad(wt, zero, pads)
    w2 = w2.reshape(ci, co // grp, *[v for (se, *_), (t, _) in zip(geo, taps) for v in (t, se)])
    w2 = jnp.flip(w2, [2 + 2 * m for m in range(n)])
    # -> [O = (g, C_out/g, *s), I = C_in/g, *A]: groups major in O, as the convolution wants
    w2 = w2.reshape(grp, ci // grp, co // grp, *w2.shape[2:])
    perm = [0, 2, *(4 + 2 * m for m in range(n)), 1, *(3 + 2 * m for m in range(n))]
    w2 = w2.transpose(perm).reshape(-1, ci // grp, *(t for t, _ in taps))
    w2 = jnp.moveaxis(w2, (0, 1), (-1, -2))  # [*A, C_in/g, O]
    rows = _rows(spec, geo)
    conv_pads = [
        (a_count - 1 - q0, nrows + q0 - i)
        for (_, a_count, _, _), (q0, nrows, _), i in zip(geo, rows, spec.input_size)
    ]
    # channels-last; 3-d and higher folded to 2-d where the leading window has several
    # taps (XLA:CPU runs 2-d convolutions faster: 3-d k4 s2 5.0 -> 2.4 ms, k3 s2 9.0 ->
    # 5.2 ms; with one leading tap the fold only adds copies: 3-d k2 s2 2.6 -> 3.9 ms)
    fold = fold_leading and math.prod(t for t, _ in taps[: max(n - 2, 0)]) > 1
    y2 = _stride1_conv(
        act_to_channels_last(x, spec),
        w2,
        conv_pads,
        tuple(dil for _, dil in taps),
        grp,
        precision=precision,
        preferred_element_type=preferred_element_type,
        fold=fold,
    )  # [N, *rows, (C_out, *s)]
    se_ = [se for se, _, _, _ in geo]
    y2 = y2.reshape(spec.batch, *(r for _, r, _ in rows), co, *se_)
    perm = [0]
    for m in range(n):
        perm += [1 + m, 2 + n + m]  # rows and residues side by side
    y = y2.transpose([*perm, 1 + n])
    y = y.reshape(spec.batch, *(r * se for (_, r, _), se in zip(rows, se_)), co)
    y = y[(slice(None), *(slice(a, a + o) for (_, _, a), o in zip(rows, spec.output_size)))]
    y = act_from_channels_last(y, spec)
    return y.astype(out_dtype(dtype, preferred_element_type))

"""Study tools: a transposed convolution is the transpose (the gradient) of a convolution.

Every function here takes :func:`jaxdeconv.conv_transpose`'s arguments in its
order (``stride, padding, output_padding, groups, dilation``, PyTorch's weight
layout ``[C_in, C_out/groups, *kernel]``, channels first) and shows one view of
the same operation:

* :func:`conv_matrix`: the dense matrix ``C`` of the *forward* convolution that
  maps a ``[C_out, *output]`` array to a ``[C_in, *input]`` one. The transposed
  convolution is ``C.T``: ``conv_transpose(x).ravel() == C.T @ x.ravel()``
  (:func:`transpose_by_matrix`, checked for every formulation by
  :func:`check_matrix_statement`).
* :func:`forward_conv` and :func:`transpose_by_vjp`: the same statement for
  autodiff: the transposed convolution is the vector-Jacobian product (the
  gradient) of the forward convolution.
* :func:`steps`: the hand method of the seed blog post as arrays: insert
  ``stride - 1`` zeros between pixels, pad, flip the kernel (swapping its
  channels within each group), slide it with stride 1.
* :func:`coverage` and :func:`phases`: how many kernel taps reach each output
  pixel, and which sub-kernel (phase) produces it: the checkerboard of Odena et
  al. (2016) whenever the kernel size is not a multiple of the stride.

Everything is computed in float64 NumPy from the definition (each input pixel
``i`` and tap ``j`` reach output ``i * stride + j * dilation - pad_lo``); the
sizes come from :func:`jaxdeconv.make_spec`. Bias is left out: it adds the same
value to every pixel of a channel and plays no part in the transpose.

Examples:
  The seed's example: a 3x3 input, a 2x2 kernel, stride 1.

  >>> import numpy as np
  >>> from jaxdeconv import study
  >>> x, w = study.seed_example()
  >>> C = study.conv_matrix(w, (3, 3))
  >>> C.shape                                   # [C_in*3*3, C_out*4*4]
  (9, 16)
  >>> (C.T @ x.ravel()).reshape(4, 4)
  array([[ 4., 12., 11.,  6.],
         [ 0.,  7., 14., 11.],
         [ 2.,  7., 11.,  8.],
         [ 0.,  2.,  3.,  2.]])
  >>> study.check_matrix_statement(x, w).holds
  True
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import string
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._api import conv_transpose
from ._layout import flipped_kernel
from ._reference import relative_error
from ._spec import (
    ConvTransposeSpec,
    IntOrSeq,
    PaddingLike,
    _as_tuple,
    _spatial_ndim,
    as_array,
    make_spec,
    output_padding_for_size,
    resolve_padding,
)
from .formulations import FORMULATIONS
from .formulations.lax_based import forward_conv as _forward_conv

__all__ = [
    "SEED_INPUT",
    "SEED_KERNEL",
    "SEED_OUTPUT",
    "SEED_OUTPUT_PADDING_1",
    "MatrixStatement",
    "PhaseView",
    "Steps",
    "check_matrix_statement",
    "conv_matrix",
    "coverage",
    "forward_conv",
    "phases",
    "seed_example",
    "size_formula",
    "steps",
    "transpose_by_matrix",
    "transpose_by_vjp",
]

SEED_INPUT = ((4, 4, 3), (0, 3, 4), (2, 3, 2))
"""The seed's input ``x`` (``torch.manual_seed(0); torch.randint(5, (1, 1, 3, 3))``)."""
SEED_KERNEL = ((1, 2), (0, 1))
"""The seed's kernel ``w``."""
SEED_OUTPUT = ((4, 12, 11, 6), (0, 7, 14, 11), (2, 7, 11, 8), (0, 2, 3, 2))
"""``ConvTranspose2d(1, 1, 2, stride=1, padding=0)`` of the seed's ``x`` and ``w``."""
SEED_OUTPUT_PADDING_1 = ((7, 14), (7, 11))
"""The same with ``padding=1``: the centre of :data:`SEED_OUTPUT`."""


def seed_example() -> tuple[np.ndarray, np.ndarray]:
    """The seed blog post's input ``[1, 1, 3, 3]`` and weight ``[1, 1, 2, 2]``, float32.

    Examples:
      >>> x, w = seed_example()
      >>> x.shape, w.shape
      ((1, 1, 3, 3), (1, 1, 2, 2))
    """
    return (
        np.array(SEED_INPUT, np.float32)[None, None],
        np.array(SEED_KERNEL, np.float32)[None, None],
    )


# --------------------------------------------------------------------------- helpers


def _as_array(name: str, value) -> np.ndarray:
    arr = as_array(name, value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _as_weight(weight) -> np.ndarray:
    w = _as_array("weight", weight)
    if w.ndim < 3:
        raise ValueError(
            f"weight must have shape [C_in, C_out/groups, *kernel] with at least one spatial "
            f"dimension, got weight.shape={w.shape}"
        )
    return w


def _as_input(name: str, value, ndim: int) -> tuple[np.ndarray, bool]:
    """A batched float64 array and whether the given one was unbatched."""
    x = _as_array(name, value)
    if x.ndim == ndim + 1:
        return x[None], True
    if x.ndim != ndim + 2:
        raise ValueError(
            f"{name}.shape={x.shape} must be [N, C, *spatial] or [C, *spatial] with {ndim} "
            f"spatial dimension(s), to match the weight"
        )
    return x, False


def _size_spec(
    input_size, kernel_size, stride, padding, output_padding, dilation, output_size
) -> ConvTransposeSpec:
    """A one-channel spec for the shape-only functions."""
    ndim = _spatial_ndim(input_size, kernel_size)
    ins = _as_tuple("input_size", input_size, ndim)
    ks = _as_tuple("kernel_size", kernel_size, ndim)
    return make_spec(
        (1, 1, *ins),
        (1, 1, *ks),
        stride,
        padding,
        output_padding,
        1,
        dilation,
        output_size=output_size,
    )


def _weight_spec(
    weight: np.ndarray, input_size, stride, padding, output_padding, groups, dilation, output_size
) -> ConvTransposeSpec:
    ins = _as_tuple("input_size", input_size, weight.ndim - 2)
    return make_spec(
        (1, weight.shape[0], *ins),
        weight.shape,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
    )


def _spatial(a: np.ndarray, n: int, per_dim) -> tuple:
    return (slice(None),) * (a.ndim - n) + tuple(per_dim)


def _insert_zeros(a: np.ndarray, stride: Sequence[int]) -> np.ndarray:
    """``stride - 1`` zeros between neighbours along the last ``len(stride)`` axes."""
    n = len(stride)
    size = tuple((i - 1) * s + 1 for i, s in zip(a.shape[-n:], stride))
    out = np.zeros(a.shape[:-n] + size, a.dtype)
    out[_spatial(out, n, (slice(None, None, s) for s in stride))] = a
    return out


def _pad(a: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Zero-pad the last axes by ``(lo, hi)``; a negative amount crops instead."""
    n = len(pads)
    widths = [(0, 0)] * (a.ndim - n) + [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    a = np.pad(a, widths)
    crop = (
        slice(max(-lo, 0), a.shape[a.ndim - n + i] - max(-hi, 0)) for i, (lo, hi) in enumerate(pads)
    )
    return a[_spatial(a, n, crop)]


# --------------------------------------------------------------------------- the matrix view


def conv_matrix(
    weight: ArrayLike,
    input_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
) -> np.ndarray:
    """The dense matrix ``C`` of the forward convolution whose transpose is conv_transpose.

    The forward convolution reads ``weight`` (``[C_in, C_out/groups, *k]``) as an
    ordinary convolution kernel from ``C_out`` to ``C_in`` channels and maps a
    ``[C_out, *output]`` array to a ``[C_in, *input]`` one, with the same stride,
    padding and dilation (:func:`forward_conv`). With arrays flattened in C order,
    ``forward_conv(z).ravel() == C @ z.ravel()`` and
    ``conv_transpose(x).ravel() == C.T @ x.ravel()``.

    Entry ``C[(c_in, i), (c_out, o)]`` is ``weight[c_in, c_out % (C_out/groups), j]``
    when ``o == i * stride + j * dilation - pad_lo`` for a tap ``j`` and both
    channels are in the same group, else 0.

    Args:
      weight: ``[C_in, C_out/groups, *kernel]``, PyTorch's layout.
      input_size: spatial size of the transposed convolution's input (an int
        or one per dimension).
      stride, padding, output_padding, groups, dilation, output_size: as in
        :func:`jaxdeconv.conv_transpose`.

    Returns:
      float64 ``[C_in * prod(input_size), C_out * prod(output_size)]``.

    Raises:
      ValueError, TypeError: for arguments :func:`jaxdeconv.conv_transpose`
        rejects.

    Examples:
      Dumoulin & Visin's example, a 3x3 kernel on a 4x4 input: ``C`` is 4 x 16.

      >>> w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
      >>> C = conv_matrix(w, (2, 2))
      >>> C.shape
      (4, 16)
      >>> C[0]
      array([1., 2., 3., 0., 4., 5., 6., 0., 7., 8., 9., 0., 0., 0., 0., 0.])
    """
    w = _as_weight(weight)
    spec = _weight_spec(
        w, input_size, stride, padding, output_padding, groups, dilation, output_size
    )
    n = spec.ndim
    g = spec.groups
    cig, cog = spec.in_channels // g, spec.out_channels // g
    p_in, p_out = math.prod(spec.input_size), math.prod(spec.output_size)
    C = np.zeros((spec.in_channels * p_in, spec.out_channels * p_out))
    where = np.indices(spec.input_size).reshape(n, -1)  # [n, P_in]
    flat_in = np.arange(p_in)
    group_of = np.arange(spec.in_channels) // cig  # [C_in]
    for tap in itertools.product(*(range(k) for k in spec.kernel_size)):
        pos = tuple(
            where[a] * spec.stride[a] + tap[a] * spec.dilation[a] - spec.crop[a][0]
            for a in range(n)
        )
        ok = np.all([(p >= 0) & (p < o) for p, o in zip(pos, spec.output_size)], axis=0)
        if not ok.any():
            continue
        flat_out = np.ravel_multi_index(tuple(p[ok] for p in pos), spec.output_size)
        rows = np.arange(spec.in_channels)[:, None, None] * p_in + flat_in[ok][None, None, :]
        out_ch = group_of[:, None] * cog + np.arange(cog)[None, :]  # [C_in, cog]
        cols = out_ch[:, :, None] * p_out + flat_out[None, None, :]
        vals = w[(slice(None), slice(None), *tap)][:, :, None]  # [C_in, cog, 1]
        np.add.at(C, (np.broadcast_to(rows, cols.shape), cols), np.broadcast_to(vals, cols.shape))
    return C


def forward_conv(
    output: ArrayLike,
    weight: ArrayLike,
    input_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """The forward convolution whose transpose (and gradient) is the transposed convolution.

    ``torch.nn.functional.conv{1,2,3}d(output, weight, None, stride, padding,
    dilation, groups)``: ``weight`` in PyTorch's transposed layout
    ``[C_in, C_out/groups, *k]`` *is* a forward kernel from ``C_out`` to ``C_in``
    channels. The padding is the transposed convolution's per-side crop (with
    ``output_padding`` taken off the high side), so the result has exactly the
    transposed convolution's input size even where ``output_padding >= stride``.

    Args:
      output: ``[N, C_out, *out]`` or ``[C_out, *out]``: shaped like the transposed
        convolution's output.
      weight: ``[C_in, C_out/groups, *kernel]``.
      input_size: spatial size of the transposed convolution's input.
      stride, padding, output_padding, groups, dilation, output_size: as in
        :func:`jaxdeconv.conv_transpose`.
      precision: passed to ``lax.conv_general_dilated``.

    Returns:
      ``[N, C_in, *input_size]`` (unbatched if ``output`` was).

    Examples:
      >>> x, w = seed_example()
      >>> z = jnp.ones((1, 1, 4, 4))
      >>> forward_conv(z, w, (3, 3))[0, 0]
      Array([[4., 4., 4.],
             [4., 4., 4.],
             [4., 4., 4.]], dtype=float32)
    """
    w = _as_weight(weight)
    spec = _weight_spec(
        w, input_size, stride, padding, output_padding, groups, dilation, output_size
    )
    z = jnp.asarray(output)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.float32)
    unbatched = z.ndim == spec.ndim + 1
    if unbatched:
        z = z[None]
    if z.ndim != spec.ndim + 2 or z.shape[1:] != spec.output_shape[1:]:
        raise ValueError(
            f"output.shape={tuple(output.shape) if hasattr(output, 'shape') else output!r} must "
            f"be [N, {spec.out_channels}, *{spec.output_size}] (the transposed convolution's "
            f"output) for input_size={spec.input_size}"
        )
    y = _forward_conv(z, jnp.asarray(w, z.dtype), spec, precision=precision)
    return y[0] if unbatched else y


def transpose_by_matrix(
    input: ArrayLike,
    weight: ArrayLike,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
) -> np.ndarray:
    """The transposed convolution computed as ``C.T @ x`` (float64, no bias).

    Args:
      input: ``[N, C_in, *in]`` or ``[C_in, *in]``.
      weight: ``[C_in, C_out/groups, *kernel]``.
      stride, padding, output_padding, groups, dilation, output_size: as in
        :func:`jaxdeconv.conv_transpose`.

    Returns:
      ``[N, C_out, *out]`` (unbatched if ``input`` was), equal to
      ``conv_transpose(input, weight, None, stride, ...)``.

    Examples:
      >>> x, w = seed_example()
      >>> transpose_by_matrix(x, w, padding=1)[0, 0]
      array([[ 7., 14.],
             [ 7., 11.]])
    """
    w = _as_weight(weight)
    x, unbatched = _as_input("input", input, w.ndim - 2)
    C = conv_matrix(
        w, x.shape[2:], stride, padding, output_padding, groups, dilation, output_size=output_size
    )
    spec = _weight_spec(
        w, x.shape[2:], stride, padding, output_padding, groups, dilation, output_size
    )
    if x.shape[1] != spec.in_channels:
        raise ValueError(
            f"input has {x.shape[1]} channels but weight.shape={w.shape} expects "
            f"C_in={spec.in_channels}"
        )
    y = (x.reshape(x.shape[0], -1) @ C).reshape(x.shape[0], *spec.output_shape[1:])
    return y[0] if unbatched else y


def transpose_by_vjp(
    input: ArrayLike,
    weight: ArrayLike,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """The transposed convolution as the VJP (gradient) of :func:`forward_conv`.

    ``jax.vjp(forward_conv, z)[1](x)`` for any ``z`` shaped like the output:
    the forward convolution is linear, so its VJP with cotangent ``x`` is
    ``C.T @ x``: the gradient of ``sum(x * forward_conv(z))`` with respect to
    ``z``. This is how frameworks compute transposed convolutions (and the
    :func:`jaxdeconv.FORMULATIONS` ``"vjp"`` peer does it with
    ``jax.linear_transpose``).

    Args:
      input: ``[N, C_in, *in]`` or ``[C_in, *in]``.
      weight: ``[C_in, C_out/groups, *kernel]``.
      stride, padding, output_padding, groups, dilation, output_size: as in
        :func:`jaxdeconv.conv_transpose`.
      precision: passed to ``lax``.

    Returns:
      ``[N, C_out, *out]`` (unbatched if ``input`` was).

    Examples:
      >>> x, w = seed_example()
      >>> transpose_by_vjp(x, w)[0, 0]
      Array([[ 4., 12., 11.,  6.],
             [ 0.,  7., 14., 11.],
             [ 2.,  7., 11.,  8.],
             [ 0.,  2.,  3.,  2.]], dtype=float32)
    """
    w = _as_weight(weight)
    xa = jnp.asarray(input)
    if not jnp.issubdtype(xa.dtype, jnp.floating):
        xa = xa.astype(jnp.float32)
    n = w.ndim - 2
    unbatched = xa.ndim == n + 1
    if unbatched:
        xa = xa[None]
    if xa.ndim != n + 2:
        raise ValueError(f"input.shape={xa.shape} must have {n + 1} or {n + 2} dimensions")
    spec = _weight_spec(
        w, xa.shape[2:], stride, padding, output_padding, groups, dilation, output_size
    )

    def forward(z):
        return forward_conv(
            z,
            w,
            spec.input_size,
            spec.stride,
            padding,
            output_padding,
            groups,
            dilation,
            output_size=output_size,
            precision=precision,
        )

    z0 = jnp.zeros((xa.shape[0], *spec.output_shape[1:]), xa.dtype)
    _, pullback = jax.vjp(forward, z0)
    (y,) = pullback(xa)
    return y[0] if unbatched else y


@dataclasses.dataclass(frozen=True, eq=False)
class MatrixStatement:
    """The outcome of :func:`check_matrix_statement`.

    Attributes:
      matrix: ``C``, ``[C_in * prod(in), C_out * prod(out)]``.
      by_matrix: ``C.T @ x``, shaped like the output, float64.
      results: ``conv_transpose(x, w, ..., method=m)`` for each formulation ``m``.
      errors: ``max|result - by_matrix| / max(1, max|by_matrix|)`` per formulation.
      tolerance: the largest error accepted.
    """

    matrix: np.ndarray
    by_matrix: np.ndarray
    results: dict[str, np.ndarray]
    errors: dict[str, float]
    tolerance: float

    @property
    def holds(self) -> bool:
        """Whether every formulation equals ``C.T @ x`` within ``tolerance``."""
        return all(e <= self.tolerance for e in self.errors.values())

    def __str__(self) -> str:
        r, c = self.matrix.shape
        errs = ", ".join(f"{m} {e:.1e}" for m, e in self.errors.items())
        verdict = "holds" if self.holds else "FAILS"
        return f"conv_transpose(x) == C.T @ x with C {r} x {c}: {verdict} (errors: {errs})"


def check_matrix_statement(
    input: ArrayLike,
    weight: ArrayLike,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
    methods: Sequence[str] | None = None,
    tolerance: float = 1e-5,
) -> MatrixStatement:
    """Check ``conv_transpose(x).ravel() == C.T @ x.ravel()`` for every formulation.

    Each formulation of :data:`jaxdeconv.FORMULATIONS` (or ``methods``) runs in
    float32 at ``precision="highest"`` and is compared with the float64 product
    ``C.T @ x`` of :func:`conv_matrix`, which is built from the definition alone.

    Args:
      input: ``[N, C_in, *in]`` or ``[C_in, *in]``.
      weight: ``[C_in, C_out/groups, *kernel]``.
      stride, padding, output_padding, groups, dilation, output_size: as in
        :func:`jaxdeconv.conv_transpose`.
      methods: formulation names; default all.
      tolerance: the largest relative error (see :class:`MatrixStatement`) accepted.

    Returns:
      A :class:`MatrixStatement`; its ``holds`` says whether the statement holds.

    Examples:
      >>> x, w = seed_example()
      >>> print(check_matrix_statement(x, w, stride=2, padding=1))
      conv_transpose(x) == C.T @ x with C 9 x 16: holds (errors: vjp 0.0e+00, ...)
    """
    w = _as_weight(weight)
    x, unbatched = _as_input("input", input, w.ndim - 2)
    names = list(FORMULATIONS if methods is None else methods)
    for m in names:
        if m not in FORMULATIONS:
            raise ValueError(f"methods={methods!r}: {m!r} is not one of {sorted(FORMULATIONS)}")
    C = conv_matrix(
        w, x.shape[2:], stride, padding, output_padding, groups, dilation, output_size=output_size
    )
    spec = _weight_spec(
        w, x.shape[2:], stride, padding, output_padding, groups, dilation, output_size
    )
    ref = (x.reshape(x.shape[0], -1) @ C).reshape(x.shape[0], *spec.output_shape[1:])
    results, errors = {}, {}
    for m in names:
        y = conv_transpose(
            jnp.asarray(x, jnp.float32),
            jnp.asarray(w, jnp.float32),
            None,
            stride,
            padding,
            output_padding,
            groups,
            dilation,
            output_size=output_size,
            method=m,
            precision="highest",
        )
        results[m] = np.asarray(y[0] if unbatched else y)
        errors[m] = relative_error(y, ref)
    return MatrixStatement(
        matrix=C,
        by_matrix=ref[0] if unbatched else ref,
        results=results,
        errors=errors,
        tolerance=float(tolerance),
    )


# --------------------------------------------------------------------------- the hand method


@dataclasses.dataclass(frozen=True, eq=False)
class Steps:
    """The seed's hand method as arrays (see :func:`steps`). All arrays float64, batched.

    Attributes:
      spec: the validated description of the operation.
      input: ``[N, C_in, *in]``.
      weight: ``[C_in, C_out/groups, *k]`` as given.
      zero_inserted: ``[N, C_in, *((in - 1) * stride + 1)]``: ``stride - 1`` zeros
        between neighbouring pixels.
      padding: ``(lo, hi)`` zeros added on each side of ``zero_inserted``:
        ``dilation * (k - 1) - crop`` (negative: that many pixels cropped).
      padded: ``[N, C_in, *(out + dilation * (k - 1))]``.
      kernel: ``[C_out, C_in/groups, *k]``: the weight with in/out channels
        swapped within each group and its taps flipped.
      dilated_kernel: ``kernel`` with ``dilation - 1`` zeros between taps.
      output: ``[N, C_out, *out]``: ``dilated_kernel`` slid over ``padded`` with
        stride 1, no padding.
    """

    spec: ConvTransposeSpec
    input: np.ndarray
    weight: np.ndarray
    zero_inserted: np.ndarray
    padding: tuple[tuple[int, int], ...]
    padded: np.ndarray
    kernel: np.ndarray
    dilated_kernel: np.ndarray
    output: np.ndarray

    def window(self, index: Sequence[int]) -> tuple[slice, ...]:
        """Spatial slices of ``padded`` that output pixel ``index`` reads.

        Examples:
          >>> s = steps(*seed_example())
          >>> s.window((0, 0))
          (slice(0, 2, None), slice(0, 2, None))
        """
        index = tuple(int(i) for i in index)
        if len(index) != self.spec.ndim or not all(
            0 <= i < o for i, o in zip(index, self.spec.output_size)
        ):
            raise ValueError(
                f"index={index} is not an output position; the output size is "
                f"{self.spec.output_size}"
            )
        return tuple(slice(i, i + k) for i, k in zip(index, self.spec.effective_kernel_size))

    @property
    def cell_kind(self) -> np.ndarray:
        """``[*padded size]`` ints: 2 an input pixel, 1 an inserted zero, 0 padding."""
        ones = np.ones(self.spec.input_size)
        inserted = _insert_zeros(ones, self.spec.stride) + 1.0
        return _pad(inserted, self.padding).astype(int)


def steps(
    input: ArrayLike,
    weight: ArrayLike,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
) -> Steps:
    """The seed's hand method, step by step: zero insertion, padding, flip, slide.

    1. Insert ``stride - 1`` zeros between neighbouring input pixels.
    2. Pad each side with ``dilation * (k - 1) - crop`` zeros, where the crop is
       PyTorch's ``padding`` (and ``padding - output_padding`` on the high side);
       a negative amount crops.
    3. Swap the kernel's in/out channels within each group and flip its taps;
       insert ``dilation - 1`` zeros between taps.
    4. Slide it over the padded input with stride 1 (a ``VALID`` convolution).

    Computed in float64 NumPy; the result equals
    ``conv_transpose(input, weight, None, stride, ...)``.

    Args:
      input: ``[N, C_in, *in]`` or ``[C_in, *in]``.
      weight: ``[C_in, C_out/groups, *kernel]``.
      stride, padding, output_padding, groups, dilation, output_size: as in
        :func:`jaxdeconv.conv_transpose`.

    Returns:
      :class:`Steps`.

    Examples:
      >>> s = steps(*seed_example())
      >>> s.padded[0, 0]
      array([[0., 0., 0., 0., 0.],
             [0., 4., 4., 3., 0.],
             [0., 0., 3., 4., 0.],
             [0., 2., 3., 2., 0.],
             [0., 0., 0., 0., 0.]])
      >>> s.kernel[0, 0]
      array([[1., 0.],
             [2., 1.]])
      >>> s.output[0, 0, 0]
      array([ 4., 12., 11.,  6.])
    """
    w = _as_weight(weight)
    x, _ = _as_input("input", input, w.ndim - 2)
    spec = make_spec(
        x.shape,
        w.shape,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
    )
    n, g = spec.ndim, spec.groups
    zero_inserted = _insert_zeros(x, spec.stride)
    pads = spec.lhs_dilated_padding
    padded = _pad(zero_inserted, pads)
    kernel = flipped_kernel(w, g)
    dilated = _insert_zeros(kernel, spec.dilation)
    k_eff = spec.effective_kernel_size
    spatial_axes = tuple(range(2, n + 2))
    win = np.lib.stride_tricks.sliding_window_view(padded, k_eff, axis=spatial_axes)
    # win: [N, C_in, *out, *k_eff]; split channels into groups.
    cig, cog = spec.in_channels // g, spec.out_channels // g
    win = win.reshape(spec.batch, g, cig, *win.shape[2:])
    ker = dilated.reshape(g, cog, cig, *k_eff)
    letters = string.ascii_uppercase[: 2 * n]
    o_l, k_l = letters[:n], letters[n:]
    y = np.einsum(f"ngc{o_l}{k_l},gdc{k_l}->ngd{o_l}", win, ker)
    output = y.reshape(spec.batch, spec.out_channels, *y.shape[3:])
    return Steps(
        spec=spec,
        input=x,
        weight=w,
        zero_inserted=zero_inserted,
        padding=pads,
        padded=padded,
        kernel=kernel,
        dilated_kernel=dilated,
        output=output,
    )


# --------------------------------------------------------------------------- coverage and phases


def _coverage_1d(i: int, k: int, s: int, d: int, lo: int, out: int) -> np.ndarray:
    pos = (np.arange(i)[:, None] * s + np.arange(k)[None, :] * d - lo).ravel()
    pos = pos[(pos >= 0) & (pos < out)]
    return np.bincount(pos, minlength=out)


def coverage(
    input_size: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
) -> np.ndarray:
    """How many (input pixel, kernel tap) pairs reach each output pixel.

    Arguments in the order of :func:`jaxdeconv.conv_transpose_output_size`. Away
    from the borders the count is constant when every kernel size is a multiple
    of its stride (with ``dilation=1``) and alternates otherwise: the
    checkerboard of Odena et al. (2016), "Deconvolution and Checkerboard
    Artifacts". With an all-ones input and kernel, the transposed convolution
    *is* this map.

    Returns:
      int ``[*output_size]``.

    Examples:
      >>> coverage(4, 3, stride=2)          # 3 % 2 != 0: uneven overlap
      array([1, 1, 2, 1, 2, 1, 2, 1, 1])
      >>> coverage(4, 4, stride=2, padding=1)   # 4 % 2 == 0: even inside
      array([1, 2, 2, 2, 2, 2, 2, 1])
    """
    spec = _size_spec(
        input_size, kernel_size, stride, padding, output_padding, dilation, output_size
    )
    per_dim = [
        _coverage_1d(i, k, s, d, lo, o)
        for i, k, s, d, (lo, _), o in zip(
            spec.input_size,
            spec.kernel_size,
            spec.stride,
            spec.dilation,
            spec.crop,
            spec.output_size,
        )
    ]
    out = per_dim[0]
    for c in per_dim[1:]:
        out = np.multiply.outer(out, c)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class PhaseView:
    """Which phase, and so which sub-kernel, produces each output pixel (see :func:`phases`).

    Attributes:
      stride: per dimension; there are ``prod(stride)`` phases.
      phase_index: per dimension, the phase of each output position,
        ``(o + pad_lo) % stride``.
      phase: int ``[*output_size]``: the phase of each pixel as one number
        (row-major over ``stride``).
      taps: phase (a tuple) -> the kernel taps (tuples) that reach its pixels.
      sizes: phase -> the sub-kernel's size per dimension.
      dim_taps: per dimension, phase -> the taps along that dimension.
    """

    stride: tuple[int, ...]
    phase_index: tuple[np.ndarray, ...]
    phase: np.ndarray
    taps: dict[tuple[int, ...], tuple[tuple[int, ...], ...]]
    sizes: dict[tuple[int, ...], tuple[int, ...]]
    dim_taps: tuple[dict[int, tuple[int, ...]], ...]

    @property
    def uneven(self) -> bool:
        """Whether phases have different sub-kernel sizes: the checkerboard case."""
        return len({math.prod(s) for s in self.sizes.values()}) > 1

    def sub_kernel(self, weight: ArrayLike, phase: Sequence[int]) -> np.ndarray:
        """The taps of ``weight`` (``[C_in, C_out/g, *k]``) that produce ``phase``'s pixels.

        Examples:
          >>> pv = phases(4, 3, stride=2)
          >>> pv.sub_kernel(np.array([[[10., 20., 30.]]]), (0,))
          array([[[10., 30.]]])
        """
        w = _as_weight(weight)
        phase = tuple(int(p) for p in phase)
        if phase not in self.taps:
            raise ValueError(f"phase={phase} is not one of {sorted(self.taps)}")
        if w.ndim - 2 != len(self.stride):
            raise ValueError(
                f"weight.shape={w.shape} must have {len(self.stride)} spatial dimension(s)"
            )
        per_dim = [list(self.dim_taps[a][r]) for a, r in enumerate(phase)]
        return w[(slice(None), slice(None), *np.ix_(*per_dim))]


def phases(
    input_size: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
) -> PhaseView:
    """The phase view: a stride-``s`` transposed convolution is ``prod(s)`` interleaved convs.

    Output position ``o`` (per dimension) lies at ``o + pad_lo`` of the full
    result, which input pixel ``i`` reaches through tap ``j`` when
    ``o + pad_lo == i * stride + j * dilation``. So only the taps with
    ``j * dilation % stride == (o + pad_lo) % stride`` ever reach ``o``: each
    phase is an ordinary stride-1 convolution of the input with its own
    sub-kernel, and the phases are interleaved (Shi et al. 2016). With
    ``dilation=1`` the sub-kernels have ``ceil(k / s)`` or ``floor(k / s)`` taps;
    when those differ, neighbouring pixels sum different numbers of terms: the
    checkerboard.

    Returns:
      :class:`PhaseView`.

    Examples:
      >>> pv = phases(4, 3, stride=2)
      >>> pv.phase
      array([0, 1, 0, 1, 0, 1, 0, 1, 0])
      >>> pv.taps
      {(0,): ((0,), (2,)), (1,): ((1,),)}
      >>> pv.uneven
      True
    """
    spec = _size_spec(
        input_size, kernel_size, stride, padding, output_padding, dilation, output_size
    )
    idx = tuple(
        (np.arange(o) + lo) % s for o, (lo, _), s in zip(spec.output_size, spec.crop, spec.stride)
    )
    grids = np.meshgrid(*idx, indexing="ij")
    phase = np.ravel_multi_index(tuple(grids), spec.stride)
    per_dim_taps = [
        {r: tuple(j for j in range(k) if (j * d) % s == r) for r in range(s)}
        for k, s, d in zip(spec.kernel_size, spec.stride, spec.dilation)
    ]
    taps, sizes = {}, {}
    for ph in itertools.product(*(range(s) for s in spec.stride)):
        lists = [per_dim_taps[a][r] for a, r in enumerate(ph)]
        taps[ph] = tuple(itertools.product(*lists))
        sizes[ph] = tuple(len(lst) for lst in lists)
    return PhaseView(
        stride=spec.stride,
        phase_index=idx,
        phase=phase,
        taps=taps,
        sizes=sizes,
        dim_taps=tuple(per_dim_taps),
    )


# --------------------------------------------------------------------------- the size formula


def _n(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def size_formula(
    input_size: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    dilation: IntOrSeq = 1,
    *,
    output_size: IntOrSeq | None = None,
) -> list[str]:
    """The output-size formula with the numbers filled in.

    First PyTorch's ``out = (in - 1)*stride - pad_lo - pad_hi + dilation*(kernel
    - 1) + output_padding + 1`` evaluated per dimension, then the forward
    convolution's formula (Dumoulin & Visin's) that maps ``out`` back to ``in``.
    Dimensions with identical numbers share a line.

    Returns:
      Lines of text.

    Examples:
      >>> print("\\n".join(size_formula((3, 3), 2)))
      out = (in - 1)*stride - pad_lo - pad_hi + dilation*(kernel - 1) + output_padding + 1
        dims 0, 1: (3 - 1)*1 - 0 - 0 + 1*(2 - 1) + 0 + 1 = 4
      in = (out + pad_lo + pad_hi - output_padding - dilation*(kernel - 1) - 1) // stride + 1
        dims 0, 1: (4 + 0 + 0 - 0 - 1*(2 - 1) - 1) // 1 + 1 = 3
    """
    spec = _size_spec(
        input_size, kernel_size, stride, padding, output_padding, dilation, output_size
    )
    n = spec.ndim
    if output_size is not None:
        op = output_padding_for_size(
            output_size, spec.input_size, spec.kernel_size, spec.stride, padding, spec.dilation
        )
    else:
        op = _as_tuple("output_padding", output_padding, n)
    pads = resolve_padding(padding, spec.input_size, spec.kernel_size, spec.stride, spec.dilation)
    rows: dict[tuple, list[int]] = {}
    for a in range(n):
        key = (
            spec.input_size[a],
            spec.kernel_size[a],
            spec.stride[a],
            spec.dilation[a],
            pads[a],
            op[a],
            spec.output_size[a],
        )
        rows.setdefault(key, []).append(a)
    lines = ["out = (in - 1)*stride - pad_lo - pad_hi + dilation*(kernel - 1) + output_padding + 1"]
    back = [
        "in = (out + pad_lo + pad_hi - output_padding - dilation*(kernel - 1) - 1) // stride + 1"
    ]
    for (i, k, s, d, (lo, hi), o, out), dims in rows.items():
        label = ("dim " if len(dims) == 1 else "dims ") + ", ".join(map(str, dims))
        lines.append(
            f"  {label}: ({i} - 1)*{s} - {_n(lo)} - {_n(hi)} + {d}*({k} - 1) + {o} + 1 = {out}"
        )
        back.append(
            f"  {label}: ({out} + {_n(lo)} + {_n(hi)} - {o} - {d}*({k} - 1) - 1) // {s} + 1 "
            f"= {(out + lo + hi - o - d * (k - 1) - 1) // s + 1}"
        )
    return lines + back

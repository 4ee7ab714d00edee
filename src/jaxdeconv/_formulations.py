"""The formulations: peers that compute the same transposed convolution.

Each is a pure, jit-compatible function with one signature::

    fn(x, w, spec, *, precision=None, preferred_element_type=None) -> y

``x`` is the batched input and ``w`` the weight, both in ``spec``'s layout
(:class:`~jaxdeconv._shapes.ConvTransposeSpec`); bias is added by the caller.
They read sizes from ``spec`` and never re-derive them. Adding a formulation is
one function and one line in :data:`FORMULATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from ._phase import phase
from ._shapes import ConvTransposeSpec

__all__ = [
    "FORMULATIONS",
    "Formulation",
    "lhs_dilated",
    "vjp",
    "zero_insertion",
]

Formulation = Callable[..., jax.Array]


def _dimension_numbers(spec: ConvTransposeSpec, *, kernel: str) -> lax.ConvDimensionNumbers:
    """lax dimension numbers for spec's layout.

    ``kernel="torch"``: the weight as given, read as a forward-conv kernel from
    C_out to C_in (its O axis is C_in). ``kernel="swapped"``: the
    :func:`swap_in_out` kernel, a forward-conv kernel from C_in to C_out.
    """
    n = spec.ndim
    spatial = tuple(range(2, n + 2))
    if spec.channels_last:
        act = (0, n + 1, *range(1, n + 1))
        o, i = (n, n + 1) if kernel == "torch" else (n + 1, n)
        rhs = (o, i, *range(n))
    else:
        act = (0, 1, *spatial)
        rhs = (0, 1, *spatial)
    return lax.ConvDimensionNumbers(lhs_spec=act, rhs_spec=rhs, out_spec=act)


def _kernel_spatial_axes(spec: ConvTransposeSpec) -> tuple[int, ...]:
    n = spec.ndim
    return tuple(range(n)) if spec.channels_last else tuple(range(2, n + 2))


def swap_in_out(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """Swap the in/out channel axes of a transposed-conv weight within each group.

    ``[C_in, C_out/g, *k] -> [C_out, C_in/g, *k]`` (channels-last:
    ``[*k, C_in, C_out/g] -> [*k, C_in/g, C_out]``). A plain ``swapaxes`` is only
    right for ``groups == 1``; this is the step several peer libraries get wrong.
    """
    g = spec.groups
    cig, cog = spec.in_channels // g, spec.out_channels // g
    k = spec.kernel_size
    if spec.channels_last:
        w = w.reshape(*k, g, cig, cog)
        w = jnp.moveaxis(w, spec.ndim, spec.ndim + 1)  # [*k, cig, g, cog]
        return w.reshape(*k, cig, g * cog)
    w = w.reshape(g, cig, cog, *k).swapaxes(1, 2)  # [g, cog, cig, *k]
    return w.reshape(g * cog, cig, *k)


def flipped_kernel(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """The forward-conv kernel of the lhs-dilated form: swapped within groups, flipped."""
    return jnp.flip(swap_in_out(w, spec), axis=_kernel_spatial_axes(spec))


def vjp(x, w, spec, *, precision=None, preferred_element_type=None):
    """Transposed conv as the transpose of the strided forward convolution.

    The forward convolution maps ``[N, C_out, *output]`` to ``[N, C_in, *input]``
    with stride ``stride``, padding ``crop`` and the weight read as its kernel
    (this is why PyTorch's weight layout is ``[C_in, C_out/groups, *k]``).
    ``jax.linear_transpose`` of it, applied to ``x``, is the transposed
    convolution: the gradient-as-transpose definition.
    """
    dtype = preferred_element_type or x.dtype
    dn = _dimension_numbers(spec, kernel="torch")
    w = w.astype(dtype)

    def forward(z):
        return lax.conv_general_dilated(
            z,
            w,
            window_strides=spec.stride,
            padding=spec.crop,
            rhs_dilation=spec.dilation,
            dimension_numbers=dn,
            feature_group_count=spec.groups,
            precision=precision,
        )

    z = jax.ShapeDtypeStruct(spec.output_shape, dtype)
    (y,) = jax.linear_transpose(forward, z)(x.astype(dtype))
    return y


def lhs_dilated(x, w, spec, *, precision=None, preferred_element_type=None):
    """One ``lax.conv_general_dilated`` with ``lhs_dilation=stride``.

    The kernel is flipped and its in/out channels swapped within each group; the
    padding is ``dilation * (k - 1) - crop`` per side (negative crops), with
    ``output_padding`` on the high side. This is the form XLA:GPU hands to
    cuDNN's backward-data kernel.
    """
    return lax.conv_general_dilated(
        x,
        flipped_kernel(w, spec),
        window_strides=(1,) * spec.ndim,
        padding=spec.lhs_dilated_padding,
        lhs_dilation=spec.stride,
        rhs_dilation=spec.dilation,
        dimension_numbers=_dimension_numbers(spec, kernel="swapped"),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _spatial_index(spec: ConvTransposeSpec, per_dim: tuple[slice, ...]) -> tuple[slice, ...]:
    full = slice(None)
    if spec.channels_last:
        return (full, *per_dim, full)
    return (full, full, *per_dim)


def zero_insertion(x, w, spec, *, precision=None, preferred_element_type=None):
    """The hand method, made literal: zero-insert, pad, flip, stride-1 VALID conv.

    1. Insert ``stride - 1`` zeros between neighbouring input pixels.
    2. Pad each side with ``dilation * (k - 1) - crop`` zeros (crop where negative).
    3. Flip the kernel, swap its in/out channels within each group and insert
       ``dilation - 1`` zeros between its taps.
    4. Run a stride-1 ``VALID`` convolution.

    Memory: the zero-inserted input holds ``prod(stride)`` times as many elements
    as the input (plus the padding), and the dilated kernel ``prod(dilation)``
    times as many as the kernel; every inserted zero is also multiplied.
    """
    n = spec.ndim
    axes = range(1, n + 1) if spec.channels_last else range(2, n + 2)
    # Zeros are inserted with lax.pad's interior padding, not a strided scatter:
    # jit of the VJP of a conv fed by a full-window scatter aborts XLA:CPU
    # (jax 0.10.2, "Invalid binary instruction opcode map"), and XLA's SPMD
    # partitioner shards a pad with halos where it all-gathers a scatter. The
    # outer padding is a separate, non-negative pad followed by a crop (a
    # negative low pad next to interior padding crashes the partitioner).
    inserted = [(0, 0, 0)] * x.ndim
    for ax, s in zip(axes, spec.stride):
        inserted[ax] = (0, 0, s - 1)
    z = lax.pad(x, jnp.zeros((), x.dtype), inserted)

    pads = spec.lhs_dilated_padding
    widths = [(0, 0)] * z.ndim
    for ax, (lo, hi) in zip(axes, pads):
        widths[ax] = (max(lo, 0), max(hi, 0))
    z = jnp.pad(z, widths)
    crop = tuple(slice(max(-lo, 0), z.shape[ax] - max(-hi, 0)) for ax, (lo, hi) in zip(axes, pads))
    z = z[_spatial_index(spec, crop)]

    k = flipped_kernel(w, spec)
    taps = [(0, 0, 0)] * k.ndim
    for ax, d in zip(_kernel_spatial_axes(spec), spec.dilation):
        taps[ax] = (0, 0, d - 1)
    k = lax.pad(k, jnp.zeros((), k.dtype), taps)

    return lax.conv_general_dilated(
        z,
        k,
        window_strides=(1,) * n,
        padding="VALID",
        dimension_numbers=_dimension_numbers(spec, kernel="swapped"),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


FORMULATIONS: dict[str, Formulation] = {
    "vjp": vjp,
    "lhs_dilated": lhs_dilated,
    "zero_insertion": zero_insertion,
    "phase": phase,
}
"""Every formulation by its ``method=`` name."""


def choose(spec: ConvTransposeSpec) -> str:
    """The formulation ``method="auto"`` uses for ``spec``, decided at trace time.

    * On CPU: ``"phase"``, the zero-free decomposition with hand-written
      differentiation rules. On one CPU device it lowers to plain GEMMs
      (:mod:`jaxdeconv._gemm`, its ``strategy`` rule): GEMM + col2im forward and
      the im2col'd cotangent for both gradients, or, where all output phases form
      one convolution and ``C_in <= 128``, the phase convolutions forward and their
      transposes as GEMMs. On a 2-core x86 CPU (``jaxdeconv bench``, see the
      README's Performance section) it beats ``lax.conv_transpose`` on every layer
      of the suite, forward and forward+backward, and PyTorch's CPU kernels in
      geometric mean.
    * On GPU and TPU: ``"lhs_dilated"``, one convolution with the kernel reversed and
      ``lhs_dilation=stride``: the form XLA:GPU hands to cuDNN's backward-data kernel.

    The backend is ``jax.default_backend()``.
    """
    del spec
    return "phase" if jax.default_backend() == "cpu" else "lhs_dilated"

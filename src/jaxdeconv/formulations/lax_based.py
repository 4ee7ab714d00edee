"""The formulations that are one or two ``lax`` calls: ``vjp``, ``lhs_dilated``,
``zero_insertion``.

Each has the registry's signature (:mod:`jaxdeconv.formulations`) and reads every
size from ``spec``.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._layout import (
    dimension_numbers,
    flipped_kernel,
    kernel_spatial_axes,
    spatial_axes,
    spatial_index,
)
from .._spec import ConvTransposeSpec

__all__ = [
    "ZERO_INSERTION_ENV",
    "ZERO_INSERTION_MAX_BYTES",
    "forward_conv",
    "lhs_dilated",
    "vjp",
    "zero_insertion",
    "zero_insertion_max_bytes",
]

ZERO_INSERTION_MAX_BYTES = 1 << 30
"""Default bound (1 GiB) on what ``method="zero_insertion"`` may materialize.

The zero-inserted, padded input plus the dilated kernel, in bytes. The
environment variable ``JAXDECONV_ZERO_INSERTION_MAX_BYTES`` overrides it (an
int number of bytes, or ``none`` for no bound); it is read on every call (at
trace time under ``jit``).
"""
ZERO_INSERTION_ENV = "JAXDECONV_ZERO_INSERTION_MAX_BYTES"


def zero_insertion_max_bytes() -> int | None:
    """The bound in force: the environment variable if set, else the default.

    Returns:
      A number of bytes, or ``None`` for no bound.

    Raises:
      ValueError: if the environment variable is neither a non-negative int nor
        ``none``.
    """
    raw = os.environ.get(ZERO_INSERTION_ENV, "").strip()
    if not raw:
        return ZERO_INSERTION_MAX_BYTES
    if raw.lower() in ("none", "inf", "unlimited"):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"{ZERO_INSERTION_ENV}={raw!r} must be a non-negative number of bytes or 'none'"
        )
    return value


def _check_zero_insertion_memory(spec: ConvTransposeSpec, dtype) -> None:
    itemsize = np.dtype(dtype).itemsize
    x_elems = spec.batch * spec.in_channels * math.prod(spec.zero_inserted_size)
    per_group = spec.out_channels // spec.groups
    w_elems = spec.in_channels * per_group * math.prod(spec.effective_kernel_size)
    needed = (x_elems + w_elems) * itemsize
    bound = zero_insertion_max_bytes()
    if bound is not None and needed > bound:
        raise ValueError(
            f'method="zero_insertion" would materialize {needed} bytes ({needed / 2**20:.1f} '
            f"MiB): a zero-inserted input of spatial size {spec.zero_inserted_size} "
            f"(input {spec.input_size}, stride={spec.stride}) for {spec.batch}x"
            f"{spec.in_channels} (batch x C_in) {np.dtype(dtype).name} maps, plus the dilated "
            f"kernel, over the bound of {bound} bytes. Use method='auto' or 'lhs_dilated', "
            f"which insert no zeros, or raise the bound with the environment variable "
            f"{ZERO_INSERTION_ENV} (bytes, or 'none')"
        )


def forward_conv(
    y: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    spec: ConvTransposeSpec,
    *,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """The strided forward convolution whose transpose is ``spec``'s transposed conv.

    Maps ``[N, C_out, *output_size]`` to ``[N, C_in, *input_size]`` (in
    ``spec``'s layout) with the *same* weight, read as a forward-conv kernel
    from ``C_out`` to ``C_in``: stride ``spec.stride``, padding ``spec.crop``
    (``output_padding`` included; negative values crop), ``rhs_dilation =
    spec.dilation`` and ``feature_group_count = spec.groups``. It is what
    ``torch.nn.functional.conv{1,2,3}d(y, weight, None, stride, padding,
    dilation, groups)`` computes when ``output_padding`` is 0, and it is the
    input gradient of the transposed convolution.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxdeconv
      >>> spec = jaxdeconv.make_spec((1, 1, 3), (1, 1, 2), stride=2)
      >>> w = jnp.array([[[1.0, 2.0]]])
      >>> forward_conv(jnp.arange(6.0)[None, None], w, spec)
      Array([[[ 2.,  8., 14.]]], dtype=float32)
      >>> x = jnp.ones(spec.input_shape)
      >>> _, vjp = jax.vjp(lambda x: jaxdeconv.conv_transpose(x, w, stride=2), x)
      >>> vjp(jnp.arange(6.0)[None, None])[0]        # the same numbers
      Array([[[ 2.,  8., 14.]]], dtype=float32)
    """
    return lax.conv_general_dilated(
        y,
        jnp.asarray(weight),
        window_strides=spec.stride,
        padding=spec.crop,
        rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(
            spec.ndim, channels_last=spec.channels_last, kernel="torch"
        ),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def vjp(x, w, spec, *, precision=None, preferred_element_type=None):
    """Transposed conv as the transpose of the strided forward convolution.

    The forward convolution maps ``[N, C_out, *output]`` to ``[N, C_in, *input]``
    with stride ``stride``, padding ``crop`` and the weight read as its kernel
    (this is why PyTorch's weight layout is ``[C_in, C_out/groups, *k]``).
    ``jax.linear_transpose`` of it, applied to ``x``, is the transposed
    convolution: the gradient-as-transpose definition.
    """
    dtype = preferred_element_type or x.dtype
    w = w.astype(dtype)

    def forward(z):
        return forward_conv(z, w, spec, precision=precision)

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
        flipped_kernel(w, spec.groups, channels_last=spec.channels_last),
        window_strides=(1,) * spec.ndim,
        padding=spec.lhs_dilated_padding,
        lhs_dilation=spec.stride,
        rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(spec.ndim, channels_last=spec.channels_last),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


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
    _check_zero_insertion_memory(spec, jnp.result_type(x.dtype, w.dtype))
    n = spec.ndim
    axes = spatial_axes(spec)
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
    z = z[spatial_index(spec, crop)]

    k = flipped_kernel(w, spec.groups, channels_last=spec.channels_last)
    taps = [(0, 0, 0)] * k.ndim
    for ax, d in zip(kernel_spatial_axes(spec), spec.dilation):
        taps[ax] = (0, 0, d - 1)
    k = lax.pad(k, jnp.zeros((), k.dtype), taps)

    return lax.conv_general_dilated(
        z,
        k,
        window_strides=(1,) * n,
        padding="VALID",
        dimension_numbers=dimension_numbers(spec.ndim, channels_last=spec.channels_last),
        feature_group_count=spec.groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

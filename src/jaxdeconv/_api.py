"""The public functions: ``conv_transpose`` and its rank-checked aliases."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _formulations
from ._phase import on_several_devices
from ._shapes import (
    ConvTransposeSpec,
    IntOrSeq,
    PaddingLike,
    _check_static,
    make_spec,
    spatial_output_size,
)

__all__ = ["conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]

METHODS = ("auto", *_formulations.FORMULATIONS)

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


def _check_array(name: str, value) -> jax.Array:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an array, got {value!r}")
    try:
        arr = jnp.asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}: {e}") from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {arr.dtype}; cast it first, e.g. {name}.astype(jnp.float32)"
        )
    return arr


def add_bias(y: jax.Array, bias, spec: ConvTransposeSpec) -> jax.Array:
    """``y`` plus ``bias`` (``[C_out]`` or None) broadcast along spec's channel axis."""
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[spec.channel_axis] = spec.out_channels
    return y + jnp.asarray(bias).astype(y.dtype).reshape(shape)


def conv_transpose(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: Sequence[int] | int | None = None,
    method: str = "auto",
    channels_last: bool = False,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Transposed convolution with PyTorch's arguments, numbers and weight layout.

    Equals ``torch.nn.functional.conv_transpose{1,2,3}d`` (same positional order
    and meaning) for 1, 2 and 3 spatial dimensions, and extends to any number.

    Args:
      input: ``[N, C_in, *spatial]`` or unbatched ``[C_in, *spatial]``
        (channels-last: ``[N, *spatial, C_in]`` or ``[*spatial, C_in]``).
      weight: ``[C_in, C_out / groups, *kernel]``, PyTorch's ``ConvTranspose``
        layout (channels-last: ``[*kernel, C_in, C_out / groups]``, i.e.
        ``jnp.moveaxis(w, (0, 1), (-2, -1))`` of the PyTorch weight).
      bias: optional ``[C_out]``.
      stride: int or one per spatial dimension.
      padding: int or one per dimension (PyTorch's: crops ``p`` from each side
        of the result); per-side pairs ``((lo, hi), ...)``; or ``"SAME"``
        (``output = input * stride``; when ``dilation * (k - 1) + 1 - stride``
        is odd the extra pixel is cropped from the high end, as in TensorFlow
        and ``lax.conv_transpose``) or ``"VALID"``
        (``output = input * stride + max(dilation * (k - 1) + 1 - stride, 0)``).
      output_padding: extra size added on the high side of each dimension; must
        be smaller than stride or dilation, as in PyTorch.
      groups: blocked connections from input to output channels.
      dilation: kernel dilation, int or one per dimension.
      output_size: the wanted spatial output size (leading batch/channel sizes
        are ignored), as in ``torch.nn.ConvTranspose2d.forward(x, output_size)``;
        it sets ``output_padding`` and excludes a non-zero one.
      method: ``"auto"`` or a formulation: ``"vjp"``, ``"lhs_dilated"``,
        ``"zero_insertion"`` (see :data:`jaxdeconv.FORMULATIONS`).
      channels_last: layout of input, weight and output (see above).
      precision: passed to ``lax.conv_general_dilated``.
      preferred_element_type: accumulation and output dtype, passed to ``lax``.

    Returns:
      ``[N, C_out, *out]`` (or its unbatched / channels-last form), where per
      dimension ``out = (in - 1) * stride - pad_lo - pad_hi + dilation * (k - 1)
      + output_padding + 1``. The dtype is the promoted input/weight dtype unless
      ``preferred_element_type`` is given.

    Raises:
      ValueError, TypeError: for any argument PyTorch rejects, and for bad
        extensions, before anything reaches XLA. Also ValueError for an output
        size below 1 (where some PyTorch kernels return an empty tensor), and
        TypeError for an integer, bool or complex ``input``/``weight``/``bias``
        and for a traced value (under ``jit``) in any static argument
        (``stride`` to ``dilation``, ``output_size``, ``method``,
        ``channels_last``).
      ValueError: for ``method="zero_insertion"`` when the zero-inserted input
        plus the dilated kernel would take more than
        ``JAXDECONV_ZERO_INSERTION_MAX_BYTES`` (environment variable; default
        1 GiB, ``none`` for no bound).

    Unlike ``lax.conv_transpose`` (and Flax's ``ConvTranspose``), an integer
    ``padding`` is PyTorch's forward-conv padding, not the padding of the
    dilated input, and the kernel is flipped and channel-swapped as PyTorch's
    gradient convention requires, so PyTorch weights load unchanged.

    Examples:
      The seed's worked example:

      >>> import jax.numpy as jnp
      >>> x = jnp.array([[[[4., 4., 3.], [0., 3., 4.], [2., 3., 2.]]]])
      >>> w = jnp.array([[[[1., 2.], [0., 1.]]]])
      >>> conv_transpose(x, w)[0, 0]
      Array([[ 4., 12., 11.,  6.],
             [ 0.,  7., 14., 11.],
             [ 2.,  7., 11.,  8.],
             [ 0.,  2.,  3.,  2.]], dtype=float32)
      >>> conv_transpose(x, w, padding=1)[0, 0]
      Array([[ 7., 14.],
             [ 7., 11.]], dtype=float32)
    """
    _check_static("method", method)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    x = _check_array("input", input)
    w = _check_array("weight", weight)
    if w.ndim < 3:
        raise ValueError(
            f"weight must have shape [C_in, C_out/groups, *kernel] with at least one "
            f"spatial dimension, got weight.shape={w.shape}"
        )
    ndim = w.ndim - 2
    unbatched = x.ndim == ndim + 1
    if unbatched:
        x = x[None]
        if output_size is not None:
            output_size = spatial_output_size(output_size, ndim, batched=False)
    spec = make_spec(
        x.shape,
        w.shape,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
        channels_last=channels_last,
    )
    b = None
    if bias is not None:
        b = _check_array("bias", bias)
        if b.shape != (spec.out_channels,):
            raise ValueError(
                f"bias.shape={b.shape} must be ({spec.out_channels},), one value per output channel"
            )
    dtype = jnp.result_type(x.dtype, w.dtype)
    x, w = x.astype(dtype), w.astype(dtype)
    name = _formulations.choose(spec) if method == "auto" else method
    if name == "zero_insertion":
        _check_zero_insertion_memory(spec, dtype)
    if method == "auto" and on_several_devices(x, w):
        # Sharded over a mesh, auto takes the formulation XLA's SPMD partitioner
        # splits with halo exchanges only (tests/test_sharding.py pins it), and
        # runs a grouped layer as one ungrouped convolution per group: the
        # partitioner all-gathers any convolution with feature_group_count > 1.
        name = "lhs_dilated"
    fn = _formulations.FORMULATIONS[name]
    if method == "auto" and spec.groups > 1 and on_several_devices(x, w):
        from .sharding import per_group

        fn = functools.partial(per_group, base=name)
    y = fn(x, w, spec, precision=precision, preferred_element_type=preferred_element_type)
    y = add_bias(y, b, spec)
    return y[0] if unbatched else y


def _ranked(n: int):
    def fn(
        input: ArrayLike,
        weight: ArrayLike,
        bias: ArrayLike | None = None,
        stride: IntOrSeq = 1,
        padding: PaddingLike = 0,
        output_padding: IntOrSeq = 0,
        groups: int = 1,
        dilation: IntOrSeq = 1,
        *,
        output_size: Sequence[int] | int | None = None,
        method: str = "auto",
        channels_last: bool = False,
        precision: jax.lax.PrecisionLike = None,
        preferred_element_type: jax.typing.DTypeLike | None = None,
    ) -> jax.Array:
        w_ndim, x_ndim = np.ndim(weight), np.ndim(input)
        if w_ndim != n + 2 or x_ndim not in (n + 1, n + 2):
            raise ValueError(
                f"conv_transpose{n}d expects a weight of rank {n + 2} and an input of rank "
                f"{n + 1} (unbatched) or {n + 2} (batched), got weight.shape="
                f"{np.shape(weight)} and input.shape={np.shape(input)}"
            )
        return conv_transpose(
            input,
            weight,
            bias,
            stride,
            padding,
            output_padding,
            groups,
            dilation,
            output_size=output_size,
            method=method,
            channels_last=channels_last,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )

    fn.__name__ = fn.__qualname__ = f"conv_transpose{n}d"
    fn.__doc__ = (
        f"``torch.nn.functional.conv_transpose{n}d`` for JAX: :func:`conv_transpose` "
        f"restricted to {n} spatial dimension(s).\n\n"
        f"Raises:\n  ValueError: if ``weight`` is not of rank {n + 2} or ``input`` not of "
        f"rank {n + 1} or {n + 2}.\n"
    )
    return fn


conv_transpose1d = _ranked(1)
conv_transpose2d = _ranked(2)
conv_transpose3d = _ranked(3)

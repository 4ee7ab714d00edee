"""PyTorch's default parameter initialization for a transposed-convolution layer."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._spec import _as_int, _as_tuple

__all__ = ["init_conv_transpose"]


def channel_counts(in_channels, out_channels, groups) -> tuple[int, int, int]:
    """Validate a layer's channel counts as PyTorch does: positive, divisible by groups."""
    in_channels = _as_int("in_channels", in_channels)
    out_channels = _as_int("out_channels", out_channels)
    groups = _as_int("groups", groups)
    if in_channels < 1:
        raise ValueError(f"in_channels={in_channels} must be a positive int")
    if out_channels < 1:
        raise ValueError(f"out_channels={out_channels} must be a positive int")
    if groups < 1:
        raise ValueError(f"groups={groups} must be a positive int")
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels}")
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide out_channels={out_channels}")
    return in_channels, out_channels, groups


def _kernel_tuple(kernel_size, nd: int | None) -> tuple[int, ...]:
    if isinstance(kernel_size, (Sequence, np.ndarray)) and not isinstance(kernel_size, str):
        ks = _as_tuple("kernel_size", kernel_size, len(kernel_size))
        if nd is not None and len(ks) != nd:
            raise ValueError(
                f"kernel_size={kernel_size!r} has {len(ks)} entries but num_spatial_dims={nd}"
            )
    else:
        if nd is None:
            raise ValueError(
                f"kernel_size={kernel_size!r} is a single int: give one size per spatial "
                "dimension, e.g. kernel_size=(3, 3), or the number of spatial dimensions "
                "with num_spatial_dims=2"
            )
        nd = _as_int("num_spatial_dims", nd)
        if nd < 1:
            raise ValueError(f"num_spatial_dims={nd} must be a positive int")
        ks = _as_tuple("kernel_size", kernel_size, nd)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"kernel_size={kernel_size!r} must hold positive ints")
    return ks


def _fan_in(out_channels: int, kernel_size: Sequence[int], groups: int = 1) -> int:
    """The ``fan_in`` PyTorch uses for a ``ConvTranspose`` weight.

    PyTorch's ``_calculate_fan_in_and_fan_out`` reads ``weight.shape[1] *
    prod(kernel)``; for a ``ConvTranspose`` weight ``[C_in, C_out / groups,
    *kernel]`` that is ``C_out / groups * prod(kernel)`` (the output side,
    unlike ``Conv``).
    """
    return out_channels // groups * math.prod(kernel_size)


def init_conv_transpose(
    key: jax.Array,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    groups: int = 1,
    bias: bool = True,
    *,
    num_spatial_dims: int | None = None,
    channels_last: bool = False,
    dtype: jax.typing.DTypeLike | None = None,
    ndim: int | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Weight and bias with PyTorch's default ``ConvTranspose`` initialization.

    ``torch.nn.ConvTranspose{1,2,3}d.reset_parameters`` draws the weight with
    ``kaiming_uniform_(a=sqrt(5))`` and the bias from the same range, which
    works out to ``U(-b, b)`` for both with ``b = 1 / sqrt(fan_in)``, where
    ``fan_in = weight.shape[1] * prod(kernel) = C_out / groups * prod(kernel)``
    (PyTorch's rule applied to the ``ConvTranspose`` weight layout, so it is
    the *output* channels per group, not the input channels as for ``Conv``).
    The values are drawn with ``jax.random``, so they follow PyTorch's
    distribution, not its random stream.

    Args:
      key: a ``jax.random`` key.
      in_channels: ``C_in``.
      out_channels: ``C_out``.
      kernel_size: one size per spatial dimension (or an int with
        ``num_spatial_dims``: the rank is never guessed).
      groups: blocked connections; must divide both channel counts.
      bias: whether to return a bias (else ``None``).
      num_spatial_dims: number of spatial dimensions, needed only for an int
        ``kernel_size`` (the name the layers use too).
      channels_last: return the weight as ``[*kernel, C_in, C_out / groups]``
        instead of PyTorch's ``[C_in, C_out / groups, *kernel]``.
      dtype: a floating dtype; default ``float32`` (``float64`` with x64 on).
      ndim: deprecated alias of ``num_spatial_dims`` (warns).

    Returns:
      ``(weight, bias)`` ready for :func:`jaxdeconv.conv_transpose` with the
      same ``groups`` and ``channels_last``; ``bias`` is ``[C_out]`` or ``None``.

    Raises:
      ValueError, TypeError: naming the offending argument.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxdeconv
      >>> w, b = jaxdeconv.init_conv_transpose(jax.random.key(0), 16, 8, (4, 4), groups=2)
      >>> w.shape, b.shape
      ((16, 4, 4, 4), (8,))
      >>> bound = 1 / (4 * 4 * 4) ** 0.5      # fan_in = C_out / groups * 4 * 4
      >>> bool(jnp.abs(w).max() <= bound)
      True
      >>> x = jnp.ones((2, 16, 5, 5))
      >>> jaxdeconv.conv_transpose(x, w, b, stride=2, padding=1, groups=2).shape
      (2, 8, 10, 10)
    """
    in_channels, out_channels, groups = channel_counts(in_channels, out_channels, groups)
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be a bool, got {bias!r}")
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
    if ndim is not None:
        if num_spatial_dims is not None:
            raise TypeError("give num_spatial_dims or its deprecated alias ndim, not both")
        warnings.warn(
            "init_conv_transpose(ndim=...) is deprecated: write num_spatial_dims=..., "
            "the name the layers use",
            DeprecationWarning,
            stacklevel=2,
        )
        num_spatial_dims = ndim
    ks = _kernel_tuple(kernel_size, num_spatial_dims)
    if dtype is None:
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype={dtype!r} must be a floating dtype")
    bound = 1.0 / math.sqrt(_fan_in(out_channels, ks, groups))
    shape = (in_channels, out_channels // groups, *ks)
    if channels_last:
        shape = (*ks, in_channels, out_channels // groups)
    weight, b = _draw(key, shape, out_channels if bias else 0, jnp.dtype(dtype), bound)
    return weight, (b if bias else None)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw(key, shape, bias_size, dtype, bound):
    # One compiled program per layer configuration (split and both draws), not three.
    wkey, bkey = jax.random.split(key)
    weight = jax.random.uniform(wkey, shape, dtype, -bound, bound)
    return weight, jax.random.uniform(bkey, (bias_size,), dtype, -bound, bound)

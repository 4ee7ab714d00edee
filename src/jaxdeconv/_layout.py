"""Layout transforms, once: dimension numbers, the flipped kernel, layout moves, bias.

Every formulation, the sharding module, the study tools and the test helpers take
these from here. Activations are ``[N, C, *spatial]`` (channels-first) or
``[N, *spatial, C]`` (channels-last); weights are PyTorch's
``[C_in, C_out / groups, *kernel]`` or its channels-last form
``[*kernel, C_in, C_out / groups]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._spec import ConvTransposeSpec

__all__ = [
    "act_from_channels_last",
    "act_to_channels_last",
    "add_bias",
    "channels_last_dimension_numbers",
    "dimension_numbers",
    "flipped_kernel",
    "kernel_spatial_axes",
    "spatial_axes",
    "spatial_index",
    "swap_in_out",
    "weight_from_channels_last",
    "weight_from_torch",
    "weight_to_channels_last",
    "weight_to_torch",
]


def dimension_numbers(
    ndim: int, *, channels_last: bool, kernel: str = "swapped"
) -> lax.ConvDimensionNumbers:
    """lax dimension numbers for a layout.

    ``kernel="torch"``: the transposed-conv weight as given, read as a
    forward-conv kernel from C_out to C_in (its O axis is C_in): the kernel of the
    forward convolution whose transpose this is. ``kernel="swapped"``: the
    :func:`swap_in_out` kernel, a forward-conv kernel from C_in to C_out.
    """
    n = ndim
    if channels_last:
        act = (0, n + 1, *range(1, n + 1))
        o, i = (n, n + 1) if kernel == "torch" else (n + 1, n)
        return lax.ConvDimensionNumbers(act, (o, i, *range(n)), act)
    act = (0, 1, *range(2, n + 2))
    return lax.ConvDimensionNumbers(act, act, act)


def channels_last_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """Channels-last activations with a ``[*k, C_in/g, C_out]`` (swapped) kernel."""
    return dimension_numbers(ndim, channels_last=True, kernel="swapped")


def spatial_axes(spec: ConvTransposeSpec) -> tuple[int, ...]:
    """The spatial axes of a batched activation in spec's layout."""
    n = spec.ndim
    return tuple(range(1, n + 1)) if spec.channels_last else tuple(range(2, n + 2))


def kernel_spatial_axes(spec: ConvTransposeSpec) -> tuple[int, ...]:
    """The spatial axes of a weight in spec's layout."""
    n = spec.ndim
    return tuple(range(n)) if spec.channels_last else tuple(range(2, n + 2))


def spatial_index(spec: ConvTransposeSpec, per_dim: tuple[slice, ...]) -> tuple[slice, ...]:
    """An index of a batched activation: ``per_dim`` on its spatial axes, all else whole."""
    full = slice(None)
    return (full, *per_dim, full) if spec.channels_last else (full, full, *per_dim)


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
    return jnp.flip(swap_in_out(w, spec), axis=kernel_spatial_axes(spec))


def act_to_channels_last(a: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """A batched activation in spec's layout -> ``[N, *spatial, C]``."""
    return a if spec.channels_last else jnp.moveaxis(a, 1, -1)


def act_from_channels_last(a: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """``[N, *spatial, C]`` -> spec's layout."""
    return a if spec.channels_last else jnp.moveaxis(a, -1, 1)


def weight_to_channels_last(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """A weight in spec's layout -> ``[*k, C_in, C_out/g]``."""
    return w if spec.channels_last else jnp.moveaxis(w, (0, 1), (-2, -1))


def weight_from_channels_last(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """``[*k, C_in, C_out/g]`` -> spec's layout."""
    return w if spec.channels_last else jnp.moveaxis(w, (-2, -1), (0, 1))


def weight_to_torch(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """A weight in spec's layout -> PyTorch's ``[C_in, C_out/g, *k]``."""
    return jnp.moveaxis(w, (-2, -1), (0, 1)) if spec.channels_last else w


def weight_from_torch(w: jax.Array, spec: ConvTransposeSpec) -> jax.Array:
    """PyTorch's ``[C_in, C_out/g, *k]`` -> spec's layout."""
    return jnp.moveaxis(w, (0, 1), (-2, -1)) if spec.channels_last else w


def add_bias(y: jax.Array, bias, spec: ConvTransposeSpec) -> jax.Array:
    """``y`` plus ``bias`` (``[C_out]`` or None) broadcast along spec's channel axis."""
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[spec.channel_axis] = spec.out_channels
    return y + jnp.asarray(bias).astype(y.dtype).reshape(shape)

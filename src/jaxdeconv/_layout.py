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
import numpy as np
from jax import lax

from ._spec import ConvTransposeSpec

__all__ = [
    "act_from_channels_first",
    "act_from_channels_last",
    "act_to_channels_first",
    "act_to_channels_last",
    "add_bias",
    "channels_last_dimension_numbers",
    "dimension_numbers",
    "flip_spatial",
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


def _xp(a):
    """NumPy for NumPy arrays (float64 stays float64), else jax.numpy."""
    return np if isinstance(a, np.ndarray) else jnp


def swap_in_out(w, groups: int = 1, *, channels_last: bool = False):
    """Swap the in/out channel axes of a transposed-conv weight within each group.

    ``[C_in, C_out/g, *k] -> [C_out, C_in/g, *k]`` (channels-last:
    ``[*k, C_in, C_out/g] -> [*k, C_in/g, C_out]``). A plain ``swapaxes`` is only
    right for ``groups == 1``; this is the step several peer libraries get wrong.
    The same function is its own inverse's mirror: applied to ``[C_out, C_in/g, *k]``
    it gives back ``[C_in, C_out/g, *k]``. NumPy in, NumPy out.
    """
    xp = _xp(w)
    g = groups
    if channels_last:
        *k, c_in, cog = w.shape
        w = w.reshape(*k, g, c_in // g, cog)
        w = xp.moveaxis(w, len(k), len(k) + 1)  # [*k, cig, g, cog]
        return w.reshape(*k, c_in // g, g * cog)
    c_in, cog, *k = w.shape
    w = w.reshape(g, c_in // g, cog, *k).swapaxes(1, 2)  # [g, cog, cig, *k]
    return w.reshape(g * cog, c_in // g, *k)


def flip_spatial(w, *, channels_last: bool = False):
    """Reverse a weight's kernel axes."""
    n = w.ndim - 2
    axes = tuple(range(n)) if channels_last else tuple(range(2, n + 2))
    return _xp(w).flip(w, axis=axes)


def flipped_kernel(w, groups: int = 1, *, channels_last: bool = False):
    """The forward-conv kernel of the lhs-dilated form: swapped within groups, flipped."""
    return flip_spatial(
        swap_in_out(w, groups, channels_last=channels_last), channels_last=channels_last
    )


def act_to_channels_last(a, spec: ConvTransposeSpec):
    """A batched activation in spec's layout -> ``[N, *spatial, C]``."""
    return a if spec.channels_last else _xp(a).moveaxis(a, 1, -1)


def act_from_channels_last(a, spec: ConvTransposeSpec):
    """``[N, *spatial, C]`` -> spec's layout."""
    return a if spec.channels_last else _xp(a).moveaxis(a, -1, 1)


def act_to_channels_first(a, spec: ConvTransposeSpec):
    """A batched activation in spec's layout -> ``[N, C, *spatial]``."""
    return _xp(a).moveaxis(a, -1, 1) if spec.channels_last else a


def act_from_channels_first(a, spec: ConvTransposeSpec):
    """``[N, C, *spatial]`` -> spec's layout."""
    return _xp(a).moveaxis(a, 1, -1) if spec.channels_last else a


def weight_to_channels_last(w, spec: ConvTransposeSpec):
    """A weight in spec's layout -> ``[*k, C_in, C_out/g]``."""
    return w if spec.channels_last else _xp(w).moveaxis(w, (0, 1), (-2, -1))


def weight_from_channels_last(w, spec: ConvTransposeSpec):
    """``[*k, C_in, C_out/g]`` -> spec's layout."""
    return w if spec.channels_last else _xp(w).moveaxis(w, (-2, -1), (0, 1))


def weight_to_torch(w, spec: ConvTransposeSpec):
    """A weight in spec's layout -> PyTorch's ``[C_in, C_out/g, *k]``."""
    return _xp(w).moveaxis(w, (-2, -1), (0, 1)) if spec.channels_last else w


def weight_from_torch(w, spec: ConvTransposeSpec):
    """PyTorch's ``[C_in, C_out/g, *k]`` -> spec's layout."""
    return _xp(w).moveaxis(w, (0, 1), (-2, -1)) if spec.channels_last else w


def add_bias(y: jax.Array, bias, spec: ConvTransposeSpec) -> jax.Array:
    """``y`` plus ``bias`` (``[C_out]`` or None) broadcast along spec's channel axis."""
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[spec.channel_axis] = spec.out_channels
    return y + jnp.asarray(bias).astype(y.dtype).reshape(shape)

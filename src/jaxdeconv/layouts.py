"""Kernel layout converters between PyTorch and the JAX / Keras transposed convolutions.

Every library stores a transposed-convolution kernel differently, and the
difference is not only an axis order: some apply the kernel as given to the
zero-dilated input (a forward convolution, "no flip"), others, like PyTorch,
use the gradient convention (the kernel of the forward convolution whose
gradient this is, so it has to be flipped and its channel axes swapped):

| layer | kernel layout | flipped | groups |
|---|---|---|---|
| ``torch.nn.ConvTranspose{1,2,3}d``, jaxdeconv | ``[C_in, C_out/g, *k]`` | no | yes |
| ``lax.conv_transpose`` (``"...IO"``), Flax ``ConvTranspose`` | ``[*k, C_in, C_out]`` | yes | no |
| the same with ``transpose_kernel=True`` | ``[*k, C_out, C_in]`` | no | no |
| ``equinox.nn.ConvTranspose`` | ``[C_out, C_in/g, *k]`` | yes | yes |
| ``haiku.ConvNDTranspose`` | ``[*k, C_out, C_in]`` | yes | no |
| Keras 3 ``Conv{1,2,3}DTranspose`` | ``[*k, C_out, C_in]`` | no | no |

("flipped" means reversed along every spatial axis relative to PyTorch.)

For the layers without ``groups`` a grouped PyTorch kernel becomes the
equivalent dense, block-diagonal kernel (zeros between groups), so the peer
layer gives PyTorch's result; the reverse converters read the diagonal blocks
back (whatever lies off them is dropped, so only a block-diagonal kernel
converts exactly). Equinox has ``groups``; its own documented recipe
``jnp.flip(w).swapaxes(0, 1)`` is right only for ``groups=1``:
:func:`torch_to_equinox` regroups the channels.

The converters fix the kernel only. Padding differs too: PyTorch's and
Equinox's integer ``padding`` crops the result, while ``lax.conv_transpose``,
Flax and Haiku pad the dilated input; :func:`jaxdeconv.to_lax_padding` gives
their explicit ``((lo, hi), ...)`` padding for PyTorch's ``padding`` and
``output_padding``. A bias is ``[C_out]`` everywhere except Equinox, whose
``ConvTranspose.bias`` is ``[C_out, 1, ..., 1]``.

Examples:
  >>> import numpy as np
  >>> from jaxdeconv import layouts
  >>> w = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)  # C_in=4, C_out=6, g=2
  >>> layouts.torch_to_flax(w, groups=2).shape      # dense [*k, C_in, C_out]
  (2, 2, 4, 6)
  >>> layouts.torch_to_equinox(w, groups=2).shape   # [C_out, C_in/g, *k]
  (6, 2, 2, 2)
  >>> bool((layouts.flax_to_torch(layouts.torch_to_flax(w, groups=2), groups=2) == w).all())
  True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._layout import flip_spatial, flipped_kernel
from ._spec import _as_int, as_array

__all__ = [
    "equinox_to_torch",
    "flax_to_torch",
    "haiku_to_torch",
    "keras_to_torch",
    "lax_to_torch",
    "torch_to_equinox",
    "torch_to_flax",
    "torch_to_haiku",
    "torch_to_keras",
    "torch_to_lax",
]


def _as_array(name: str, value) -> jax.Array:
    """An array from a JAX/NumPy array or a ``torch.Tensor`` (detached, to CPU)."""
    arr = as_array(name, value, xp=jnp)
    if arr.ndim < 3:
        raise ValueError(
            f"{name} must have two channel axes and at least one spatial axis, "
            f"got {name}.shape={arr.shape}"
        )
    return arr


def _groups(groups, **channels: int) -> int:
    g = _as_int("groups", groups)
    if g < 1:
        raise ValueError(f"groups={g} must be a positive int")
    for what, n in channels.items():
        if n % g:
            raise ValueError(f"groups={g} must divide {what}={n}")
    return g


def _dense(w: jax.Array, groups: int) -> jax.Array:
    """``[C_in, C_out/g, *k]`` grouped -> ``[C_in, C_out, *k]`` block-diagonal."""
    if groups == 1:
        return w
    c_in, c_out_g, *k = w.shape
    w5 = w.reshape(groups, c_in // groups, 1, c_out_g, *k)
    on_diag = jnp.eye(groups, dtype=bool).reshape(groups, 1, groups, 1, *([1] * len(k)))
    dense = jnp.where(on_diag, w5, jnp.zeros((), w.dtype))
    return dense.reshape(c_in, groups * c_out_g, *k)


def _blocks(d: jax.Array, groups: int) -> jax.Array:
    """``[C_in, C_out, *k]`` -> its diagonal blocks ``[C_in, C_out/g, *k]``."""
    if groups == 1:
        return d
    c_in, c_out, *k = d.shape
    d5 = d.reshape(groups, c_in // groups, groups, c_out // groups, *k)
    diag = jnp.moveaxis(jnp.diagonal(d5, axis1=0, axis2=2), -1, 0)
    return diag.reshape(c_in, c_out // groups, *k)


def torch_to_lax(
    weight: ArrayLike, *, groups: int = 1, transpose_kernel: bool = False
) -> jax.Array:
    """PyTorch ``ConvTranspose`` weight -> ``lax.conv_transpose`` / Flax kernel.

    With ``transpose_kernel=False`` (the default of ``lax.conv_transpose`` and
    Flax's ``ConvTranspose``) the kernel is applied as given, so it is PyTorch's
    flipped and laid out ``[*k, C_in, C_out]`` (dimension numbers ``"...IO"``).
    With ``transpose_kernel=True`` lax flips and swaps it itself: the layout is
    then ``[*k, C_out, C_in]``, not flipped. The layer's padding must be
    :func:`jaxdeconv.to_lax_padding` of PyTorch's, as an explicit sequence of pairs.

    Args:
      weight: ``[C_in, C_out / groups, *k]``.
      groups: PyTorch's ``groups``; the result is the dense block-diagonal kernel.
      transpose_kernel: the flag given to ``lax.conv_transpose`` / Flax.

    Returns:
      ``[*k, C_in, C_out]`` (or ``[*k, C_out, C_in]`` with ``transpose_kernel``).

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> import jaxdeconv
      >>> w = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
      >>> x = np.ones((1, 5, 5, 2), np.float32)                      # NHWC
      >>> pad = jaxdeconv.to_lax_padding(1, (5, 5), (4, 4), stride=2)
      >>> y = jax.lax.conv_transpose(x, jaxdeconv.layouts.torch_to_lax(w), (2, 2), pad,
      ...                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
      >>> ref = jaxdeconv.conv_transpose(x.transpose(0, 3, 1, 2), w, stride=2, padding=1)
      >>> bool(jnp.allclose(y.transpose(0, 3, 1, 2), ref, atol=1e-5))
      True
    """
    w = _as_array("weight", weight)
    g = _groups(groups, C_in=w.shape[0])
    d = _dense(w, g)
    nd = d.ndim - 2
    spatial = tuple(range(2, nd + 2))
    if transpose_kernel:
        return jnp.transpose(d, (*spatial, 1, 0))
    return jnp.transpose(flip_spatial(d), (*spatial, 0, 1))


def lax_to_torch(
    kernel: ArrayLike, *, groups: int = 1, transpose_kernel: bool = False
) -> jax.Array:
    """``lax.conv_transpose`` / Flax kernel -> PyTorch ``ConvTranspose`` weight.

    The inverse of :func:`torch_to_lax`; with ``groups > 1`` it keeps the
    diagonal blocks of the dense kernel.

    Args:
      kernel: ``[*k, C_in, C_out]`` (``[*k, C_out, C_in]`` with ``transpose_kernel``).
      groups: the ``groups`` of the PyTorch layer to build.
      transpose_kernel: the flag the kernel was used with.

    Returns:
      ``[C_in, C_out / groups, *k]``.
    """
    k = _as_array("kernel", kernel)
    nd = k.ndim - 2
    if transpose_kernel:
        d = jnp.transpose(k, (nd + 1, nd, *range(nd)))
    else:
        d = flip_spatial(jnp.transpose(k, (nd, nd + 1, *range(nd))))
    g = _groups(groups, C_in=d.shape[0], C_out=d.shape[1])
    return _blocks(d, g)


def torch_to_flax(
    weight: ArrayLike, *, groups: int = 1, transpose_kernel: bool = False
) -> jax.Array:
    """PyTorch weight -> ``flax.nnx.ConvTranspose.kernel`` (also ``flax.linen``).

    The same as :func:`torch_to_lax`: Flax's ``ConvTranspose`` calls
    ``lax.conv_transpose`` with its ``transpose_kernel`` flag. Give the Flax
    layer ``padding=jaxdeconv.to_lax_padding(...)`` and ``kernel_dilation``
    equal to PyTorch's ``dilation``. Flax has no ``groups``: the kernel is dense.

    Examples:
      >>> import numpy as np
      >>> from jaxdeconv.layouts import torch_to_flax
      >>> torch_to_flax(np.zeros((8, 2, 3, 3)), groups=4).shape   # C_in=8, C_out=8
      (3, 3, 8, 8)
    """
    return torch_to_lax(weight, groups=groups, transpose_kernel=transpose_kernel)


def flax_to_torch(
    kernel: ArrayLike, *, groups: int = 1, transpose_kernel: bool = False
) -> jax.Array:
    """Flax ``ConvTranspose`` kernel -> PyTorch weight; see :func:`lax_to_torch`."""
    return lax_to_torch(kernel, groups=groups, transpose_kernel=transpose_kernel)


def torch_to_equinox(weight: ArrayLike, *, groups: int = 1) -> jax.Array:
    """PyTorch weight -> ``equinox.nn.ConvTranspose.weight``.

    Equinox applies ``[C_out, C_in / groups, *k]`` unflipped to the dilated
    input with ``feature_group_count=groups``, and its ``padding`` and
    ``output_padding`` mean PyTorch's (it rejects ``output_padding >= stride``,
    which PyTorch allows when ``dilation`` is larger). Its bias is
    ``bias.reshape(-1, *[1] * ndim)``. Unlike Equinox's documented
    ``jnp.flip(w).swapaxes(0, 1)``, this is right for ``groups > 1``.

    Args:
      weight: ``[C_in, C_out / groups, *k]``.
      groups: the layer's ``groups``.

    Returns:
      ``[C_out, C_in / groups, *k]``.

    Examples:
      >>> import numpy as np
      >>> from jaxdeconv.layouts import torch_to_equinox, equinox_to_torch
      >>> w = np.random.default_rng(0).normal(size=(6, 2, 3)).astype(np.float32)
      >>> torch_to_equinox(w, groups=3).shape
      (6, 2, 3)
      >>> bool((equinox_to_torch(torch_to_equinox(w, groups=3), groups=3) == w).all())
      True
    """
    w = _as_array("weight", weight)
    return flipped_kernel(w, _groups(groups, C_in=w.shape[0]))


def equinox_to_torch(weight: ArrayLike, *, groups: int = 1) -> jax.Array:
    """``equinox.nn.ConvTranspose.weight`` -> PyTorch weight (inverse of :func:`torch_to_equinox`).

    Args:
      weight: ``[C_out, C_in / groups, *k]``.
      groups: the layer's ``groups``.

    Returns:
      ``[C_in, C_out / groups, *k]``.
    """
    e = _as_array("weight", weight)
    return flipped_kernel(e, _groups(groups, C_out=e.shape[0]))


def torch_to_haiku(weight: ArrayLike, *, groups: int = 1) -> jax.Array:
    """PyTorch weight -> ``haiku.ConvNDTranspose`` parameter ``w``.

    Haiku stores ``[*k, C_out, C_in]`` and calls ``lax.conv_transpose``
    without ``transpose_kernel``, so the kernel is applied unflipped: PyTorch's
    has to be flipped (Haiku never does it). Give Haiku's layer explicit
    ``padding=jaxdeconv.to_lax_padding(...)``; it has neither dilation nor
    ``groups`` (the kernel is dense block-diagonal).

    Args:
      weight: ``[C_in, C_out / groups, *k]``.
      groups: PyTorch's ``groups``.

    Returns:
      ``[*k, C_out, C_in]``.
    """
    w = _as_array("weight", weight)
    g = _groups(groups, C_in=w.shape[0])
    d = _dense(w, g)
    spatial = tuple(range(2, d.ndim))
    return jnp.transpose(flip_spatial(d), (*spatial, 1, 0))


def haiku_to_torch(weight: ArrayLike, *, groups: int = 1) -> jax.Array:
    """``haiku.ConvNDTranspose`` ``w`` ``[*k, C_out, C_in]`` -> PyTorch weight.

    The inverse of :func:`torch_to_haiku` (keeps the diagonal blocks for ``groups > 1``).
    """
    k = _as_array("weight", weight)
    nd = k.ndim - 2
    d = flip_spatial(jnp.transpose(k, (nd + 1, nd, *range(nd))))
    g = _groups(groups, C_in=d.shape[0], C_out=d.shape[1])
    return _blocks(d, g)


def torch_to_keras(weight: ArrayLike, *, groups: int = 1) -> jax.Array:
    """PyTorch weight -> Keras 3 ``Conv{1,2,3}DTranspose.kernel``.

    Keras stores ``[*k, C_out, C_in]`` (``kernel_size + (filters, input_channels)``)
    in the gradient convention, like PyTorch (its JAX backend calls
    ``lax.conv_transpose(..., transpose_kernel=True)``), so only the axes move.
    Keras has no ``groups`` (dense block-diagonal kernel), only
    ``"same"``/``"valid"`` padding, and no dilation together with stride > 1.

    Args:
      weight: ``[C_in, C_out / groups, *k]``.
      groups: PyTorch's ``groups``.

    Returns:
      ``[*k, C_out, C_in]``.
    """
    return torch_to_lax(weight, groups=groups, transpose_kernel=True)


def keras_to_torch(kernel: ArrayLike, *, groups: int = 1) -> jax.Array:
    """Keras ``Conv{1,2,3}DTranspose.kernel`` ``[*k, C_out, C_in]`` -> PyTorch weight.

    The inverse of :func:`torch_to_keras`.
    """
    return lax_to_torch(kernel, groups=groups, transpose_kernel=True)

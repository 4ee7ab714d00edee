"""An Equinox ``ConvTranspose`` layer with PyTorch's arguments, weights and numbers.

Needs ``equinox`` (``pip install jaxdeconv[equinox]``); ``import jaxdeconv``
does not import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
from jax.typing import ArrayLike

from . import _layers
from ._spec import IntOrSeq, PaddingLike

__all__ = ["ConvTranspose"]


class ConvTranspose(eqx.Module):
    """``torch.nn.ConvTranspose{1,2,3}d`` as an Equinox module, in any number of dimensions.

    Unlike ``equinox.nn.ConvTranspose`` it takes PyTorch's argument order
    (no leading ``num_spatial_dims``), PyTorch's weight layout
    ``[C_in, C_out / groups, *kernel]`` (so PyTorch weights load unchanged, any
    ``groups``), ``output_padding`` up to ``max(stride, dilation) - 1`` as
    PyTorch allows, batched ``[N, C, *spatial]`` as well as unbatched
    ``[C, *spatial]`` input, and an ``output_size=`` call argument. The
    forward pass is :func:`jaxdeconv.conv_transpose`. ``bias`` is ``[C_out]``
    or ``None``; both start as PyTorch initializes them
    (:func:`jaxdeconv.init_conv_transpose`).

    Args:
      in_channels, out_channels: channel counts.
      kernel_size: one size per spatial dimension, or an int with
        ``num_spatial_dims``.
      stride, padding, output_padding, groups, dilation: as in PyTorch;
        ``padding`` also takes ``((lo, hi), ...)``, ``"SAME"`` or ``"VALID"``.
      bias: whether to learn a bias.
      num_spatial_dims: needed only when ``kernel_size`` is an int.
      channels_last: inputs ``[N, *spatial, C]``, weight ``[*kernel, C_in, C_out / groups]``.
      method: the formulation (``"auto"``, ``"vjp"``, ...).
      precision, preferred_element_type: passed to ``lax``.
      dtype: dtype of the parameters (default ``float32``).
      key: a ``jax.random`` key for the initial values.

    Raises:
      ValueError, TypeError: for arguments PyTorch rejects, at construction.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdeconv.equinox import ConvTranspose
      >>> layer = ConvTranspose(16, 8, (4, 4), stride=2, padding=1, key=jax.random.key(0))
      >>> layer(jnp.ones((2, 16, 5, 5))).shape           # [N, C, H, W]
      (2, 8, 10, 10)
      >>> jax.vmap(layer)(jnp.ones((2, 16, 5, 5))).shape  # unbatched per example
      (2, 8, 10, 10)
      >>> up = ConvTranspose(16, 8, (3, 3), stride=2, padding=1, key=jax.random.key(0))
      >>> up(jnp.ones((16, 4, 4)), output_size=(8, 8)).shape
      (8, 8, 8)
    """

    weight: jax.Array
    bias: jax.Array | None
    config: _layers.LayerConfig = eqx.field(static=True)
    precision: Any = eqx.field(static=True)
    preferred_element_type: Any = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: PaddingLike = 0,
        output_padding: IntOrSeq = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrSeq = 1,
        *,
        num_spatial_dims: int | None = None,
        channels_last: bool = False,
        method: str = "auto",
        precision: jax.lax.PrecisionLike = None,
        preferred_element_type: jax.typing.DTypeLike | None = None,
        dtype: jax.typing.DTypeLike | None = None,
        key: jax.Array,
    ):
        cfg = _layers.make_config(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            groups,
            dilation,
            num_spatial_dims,
            channels_last,
            method,
        )
        self.config = cfg
        self.precision = precision
        self.preferred_element_type = preferred_element_type
        self.weight, self.bias = _layers.init_params(cfg, key, bias, dtype)

    # PyTorch's attribute names, read from the static configuration.
    in_channels = property(lambda self: self.config.in_channels)
    out_channels = property(lambda self: self.config.out_channels)
    kernel_size = property(lambda self: self.config.kernel_size)
    stride = property(lambda self: self.config.stride)
    padding = property(lambda self: self.config.padding)
    output_padding = property(lambda self: self.config.output_padding)
    groups = property(lambda self: self.config.groups)
    dilation = property(lambda self: self.config.dilation)
    channels_last = property(lambda self: self.config.channels_last)

    def __call__(
        self,
        x: ArrayLike,
        output_size: Sequence[int] | int | None = None,
        *,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Apply the layer.

        Args:
          x: ``[N, C_in, *spatial]`` or unbatched ``[C_in, *spatial]``
            (channels-last: ``[N, *spatial, C_in]`` or ``[*spatial, C_in]``).
          output_size: the wanted spatial size, as in PyTorch's
            ``forward(x, output_size)``; it replaces ``output_padding``.
          key: ignored; accepted for ``equinox.nn.Sequential``.

        Returns:
          ``[N, C_out, *out]`` (or the unbatched / channels-last form).
        """
        del key
        return _layers.apply(
            self.config,
            x,
            self.weight,
            self.bias,
            output_size,
            self.precision,
            self.preferred_element_type,
        )

    @classmethod
    def from_torch(
        cls,
        module,
        *,
        channels_last: bool = False,
        method: str = "auto",
        precision: jax.lax.PrecisionLike = None,
        preferred_element_type: jax.typing.DTypeLike | None = None,
        dtype: jax.typing.DTypeLike | None = None,
    ) -> ConvTranspose:
        """The layer holding a ``torch.nn.ConvTranspose{1,2,3}d``'s arguments and weights.

        Args:
          module: a ``torch.nn.ConvTranspose1d``, ``2d`` or ``3d`` with
            ``padding_mode='zeros'`` (the only mode PyTorch runs).
          channels_last, method, precision, preferred_element_type: as in the
            constructor.
          dtype: dtype of the parameters; default: the module's.

        Raises:
          TypeError: if ``module`` is not a PyTorch transposed convolution.
          ValueError: for another ``padding_mode``.

        Examples:
          >>> import torch, numpy as np
          >>> from jaxdeconv.equinox import ConvTranspose
          >>> t = torch.nn.ConvTranspose1d(6, 4, 5, stride=3, padding=2, groups=2, dilation=2)
          >>> layer = ConvTranspose.from_torch(t)
          >>> x = torch.randn(2, 6, 7)
          >>> np.allclose(layer(x.numpy()), t(x).detach().numpy(), atol=1e-5)
          True
        """
        kwargs, weight, bias = _layers.read_torch(module, channels_last, dtype)
        # Built under eval_shape: the random initial values are never computed (or compiled).
        layer = eqx.filter_eval_shape(
            cls,
            **kwargs,
            channels_last=channels_last,
            method=method,
            precision=precision,
            preferred_element_type=preferred_element_type,
            dtype=weight.dtype,
            key=jax.random.key(0),
        )
        layer = eqx.tree_at(lambda m: m.weight, layer, weight)
        if bias is not None:
            layer = eqx.tree_at(lambda m: m.bias, layer, bias)
        return layer

"""A Flax NNX ``ConvTranspose`` layer with PyTorch's arguments, weights and numbers.

Needs ``flax`` (``pip install jaxdeconv[flax]``); ``import jaxdeconv`` does not
import this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx
from jax.typing import ArrayLike

from . import _layers
from ._spec import IntOrSeq, PaddingLike

__all__ = ["ConvTranspose"]


class ConvTranspose(nnx.Module):
    """``torch.nn.ConvTranspose{1,2,3}d`` as a Flax NNX module, in any number of dimensions.

    The constructor takes PyTorch's arguments in PyTorch's order; the forward
    pass is :func:`jaxdeconv.conv_transpose`, so ``padding`` is PyTorch's crop
    (not Flax's ``nnx.ConvTranspose`` padding of the dilated input) and
    ``groups``, ``output_padding`` and ``output_size`` work as in PyTorch.
    Parameters are ``weight`` ``[C_in, C_out / groups, *kernel]`` (PyTorch's
    layout, or ``[*kernel, C_in, C_out / groups]`` with ``channels_last``) and
    ``bias`` ``[C_out]`` (or ``None``), initialized as PyTorch does
    (:func:`jaxdeconv.init_conv_transpose`).

    Args:
      in_channels, out_channels: channel counts.
      kernel_size: one size per spatial dimension, or an int with
        ``num_spatial_dims``.
      stride, padding, output_padding, groups, dilation: as in PyTorch;
        ``padding`` also takes ``((lo, hi), ...)``, ``"SAME"`` or ``"VALID"``.
      bias: whether to learn a bias.
      num_spatial_dims: needed only when ``kernel_size`` is an int.
      channels_last: inputs ``[N, *spatial, C]`` and the channels-last weight.
      method: the formulation (``"auto"``, ``"vjp"``, ...).
      precision, preferred_element_type: passed to ``lax``.
      dtype: dtype of the parameters (default ``float32``).
      rngs: ``nnx.Rngs``; the ``params`` stream draws the initial values.

    Raises:
      ValueError, TypeError: for arguments PyTorch rejects, at construction.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxdeconv.flax import ConvTranspose
      >>> layer = ConvTranspose(16, 8, (4, 4), stride=2, padding=1, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 16, 5, 5))).shape           # [N, C, H, W]
      (2, 8, 10, 10)
      >>> layer(jnp.ones((16, 5, 5))).shape              # unbatched [C, H, W]
      (8, 10, 10)
      >>> up = ConvTranspose(16, 8, (3, 3), stride=2, padding=1, rngs=nnx.Rngs(0))
      >>> up(jnp.ones((1, 16, 4, 4)), output_size=(8, 8)).shape
      (1, 8, 8, 8)
    """

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
        rngs: nnx.Rngs,
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
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels
        self.kernel_size = cfg.kernel_size
        self.stride = cfg.stride
        self.padding = cfg.padding
        self.output_padding = cfg.output_padding
        self.groups = cfg.groups
        self.dilation = cfg.dilation
        self.channels_last = cfg.channels_last
        self.method = cfg.method
        self.precision = precision
        self.preferred_element_type = preferred_element_type
        w, b = _layers.init_params(cfg, rngs.params(), bias, dtype)
        self.weight = nnx.Param(w)
        self.bias = nnx.Param(b) if b is not None else None

    def __call__(self, x: ArrayLike, output_size: Sequence[int] | int | None = None) -> jax.Array:
        """Apply the layer.

        Args:
          x: ``[N, C_in, *spatial]`` or unbatched ``[C_in, *spatial]``
            (channels-last: ``[N, *spatial, C_in]`` or ``[*spatial, C_in]``).
          output_size: the wanted spatial size, as in PyTorch's
            ``forward(x, output_size)``; it replaces ``output_padding``.

        Returns:
          ``[N, C_out, *out]`` (or the unbatched / channels-last form).
        """
        return _layers.apply(
            self.config,
            x,
            self.weight[...],
            None if self.bias is None else self.bias[...],
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

        Copies ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``,
        ``padding``, ``output_padding``, ``groups``, ``dilation``, ``weight``
        and ``bias``, so the layer reproduces the module's outputs.

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
          >>> from jaxdeconv.flax import ConvTranspose
          >>> t = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
          >>> layer = ConvTranspose.from_torch(t)
          >>> x = torch.randn(2, 4, 5, 5)
          >>> np.allclose(layer(x.numpy()), t(x).detach().numpy(), atol=1e-5)
          True
        """
        kwargs, weight, bias = _layers.read_torch(module, channels_last, dtype)
        # Built under eval_shape: the random initial values are never computed (or compiled).
        layer = nnx.eval_shape(
            lambda: cls(
                **kwargs,
                channels_last=channels_last,
                method=method,
                precision=precision,
                preferred_element_type=preferred_element_type,
                dtype=weight.dtype,
                rngs=nnx.Rngs(0),
            )
        )
        layer.weight = nnx.Param(weight)
        layer.bias = None if bias is None else nnx.Param(bias)
        return layer

"""A Flax NNX ``ConvTranspose`` layer with PyTorch's arguments, weights and numbers.

Needs ``flax`` (``pip install 'jaxdeconv[flax]'``); ``import jaxdeconv`` does not
import this module. The Flax Linen layer is :mod:`jaxdeconv.linen`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.typing import ArrayLike

try:
    from flax import nnx
except ImportError as e:
    raise ImportError("jaxdeconv.flax needs Flax (NNX): pip install 'jaxdeconv[flax]'") from e

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

    With ``weight_norm=True`` the layer is ``torch.nn.utils.weight_norm(layer,
    dim=weight_norm_dim)``: ``weight`` is ``None`` and the trainable
    parameters are ``weight_v`` (the weight's shape) and ``weight_g``, the
    weight applied being ``weight_v * (weight_g / ||weight_v||)``
    (:meth:`compute_weight`). The norm is taken over every axis except
    ``weight_norm_dim``, an axis of the weight *in PyTorch's layout* (also with
    ``channels_last``): torch's default ``0`` is one magnitude per **input**
    channel for a transposed convolution, ``weight_g`` ``[C_in, 1, ...]``;
    ``None`` is one scalar ``weight_g`` for the whole tensor.

    Args:
      in_channels, out_channels: channel counts.
      kernel_size: one size per spatial dimension, or an int with
        ``num_spatial_dims`` (PyTorch's class fixes the rank; this layer does
        not guess it: an int alone is an error).
      stride, padding, output_padding, groups, dilation: as in PyTorch;
        ``padding`` also takes ``((lo, hi), ...)``, ``"SAME"`` or ``"VALID"``.
      bias: whether to learn a bias.
      num_spatial_dims: needed only when ``kernel_size`` is an int.
      channels_last: inputs ``[N, *spatial, C]`` and the channels-last weight.
      method: the formulation (``"auto"``, ``"vjp"``, ...).
      precision, preferred_element_type: passed to ``lax``.
      dtype: dtype of the parameters (default ``float32``).
      weight_norm: hold ``weight_g`` and ``weight_v`` instead of ``weight``.
      weight_norm_dim: torch's ``dim`` of ``weight_norm`` (an int axis of the
        PyTorch-layout weight, or ``None``); needs ``weight_norm=True``.
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
        weight_norm: bool = False,
        weight_norm_dim: int | None = 0,
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
            weight_norm,
            weight_norm_dim,
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
        self._set_params(_layers.init_params(cfg, rngs.params(), bias, dtype))

    def _set_params(self, params) -> None:
        _layers.check_shapes(self.config, params)
        for name in ("weight", "weight_g", "weight_v", "bias"):
            value = params.get(name)
            setattr(self, name, None if value is None else nnx.Param(value))

    def compute_weight(self) -> jax.Array:
        """The weight the layer applies: ``weight``, or ``weight_v * (weight_g / ||weight_v||)``."""

        def get(p):
            return None if p is None else p[...]

        return _layers.compute_weight(
            self.config, get(self.weight), get(self.weight_g), get(self.weight_v)
        )

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
            self.compute_weight(),
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
        weight_norm: str = "fold",
    ) -> ConvTranspose:
        """The layer holding a ``torch.nn.ConvTranspose{1,2,3}d``'s arguments and weights.

        Copies ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``,
        ``padding``, ``output_padding``, ``groups``, ``dilation``, ``weight``
        and ``bias``, so the layer reproduces the module's outputs.

        A weight-normed module (legacy ``torch.nn.utils.weight_norm`` or
        ``torch.nn.utils.parametrizations.weight_norm``) is read from its ``g``
        and ``v``, never from the legacy ``module.weight``, which torch leaves
        stale after ``load_state_dict`` until the next forward. With
        ``weight_norm="fold"`` (default) the layer gets the one ``weight``
        torch's forward computes; with ``"keep"`` it gets ``weight_g`` and
        ``weight_v`` and ``weight_norm=True`` with torch's ``dim``, so training
        follows torch's weight-norm gradients.

        Args:
          module: a ``torch.nn.ConvTranspose1d``, ``2d`` or ``3d`` with
            ``padding_mode='zeros'`` (the only mode PyTorch runs).
          channels_last, method, precision, preferred_element_type: as in the
            constructor.
          dtype: dtype of the parameters; default: the module's. A float64
            module with JAX's x64 mode off raises instead of silently
            becoming float32: pass ``dtype=jnp.float32`` or enable x64.
          weight_norm: ``"fold"`` or ``"keep"`` (the module must have weight norm).

        Raises:
          TypeError: if ``module`` is not a PyTorch transposed convolution.
          ValueError: for another ``padding_mode``, float64 without x64 and
            without ``dtype``, ``"keep"`` without weight norm, or a weight
            that cannot be trusted (legacy ``spectral_norm``, ``weight_g`` /
            ``weight_v`` without torch's hook).

        Examples:
          >>> import torch, numpy as np
          >>> from jaxdeconv.flax import ConvTranspose
          >>> t = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
          >>> layer = ConvTranspose.from_torch(t)
          >>> x = torch.randn(2, 4, 5, 5)
          >>> np.allclose(layer(x.numpy()), t(x).detach().numpy(), atol=1e-5)
          True
        """
        kwargs, params = _layers.read_torch(module, channels_last, dtype, weight_norm)
        dtype = next(v for v in params.values() if v is not None).dtype
        # Built under eval_shape: the random initial values are never computed (or compiled).
        layer = nnx.eval_shape(
            lambda: cls(
                **kwargs,
                channels_last=channels_last,
                method=method,
                precision=precision,
                preferred_element_type=preferred_element_type,
                dtype=dtype,
                rngs=nnx.Rngs(0),
            )
        )
        layer._set_params(params)
        return layer

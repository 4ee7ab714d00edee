"""An Equinox ``ConvTranspose`` layer with PyTorch's arguments, weights and numbers.

Needs ``equinox`` (``pip install 'jaxdeconv[equinox]'``); ``import jaxdeconv``
does not import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.typing import ArrayLike

try:
    import equinox as eqx
except ImportError as e:
    raise ImportError("jaxdeconv.equinox needs Equinox: pip install 'jaxdeconv[equinox]'") from e

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

    With ``weight_norm=True`` the layer is ``torch.nn.utils.weight_norm(layer,
    dim=weight_norm_dim)``: the field ``weight`` is ``None`` and the trainable
    fields are ``weight_v`` (the weight's shape) and ``weight_g``, the weight
    applied being ``weight_v * (weight_g / ||weight_v||)``
    (:meth:`compute_weight`), the norm over every axis except
    ``weight_norm_dim``, an axis of the weight *in PyTorch's layout*: torch's
    default ``0`` is one magnitude per **input** channel, ``weight_g``
    ``[C_in, 1, ...]``; ``None`` is one scalar for the whole tensor. (Without
    weight norm ``weight_g`` and ``weight_v`` are ``None``.)

    Args:
      in_channels, out_channels: channel counts.
      kernel_size: one size per spatial dimension, or an int with
        ``num_spatial_dims`` (PyTorch's class fixes the rank; this layer does
        not guess it: an int alone is an error).
      stride, padding, output_padding, groups, dilation: as in PyTorch;
        ``padding`` also takes ``((lo, hi), ...)``, ``"SAME"`` or ``"VALID"``.
      bias: whether to learn a bias.
      num_spatial_dims: needed only when ``kernel_size`` is an int.
      channels_last: inputs ``[N, *spatial, C]``, weight ``[*kernel, C_in, C_out / groups]``.
      method: the formulation (``"auto"``, ``"vjp"``, ...).
      precision, preferred_element_type: passed to ``lax``.
      dtype: dtype of the parameters (default ``float32``).
      weight_norm: hold ``weight_g`` and ``weight_v`` instead of ``weight``.
      weight_norm_dim: torch's ``dim`` of ``weight_norm`` (an int axis of the
        PyTorch-layout weight, or ``None``); needs ``weight_norm=True``.
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

    weight: jax.Array | None
    bias: jax.Array | None
    weight_g: jax.Array | None
    weight_v: jax.Array | None
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
        weight_norm: bool = False,
        weight_norm_dim: int | None = 0,
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
            weight_norm,
            weight_norm_dim,
        )
        self.config = cfg
        self.precision = precision
        self.preferred_element_type = preferred_element_type
        params = _layers.init_params(cfg, key, bias, dtype)
        self.weight = params.get("weight")
        self.bias = params["bias"]
        self.weight_g = params.get("weight_g")
        self.weight_v = params.get("weight_v")

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
    weight_norm = property(lambda self: self.config.weight_norm)
    weight_norm_dim = property(lambda self: self.config.weight_norm_dim)

    def compute_weight(self) -> jax.Array:
        """The weight the layer applies: ``weight``, or ``weight_v * (weight_g / ||weight_v||)``."""
        return _layers.compute_weight(self.config, self.weight, self.weight_g, self.weight_v)

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
            self.compute_weight(),
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
        weight_norm: str = "fold",
    ) -> ConvTranspose:
        """The layer holding a ``torch.nn.ConvTranspose{1,2,3}d``'s arguments and weights.

        A weight-normed module (legacy ``torch.nn.utils.weight_norm`` or
        ``torch.nn.utils.parametrizations.weight_norm``) is read from its ``g``
        and ``v``, never from the legacy ``module.weight``, which torch leaves
        stale after ``load_state_dict`` until the next forward. With
        ``weight_norm="fold"`` (default) the layer gets the one ``weight``
        torch's forward computes; with ``"keep"`` it gets ``weight_g`` and
        ``weight_v`` and ``weight_norm=True`` with torch's ``dim``.

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
          >>> from jaxdeconv.equinox import ConvTranspose
          >>> t = torch.nn.ConvTranspose1d(6, 4, 5, stride=3, padding=2, groups=2, dilation=2)
          >>> layer = ConvTranspose.from_torch(t)
          >>> x = torch.randn(2, 6, 7)
          >>> np.allclose(layer(x.numpy()), t(x).detach().numpy(), atol=1e-5)
          True
        """
        kwargs, params = _layers.read_torch(module, channels_last, dtype, weight_norm)
        dtype = next(v for v in params.values() if v is not None).dtype
        # Built under eval_shape: the random initial values are never computed (or compiled).
        layer = eqx.filter_eval_shape(
            cls,
            **kwargs,
            channels_last=channels_last,
            method=method,
            precision=precision,
            preferred_element_type=preferred_element_type,
            dtype=dtype,
            key=jax.random.key(0),
        )
        _layers.check_shapes(layer.config, params)
        names = [n for n in ("weight", "weight_g", "weight_v", "bias") if params.get(n) is not None]
        return eqx.tree_at(
            lambda m: [getattr(m, n) for n in names], layer, [params[n] for n in names]
        )

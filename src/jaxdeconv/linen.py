"""A Flax Linen ``ConvTranspose`` layer with PyTorch's arguments, weights and numbers.

The Linen twin of :class:`jaxdeconv.flax.ConvTranspose` (Flax NNX), for code
bases that still use ``flax.linen``. Needs ``flax`` (``pip install
'jaxdeconv[flax]'``); ``import jaxdeconv`` does not import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

try:
    from flax import linen as nn
except ImportError as e:
    raise ImportError("jaxdeconv.linen needs Flax (Linen): pip install 'jaxdeconv[flax]'") from e

from . import _layers
from ._spec import IntOrSeq, PaddingLike

__all__ = ["ConvTranspose"]


class ConvTranspose(nn.Module):
    """``torch.nn.ConvTranspose{1,2,3}d`` as a Flax Linen module, in any number of dimensions.

    The fields are PyTorch's constructor arguments in PyTorch's order, so
    ``ConvTranspose(16, 8, (4, 4), 2, 1)`` reads like
    ``torch.nn.ConvTranspose2d(16, 8, 4, 2, 1)``; the forward pass is
    :func:`jaxdeconv.conv_transpose` (PyTorch's ``padding`` crop, ``groups``,
    ``output_padding``, ``output_size``). The ``params`` collection holds
    ``weight`` ``[C_in, C_out / groups, *kernel]`` (or ``[*kernel, C_in,
    C_out / groups]`` with ``channels_last``) and ``bias`` ``[C_out]`` (when
    ``bias``), initialized as PyTorch does; with ``weight_norm=True`` it holds
    ``weight_g`` and ``weight_v`` instead of ``weight`` (torch's
    ``weight_norm(layer, dim=weight_norm_dim)``; see
    :class:`jaxdeconv.flax.ConvTranspose` for ``dim``). The arguments are
    checked when the module is constructed.

    Attributes:
      in_channels, out_channels: channel counts.
      kernel_size: one size per spatial dimension, or an int with
        ``num_spatial_dims`` (an int alone is an error: the rank is not guessed).
      stride, padding, output_padding, groups, dilation: as in PyTorch;
        ``padding`` also takes ``((lo, hi), ...)``, ``"SAME"`` or ``"VALID"``.
      bias: whether to learn a bias (the parameter is also named ``bias``).
      num_spatial_dims: needed only when ``kernel_size`` is an int.
      channels_last: inputs ``[N, *spatial, C]`` and the channels-last weight.
      method: the formulation (``"auto"``, ``"vjp"``, ...).
      precision, preferred_element_type: passed to ``lax``.
      dtype: dtype of the parameters (default ``float32``).
      weight_norm, weight_norm_dim: trainable weight norm with torch's ``dim``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdeconv.linen import ConvTranspose
      >>> layer = ConvTranspose(16, 8, (4, 4), stride=2, padding=1)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 16, 5, 5)))
      >>> jax.tree_util.tree_map(jnp.shape, variables["params"])
      {'bias': (8,), 'weight': (16, 8, 4, 4)}
      >>> layer.apply(variables, jnp.ones((2, 16, 5, 5))).shape
      (2, 8, 10, 10)
      >>> layer.apply(variables, jnp.ones((16, 5, 5)), output_size=(11, 11)).shape
      (8, 11, 11)
    """

    in_channels: int
    out_channels: int
    kernel_size: IntOrSeq
    stride: IntOrSeq = 1
    padding: PaddingLike = 0
    output_padding: IntOrSeq = 0
    groups: int = 1
    bias: bool = True
    dilation: IntOrSeq = 1
    num_spatial_dims: int | None = None
    channels_last: bool = False
    method: str = "auto"
    precision: Any = None
    preferred_element_type: Any = None
    dtype: Any = None
    weight_norm: bool = False
    weight_norm_dim: int | None = 0

    def __post_init__(self):
        self.config  # noqa: B018 - validate the arguments now, not at the first call
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be a bool, got {self.bias!r}")
        super().__post_init__()

    @property
    def config(self) -> _layers.LayerConfig:
        """The validated, normalized hyper-parameters."""
        return _layers.make_config(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
            self.num_spatial_dims,
            self.channels_last,
            self.method,
            self.weight_norm,
            self.weight_norm_dim,
        )

    @nn.compact
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
        cfg = self.config

        def init(name):
            return lambda key: _layers.init_params(cfg, key, True, self.dtype)[name]

        params: dict[str, Any] = {}
        if cfg.weight_norm:
            params["weight_v"] = self.param("weight_v", init("weight_v"))
            v = params["weight_v"]
            params["weight_g"] = self.param("weight_g", lambda _: _layers.weight_norm_g(cfg, v))
        else:
            params["weight"] = self.param("weight", init("weight"))
        params["bias"] = self.param("bias", init("bias")) if self.bias else None
        _layers.check_shapes(cfg, params)
        weight = _layers.compute_weight(
            cfg, params.get("weight"), params.get("weight_g"), params.get("weight_v")
        )
        return _layers.apply(
            cfg,
            x,
            weight,
            params["bias"],
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
    ) -> tuple[ConvTranspose, dict[str, Any]]:
        """The module and variables of a ``torch.nn.ConvTranspose{1,2,3}d``.

        Weight norm (both torch APIs) is read from ``g`` and ``v`` as in
        :meth:`jaxdeconv.flax.ConvTranspose.from_torch`: ``"fold"`` gives one
        ``weight``, ``"keep"`` gives ``weight_g`` and ``weight_v`` with
        ``weight_norm=True``.

        Args:
          module: a ``torch.nn.ConvTranspose1d``, ``2d`` or ``3d`` with
            ``padding_mode='zeros'``.
          channels_last, method, precision, preferred_element_type: as the fields.
          dtype: dtype of the parameters; default: the module's (float64
            with JAX's x64 mode off raises: pass ``dtype=jnp.float32``).
          weight_norm: ``"fold"`` or ``"keep"``.

        Returns:
          ``(layer, {"params": {...}})``, ready for ``layer.apply(variables, x)``.

        Raises:
          TypeError, ValueError: as :meth:`jaxdeconv.flax.ConvTranspose.from_torch`.

        Examples:
          >>> import torch, numpy as np
          >>> from jaxdeconv.linen import ConvTranspose
          >>> t = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
          >>> layer, variables = ConvTranspose.from_torch(t)
          >>> x = torch.randn(2, 4, 5, 5)
          >>> np.allclose(layer.apply(variables, x.numpy()), t(x).detach().numpy(), atol=1e-5)
          True
        """
        kwargs, params = _layers.read_torch(module, channels_last, dtype, weight_norm)
        layer = cls(
            **kwargs,
            channels_last=channels_last,
            method=method,
            precision=precision,
            preferred_element_type=preferred_element_type,
            dtype=next(v for v in params.values() if v is not None).dtype,
        )
        _layers.check_shapes(layer.config, params)
        return layer, {"params": {k: jnp.asarray(v) for k, v in params.items() if v is not None}}

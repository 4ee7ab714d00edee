"""What the Flax (NNX, Linen) and Equinox layers share: argument checks, weight norm, torch import.

Framework-free (only jax and numpy), so ``jaxdeconv.flax``, ``jaxdeconv.linen``
and ``jaxdeconv.equinox`` build on it without importing each other's framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._api import _check_method, conv_transpose
from ._init import channel_counts, init_conv_transpose
from ._spec import _as_int, _as_tuple, _is_pair_sequence, check_arguments


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """The normalized, hashable hyper-parameters of a transposed-convolution layer."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Any
    output_padding: tuple[int, ...]
    groups: int
    dilation: tuple[int, ...]
    channels_last: bool
    method: str
    weight_norm: bool = False
    weight_norm_dim: int | None = 0  # an axis of the weight in PyTorch's layout, or None

    @property
    def num_spatial_dims(self) -> int:
        return len(self.kernel_size)

    @property
    def norm_axes(self) -> tuple[int, ...]:
        """Axes of the layer's weight that weight norm's ``||v||`` sums over."""
        rank = self.num_spatial_dims + 2
        if self.weight_norm_dim is None:
            return tuple(range(rank))
        kept = self.weight_norm_dim
        if self.channels_last:  # torch axes (C_in, C_out/g, *k) -> (*k, C_in, C_out/g)
            kept = kept + self.num_spatial_dims if kept < 2 else kept - 2
        return tuple(a for a in range(rank) if a != kept)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        per_group = self.out_channels // self.groups
        if self.channels_last:
            return (*self.kernel_size, self.in_channels, per_group)
        return (self.in_channels, per_group, *self.kernel_size)


def _is_seq(v) -> bool:
    return isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, (str, bytes))


def make_config(
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
    weight_norm=False,
    weight_norm_dim=0,
) -> LayerConfig:
    """Validate the constructor arguments as PyTorch would, before any input is seen."""
    in_channels, out_channels, groups = channel_counts(in_channels, out_channels, groups)
    if num_spatial_dims is None:
        if not _is_seq(kernel_size):
            raise ValueError(
                f"kernel_size={kernel_size!r} is a single int: give one size per spatial "
                "dimension, e.g. kernel_size=(3, 3), or num_spatial_dims=2"
            )
        num_spatial_dims = len(kernel_size)
    nd = _as_int("num_spatial_dims", num_spatial_dims)
    if nd < 1:
        raise ValueError(f"num_spatial_dims={nd} must be a positive int")
    kernel = _as_tuple("kernel_size", kernel_size, nd)
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel_size={kernel_size!r} must hold positive ints")
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
    _check_method(method)
    if isinstance(padding, str):
        pad = padding
    elif _is_pair_sequence(padding):
        pad = tuple(tuple(_as_int("padding", v) for v in pair) for pair in padding)
    else:
        pad = _as_tuple("padding", padding, nd)
    cfg = LayerConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel,
        stride=_as_tuple("stride", stride, nd),
        padding=pad,
        output_padding=_as_tuple("output_padding", output_padding, nd),
        groups=groups,
        dilation=_as_tuple("dilation", dilation, nd),
        channels_last=bool(channels_last),
        method=method,
        weight_norm=bool(weight_norm),
        weight_norm_dim=_weight_norm_dim(weight_norm, weight_norm_dim, nd + 2),
    )
    check_arguments(
        cfg.weight_shape,
        cfg.stride,
        cfg.padding,
        cfg.output_padding,
        cfg.groups,
        cfg.dilation,
        channels_last=cfg.channels_last,
    )
    return cfg


def _weight_norm_dim(weight_norm, dim, rank: int) -> int | None:
    if not isinstance(weight_norm, (bool, np.bool_)):
        raise TypeError(f"weight_norm must be a bool, got {weight_norm!r}")
    if not weight_norm:
        if dim != 0:
            raise ValueError(f"weight_norm_dim={dim!r} needs weight_norm=True")
        return 0
    if dim is None:
        return None
    dim = _as_int("weight_norm_dim", dim, sequence_ok=False)
    if dim == -1:
        raise ValueError(
            "weight_norm_dim=-1 is ambiguous: PyTorch's weight_norm reads dim=-1 as the whole "
            f"tensor (like dim=None), not the last axis; write None or {rank - 1}"
        )
    if not -rank <= dim < rank:
        raise ValueError(f"weight_norm_dim={dim} is not an axis of the rank-{rank} weight")
    return dim + rank if dim < 0 else dim


def weight_norm_g(cfg: LayerConfig, v) -> jax.Array:
    """PyTorch's initial magnitude ``g = ||v||`` (per kept axis; a scalar for ``dim=None``)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=cfg.norm_axes, keepdims=True))
    return norm.reshape(()) if cfg.weight_norm_dim is None else norm


def compute_weight(cfg: LayerConfig, weight, weight_g, weight_v) -> jax.Array:
    """The weight the layer applies: ``weight``, or torch's ``v * (g / ||v||)``."""
    if not cfg.weight_norm:
        return weight
    v = jnp.asarray(weight_v)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=cfg.norm_axes, keepdims=True))
    return v * (jnp.asarray(weight_g) / norm)


def apply(
    cfg: LayerConfig,
    x,
    weight,
    bias,
    output_size,
    precision,
    preferred_element_type,
) -> jax.Array:
    """The layer's forward pass; ``output_size`` overrides ``output_padding`` as in torch."""
    x = jnp.asarray(x)
    nd = cfg.num_spatial_dims
    if x.ndim not in (nd + 1, nd + 2):
        layout = "[N, *spatial, C]" if cfg.channels_last else "[N, C, *spatial]"
        raise ValueError(
            f"input.shape={x.shape} must be batched {layout} (rank {nd + 2}) or unbatched "
            f"(rank {nd + 1}) for this {nd}-d layer"
        )
    output_padding = cfg.output_padding if output_size is None else 0
    return conv_transpose(
        x,
        weight,
        bias,
        cfg.stride,
        cfg.padding,
        output_padding,
        cfg.groups,
        cfg.dilation,
        output_size=output_size,
        method=cfg.method,
        channels_last=cfg.channels_last,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def read_torch(module, channels_last: bool, dtype, weight_norm: str = "fold"):
    """Constructor arguments and parameters of a ``torch.nn.ConvTranspose{1,2,3}d``.

    Returns ``(kwargs, params)``: ``params`` holds ``weight`` (or, with
    ``weight_norm="keep"``, ``weight_g`` and ``weight_v``) and ``bias`` (or
    ``None``), converted with :mod:`jaxdeconv.porting`'s dtype rules.
    """
    from . import porting  # lazily: imports torch

    torch = porting._torch()
    if weight_norm not in porting.WEIGHT_NORM:
        raise ValueError(f"weight_norm={weight_norm!r} is not one of {porting.WEIGHT_NORM}")
    if not isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        raise TypeError(
            f"module must be a torch.nn.ConvTranspose1d/2d/3d, got {type(module).__name__}"
        )
    if module.padding_mode != "zeros":
        raise ValueError(
            f"module.padding_mode={module.padding_mode!r} is not supported: PyTorch's "
            "ConvTranspose accepts only 'zeros' in forward, and so does jaxdeconv"
        )
    if isinstance(module.padding, str):
        raise ValueError(f"module.padding={module.padding!r}: only integer padding is supported")
    dtype = porting._check_dtype(dtype)
    found = porting._weight_norm_of(module)  # raises where module.weight can't be trusted
    conv = porting._to_jax
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if weight_norm == "keep":
        if found is None:
            raise ValueError(
                f"weight_norm='keep' but this {type(module).__name__} has no weight norm "
                "(torch.nn.utils.weight_norm or parametrizations.weight_norm)"
            )
        g, v, dim = found
        params["weight_g"] = conv(g, "weight_g", dtype)
        params["weight_v"] = conv(v, "weight_v", dtype)
        extra = dict(weight_norm=True, weight_norm_dim=dim)
    elif found is not None:  # legacy module.weight is stale until a forward: recompute
        params["weight"] = conv(porting._fold_weight_norm(*found), "weight", dtype)
    else:
        params["weight"] = conv(module.weight, "weight", dtype)
    dtype = next(iter(params.values())).dtype
    params["bias"] = None if module.bias is None else conv(module.bias, "bias", dtype)
    if channels_last:
        for name in ("weight", "weight_g", "weight_v"):
            if name in params:
                params[name] = porting._channels_last(params[name])
    kwargs = dict(
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        output_padding=tuple(module.output_padding),
        groups=module.groups,
        bias=module.bias is not None,
        dilation=tuple(module.dilation),
        **extra,
    )
    return kwargs, params


def init_params(cfg: LayerConfig, key: jax.Array, bias: Any, dtype) -> dict[str, Any]:
    """A layer's parameters with PyTorch's default init, ``bias`` checked.

    ``{"weight", "bias"}``, or with weight norm ``{"weight_g", "weight_v",
    "bias"}`` as ``torch.nn.utils.weight_norm`` sets them up (``v`` the
    initial weight, ``g = ||v||``); ``bias`` is ``None`` without one.
    """
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be a bool, got {bias!r}")
    weight, b = init_conv_transpose(
        key,
        cfg.in_channels,
        cfg.out_channels,
        cfg.kernel_size,
        cfg.groups,
        bias,
        channels_last=cfg.channels_last,
        dtype=dtype,
    )
    if cfg.weight_norm:
        return {"weight_g": weight_norm_g(cfg, weight), "weight_v": weight, "bias": b}
    return {"weight": weight, "bias": b}


def check_shapes(cfg: LayerConfig, params: dict[str, Any]) -> None:
    """Raise if a loaded parameter's shape does not fit the layer's configuration."""
    v_shape = cfg.weight_shape
    g_shape = tuple(1 if a in cfg.norm_axes else n for a, n in enumerate(v_shape))
    want = {"weight": v_shape, "weight_v": v_shape, "bias": (cfg.out_channels,)}
    want["weight_g"] = () if cfg.weight_norm_dim is None else g_shape
    for name, value in params.items():
        if value is not None and tuple(np.shape(value)) != want[name]:
            raise ValueError(
                f"{name}.shape={tuple(np.shape(value))} does not fit this layer, which "
                f"needs {want[name]}"
            )

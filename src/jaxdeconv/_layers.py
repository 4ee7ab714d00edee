"""What the Flax and Equinox ``ConvTranspose`` layers share: argument checks and torch import.

Framework-free (only jax and numpy), so both ``jaxdeconv.flax`` and
``jaxdeconv.equinox`` build on it without importing each other's framework.
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
from ._spec import _as_int, _as_tuple, _is_pair_sequence, make_spec

# A spatial size large enough that every padding gives a positive output: used
# only to let make_spec validate the layer's arguments at construction.
_PROBE_SIZE = 1 << 20


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

    @property
    def num_spatial_dims(self) -> int:
        return len(self.kernel_size)

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
    )
    probe = (1, *([_PROBE_SIZE] * nd), in_channels) if channels_last else None
    if probe is None:
        probe = (1, in_channels, *([_PROBE_SIZE] * nd))
    make_spec(
        probe,
        cfg.weight_shape,
        cfg.stride,
        cfg.padding,
        cfg.output_padding,
        cfg.groups,
        cfg.dilation,
        channels_last=cfg.channels_last,
    )
    return cfg


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


def read_torch(module, channels_last: bool, dtype):
    """Hyper-parameters, weight and bias of a ``torch.nn.ConvTranspose{1,2,3}d``."""
    import torch  # lazily: only the porting path needs it

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
    weight = module.weight.detach().cpu().numpy()
    bias = None if module.bias is None else module.bias.detach().cpu().numpy()
    if dtype is None:
        dtype = weight.dtype
    weight = jnp.asarray(weight, dtype)
    if channels_last:
        weight = jnp.moveaxis(weight, (0, 1), (-2, -1))
    if bias is not None:
        bias = jnp.asarray(bias, dtype)
    kwargs = dict(
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        output_padding=tuple(module.output_padding),
        groups=module.groups,
        bias=bias is not None,
        dilation=tuple(module.dilation),
    )
    return kwargs, weight, bias


def init_params(cfg: LayerConfig, key: jax.Array, bias: Any, dtype) -> tuple[Any, Any]:
    """A layer's ``(weight, bias or None)`` with PyTorch's default init, ``bias`` checked."""
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {bias!r}")
    return init_conv_transpose(
        key,
        cfg.in_channels,
        cfg.out_channels,
        cfg.kernel_size,
        cfg.groups,
        bias,
        channels_last=cfg.channels_last,
        dtype=dtype,
    )

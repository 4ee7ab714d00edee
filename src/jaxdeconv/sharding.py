"""Transposed convolution on a device mesh: data, spatial and model parallel.

Two ways to run :func:`jaxdeconv.conv_transpose` over several devices:

* **Let XLA partition it.** Put the arrays on a :class:`jax.sharding.Mesh` with
  :class:`~jax.sharding.NamedSharding` and call the function under
  :func:`jax.jit`. XLA's SPMD partitioner then splits the work. Sharded by batch,
  no device talks to another; sharded along a spatial axis, neighbours swap thin
  halos (``collective-permute``); with the weight sharded over output channels,
  each device computes its own channels. The planner (:func:`jaxdeconv.plan`)
  keeps this true for every formulation when the arrays sit on several devices:
  XLA's partitioner all-gathers any convolution with ``feature_group_count > 1``,
  so grouped layers run as one ungrouped convolution per group (:func:`per_group`);
  ``"phase"`` takes its convolution lowering (its GEMMs' flattened ``N * spatial``
  axis would be gathered) and runs 3-d layers as 3-d convolutions (folding taps into
  channels, as it does on one device, would be gathered); ``"auto"`` takes
  ``"lhs_dilated"``. :func:`conv_transpose` here plans that way whatever
  placement JAX lets it see. The one collective left: a grouped layer's weight
  sharded over ``C_out / groups`` gives each device a strided set of output
  channels, and re-tiling them is an all-to-all.

  Along a sharded spatial axis the *output* size must also divide by the
  number of devices; otherwise the partitioner returns it replicated, through
  an all-gather.

  Gradients: batch sharded, the program all-reduces the kernel gradient only;
  spatially sharded, the partitioner all-gathers the input and the output
  cotangent to form the kernel gradient (use :func:`conv_transpose_spatial` to
  train on spatially split inputs).

* **Partition it yourself.** :func:`conv_transpose_spatial` splits the input
  along spatial axes with :func:`jax.shard_map`, swaps the halos each shard
  needs with :func:`jax.lax.ppermute` and runs any formulation, grouped or not,
  on each shard. What crosses the wire is written in the program, not left to
  the partitioner, and the result stays evenly sharded. It is differentiable.

:func:`collectives` counts the collective operations of a compiled program, the
check the tests use.

Examples:
  >>> import jax, numpy as np
  >>> from jax.sharding import Mesh
  >>> import jaxdeconv.sharding as jds
  >>> mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
  >>> x = np.ones((1, 2, 8), np.float32)          # [N, C_in, L]
  >>> w = np.ones((2, 3, 4), np.float32)          # [C_in, C_out, k]
  >>> jds.conv_transpose_spatial(x, w, stride=2, padding=1, mesh=mesh,
  ...                            spatial_axes="x").shape
  (1, 3, 16)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec
from jax.typing import ArrayLike

from . import _api
from ._layout import add_bias
from ._spec import ConvTransposeSpec, IntOrSeq, PaddingLike
from .formulations.per_group import per_group

__all__ = [
    "COLLECTIVES",
    "HALO_SAFE",
    "collectives",
    "conv_transpose",
    "conv_transpose_spatial",
    "per_group",
]

COLLECTIVES = (
    "all-gather",
    "all-to-all",
    "all-reduce",
    "reduce-scatter",
    "collective-permute",
    "collective-broadcast",
)
"""The collective operations :func:`collectives` counts, by their HLO names."""

HALO_SAFE = ("lhs_dilated", "vjp", "zero_insertion", "phase")
"""Formulations that XLA's partitioner splits with halo exchanges only when planned for a
mesh (grouped layers included, run group by group).

Checked by ``tests/test_sharding.py`` on batch, spatial and output-channel sharding, 1-3 d.
"""

_COLLECTIVE_RE = re.compile(r"(?<![\w.%-])(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collectives(fn_or_hlo: Callable[..., object] | str, *args, **kwargs) -> dict[str, int]:
    """Count the collective operations in a compiled XLA program.

    Args:
      fn_or_hlo: the text of a compiled program
        (``jax.jit(f).lower(...).compile().as_text()``), or a function, which is
        then jitted, lowered with ``*args, **kwargs`` and compiled.
      *args, **kwargs: the arguments to lower ``fn_or_hlo`` with (arrays, or
        :class:`jax.ShapeDtypeStruct` with a ``sharding``).

    Returns:
      ``{name: count}`` for each of :data:`COLLECTIVES` that occurs (an
      asynchronous ``*-start`` / ``*-done`` pair counts once).

    Examples:
      >>> import jax.numpy as jnp
      >>> collectives(lambda x: x * 2, jnp.ones(3))
      {}
    """
    if isinstance(fn_or_hlo, str):
        text = fn_or_hlo
    elif callable(fn_or_hlo):
        text = jax.jit(fn_or_hlo).lower(*args, **kwargs).compile().as_text()
    else:
        raise TypeError(
            f"fn_or_hlo must be a function or the text of a compiled program, got {fn_or_hlo!r}"
        )
    counts: dict[str, int] = {}
    for name in _COLLECTIVE_RE.findall(text):
        counts[name] = counts.get(name, 0) + 1
    return counts


def conv_transpose(*args, **kwargs) -> jax.Array:
    """:func:`jaxdeconv.conv_transpose` planned for a mesh: halo exchanges only.

    Same arguments, numbers and layouts as :func:`jaxdeconv.conv_transpose`; use
    it under :func:`jax.jit` on arrays placed on a mesh. It plans every call as
    if its arrays sat on several devices (:func:`jaxdeconv.plan` with
    ``on_mesh=True``), whatever the placement JAX lets it see: ``"auto"`` takes
    ``"lhs_dilated"``, every formulation runs grouped layers group by group
    (:func:`per_group`), and ``"phase"`` takes its convolution lowering without
    folding 3-d layers into 2-d ones.

    Args:
      *args, **kwargs: as for :func:`jaxdeconv.conv_transpose`.

    Returns:
      ``[N, C_out, *out]`` (or the unbatched / channels-last form), as
      :func:`jaxdeconv.conv_transpose` returns it.

    Raises:
      ValueError, TypeError: for the arguments :func:`jaxdeconv.conv_transpose`
        rejects.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x, w = jnp.ones((2, 4, 6)), jnp.ones((4, 1, 3))
      >>> y = jax.jit(lambda x, w: conv_transpose(x, w, stride=2, groups=4))(x, w)
      >>> y.shape
      (2, 4, 13)
    """
    return _api.conv_transpose_on(*args, on_mesh=True, **kwargs)


conv_transpose.__signature__ = inspect.signature(_api.conv_transpose)


def _spatial_axes(spatial_axes, ndim: int) -> tuple[str | None, ...]:
    if isinstance(spatial_axes, str):
        return (spatial_axes,) + (None,) * (ndim - 1)
    if not isinstance(spatial_axes, Sequence) or len(spatial_axes) != ndim:
        raise ValueError(
            f"spatial_axes={spatial_axes!r} must be a mesh axis name (for the first spatial "
            f"dimension) or a sequence of {ndim} names or None, one per spatial dimension"
        )
    for a in spatial_axes:
        if a is not None and not isinstance(a, str):
            raise TypeError(f"spatial_axes={spatial_axes!r} must hold mesh axis names or None")
    return tuple(spatial_axes)


def _halos(spec: ConvTransposeSpec, dim: int) -> tuple[int, int]:
    """Input pixels a shard needs from its left and right neighbours along ``dim``.

    The shard holding inputs ``[r L, (r + 1) L)`` produces the full-result
    positions ``[crop_lo + r L s, crop_lo + (r + 1) L s)``; input ``i`` reaches
    ``i s .. i s + k_eff - 1``.
    """
    s, ke, (lo, _) = spec.stride[dim], spec.effective_kernel_size[dim], spec.crop[dim]
    return max(0, (ke - 1 - lo) // s), max(0, -(-lo // s))


def _halo_exchange(x: jax.Array, axis: int, name: str, size: int, left: int, right: int):
    """Extend the local block with ``left`` / ``right`` pixels of its neighbours (0 at the ends)."""
    parts = []
    if left:
        edge = lax.slice_in_dim(x, x.shape[axis] - left, x.shape[axis], axis=axis)
        parts.append(lax.ppermute(edge, name, [(i, i + 1) for i in range(size - 1)]))
    parts.append(x)
    if right:
        edge = lax.slice_in_dim(x, 0, right, axis=axis)
        parts.append(lax.ppermute(edge, name, [(i + 1, i) for i in range(size - 1)]))
    return jnp.concatenate(parts, axis=axis) if len(parts) > 1 else x


def conv_transpose_spatial(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    mesh: Mesh,
    spatial_axes: str | Sequence[str | None],
    batch_axis: str | None = None,
    output_size: Sequence[int] | int | None = None,
    method: str = "auto",
    channels_last: bool = False,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Transposed convolution split over a mesh along spatial axes, halos swapped explicitly.

    For inputs too large for one device. The input is split into equal blocks
    along each spatial dimension named in ``spatial_axes`` (and along the batch
    over ``batch_axis``) with :func:`jax.shard_map`. Before computing, each
    block receives from its neighbours, with :func:`jax.lax.ppermute`, the input
    pixels its part of the output depends on: ``floor((k_eff - 1 - pad_lo) /
    stride)`` from the left and ``ceil(pad_lo / stride)`` from the right, where
    ``k_eff = dilation * (kernel - 1) + 1``. Blocks at the ends receive zeros.
    Each block then runs formulation ``method`` on its own (grouped
    convolutions included: no partitioner is involved) and produces
    ``stride * block`` output pixels, so the output comes back evenly sharded
    the same way. Nothing but the halos crosses devices, the weight is
    replicated, and the whole is differentiable (the transpose of a
    ``ppermute`` is the reverse ``ppermute``).

    Along a sharded dimension the output must be ``stride`` times the input, as
    with ``padding="SAME"``, ``kernel=4, stride=2, padding=1`` or ``kernel=3,
    stride=2, padding=1, output_padding=1``; other dimensions are unrestricted.

    Args:
      input, weight, bias, stride, padding, output_padding, groups, dilation:
        as in :func:`jaxdeconv.conv_transpose`.
      mesh: the :class:`jax.sharding.Mesh` to split over.
      spatial_axes: a mesh axis name per spatial dimension, or ``None`` to
        leave one whole, like a :class:`~jax.sharding.PartitionSpec` of the
        spatial dimensions; a single name splits the first spatial dimension.
      batch_axis: a mesh axis name to split the batch over as well, or ``None``.
      output_size, method, channels_last, precision, preferred_element_type:
        as in :func:`jaxdeconv.conv_transpose`; ``method`` is the formulation
        each block runs.

    Returns:
      The same array as :func:`jaxdeconv.conv_transpose`, sharded over
      ``mesh`` with ``PartitionSpec(batch_axis, None, *spatial_axes)``
      (channels-last: ``PartitionSpec(batch_axis, *spatial_axes, None)``).

    Raises:
      ValueError: if a sharded spatial size (or the batch) does not divide by
        its mesh axis, if a halo is larger than a block, if the output of a
        sharded dimension is not ``stride`` times its input, or for any
        argument :func:`jaxdeconv.conv_transpose` rejects.
      TypeError: for arguments of the wrong type.

    Examples:
      >>> import jax, numpy as np
      >>> from jax.sharding import Mesh
      >>> import jaxdeconv
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
      >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 8)
      >>> w = np.ones((2, 2, 3), np.float32)
      >>> y = conv_transpose_spatial(x, w, stride=2, padding=1, output_padding=1,
      ...                            mesh=mesh, spatial_axes="x")
      >>> bool(np.allclose(y, jaxdeconv.conv_transpose(x, w, stride=2, padding=1,
      ...                                             output_padding=1)))
      True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {mesh!r}")
    method = _api._check_method(method)
    x, w, b, spec, unbatched, precision, preferred_element_type = _api._prepare(
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
        channels_last=channels_last,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    x, w, dtype = _api.batched_operands(x, w, unbatched)
    names = _spatial_axes(spatial_axes, spec.ndim)
    for name in (*names, batch_axis):
        if name is not None and name not in mesh.shape:
            raise ValueError(
                f"{name!r} (in spatial_axes={spatial_axes!r}, batch_axis={batch_axis!r}) is "
                f"not an axis of the mesh, whose axes are {tuple(mesh.shape)}"
            )
    if batch_axis is not None and spec.batch % mesh.shape[batch_axis]:
        raise ValueError(
            f"the batch size {spec.batch} does not divide by the {mesh.shape[batch_axis]} "
            f"devices of batch_axis={batch_axis!r}"
        )
    local_in, local_out, crop = list(spec.input_size), list(spec.output_size), list(spec.crop)
    halos = []  # (dim, mesh axis, devices, left halo, right halo)
    for d, name in enumerate(names):
        if name is None:
            continue
        size, n_in, s = mesh.shape[name], spec.input_size[d], spec.stride[d]
        if n_in % size:
            raise ValueError(
                f"spatial size {n_in} of dimension {d} (input.shape={tuple(np.shape(input))}) "
                f"does not divide by the {size} devices of mesh axis {name!r}"
            )
        if spec.output_size[d] != n_in * s:
            raise ValueError(
                f"dimension {d} is sharded, so its output must be stride * input = {n_in * s}, "
                f"got {spec.output_size[d]} (padding={padding!r}, output_padding="
                f"{output_padding!r}, stride={stride!r}); padding='SAME' always gives it"
            )
        block = n_in // size
        left, right = _halos(spec, d)
        if max(left, right) > block:
            raise ValueError(
                f"dimension {d} needs a halo of {max(left, right)} input pixels from each "
                f"neighbour but a block holds only {block} ({n_in} pixels over the {size} "
                f"devices of mesh axis {name!r}); use fewer devices or larger inputs"
            )
        halos.append((d, name, size, left, right))
        local_in[d] = block + left + right
        local_out[d] = block * s
        lo = spec.crop[d][0] + left * s
        crop[d] = (
            lo,
            (block + left + right - 1) * s + spec.effective_kernel_size[d] - lo - block * s,
        )
    local = dataclasses.replace(
        spec,
        batch=spec.batch // (mesh.shape[batch_axis] if batch_axis else 1),
        input_size=tuple(local_in),
        output_size=tuple(local_out),
        crop=tuple(crop),
    )
    # Each block is one device's own computation (no partitioner involved), so it
    # is planned as such.
    chosen = _api._plan_for(method, local, dtype, on_mesh=False)
    spatial_offset = 1 if channels_last else 2

    def block_fn(xb, wb):
        for d, name, size, left, right in halos:
            xb = _halo_exchange(xb, spatial_offset + d, name, size, left, right)
        return _api.run(
            chosen,
            xb,
            wb,
            local,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )

    act = (batch_axis, *names, None) if channels_last else (batch_axis, None, *names)
    # check_vma=False: the "vjp" formulation builds its transpose from a plain
    # ShapeDtypeStruct, which jax.linear_transpose rejects against the
    # device-varying blocks of a checked shard_map. Every output is sharded and
    # the replicated weight's gradient is summed over devices either way (the
    # tests compare gradients with the unsharded ones).
    y = jax.shard_map(
        block_fn,
        check_vma=False,
        mesh=mesh,
        in_specs=(PartitionSpec(*act), PartitionSpec()),
        out_specs=PartitionSpec(*act),
    )(x, w)
    y = add_bias(y, b, spec)
    return y[0] if unbatched else y

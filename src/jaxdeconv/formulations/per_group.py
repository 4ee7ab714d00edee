"""A grouped transposed convolution as ``groups`` ungrouped ones, each any formulation.

XLA's SPMD partitioner all-gathers every convolution with ``feature_group_count > 1``;
run group by group, a grouped layer partitions with halo exchanges only. The planner
(:mod:`jaxdeconv._plan`) uses this on a mesh; :mod:`jaxdeconv.sharding` exposes it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .._spec import ConvTransposeSpec
from ._registry import get

__all__ = ["per_group"]

_UNROLL_GROUPS = 8  # more groups run under lax.map: one convolution in the program


def _group_axes(spec: ConvTransposeSpec) -> tuple[int, int]:
    """Channel axis of the activation and the C_in axis of the weight."""
    if spec.channels_last:
        return spec.ndim + 1, spec.ndim
    return 1, 0


def per_group(
    x: jax.Array,
    w: jax.Array,
    spec: ConvTransposeSpec,
    *,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
    base: str = "lhs_dilated",
) -> jax.Array:
    """A grouped transposed convolution as ``groups`` ungrouped ones.

    Has the signature of the registered formulations (batched ``x`` and ``w``
    in ``spec``'s layout, bias excluded). Each group runs formulation ``base`` with
    ``groups == 1`` on its slice of the channels, so the program holds no convolution with
    ``feature_group_count > 1``: XLA's SPMD partitioner then splits it by batch
    or space with halo exchanges only, where one grouped convolution would be
    all-gathered. Up to 8 groups are unrolled (and a weight sharded over its
    ``C_out / groups`` axis then stays sharded); more run one after another
    under :func:`jax.lax.map`, which keeps the program small. The price on one
    device is a loop over groups instead of one grouped kernel.

    Args:
      x: ``[N, C_in, *spatial]`` (channels-last ``[N, *spatial, C_in]``).
      w: ``[C_in, C_out / groups, *kernel]`` (channels-last
        ``[*kernel, C_in, C_out / groups]``).
      spec: the operation, from :func:`jaxdeconv.make_spec`.
      precision, preferred_element_type: passed to the base formulation.
      base: the formulation each group runs, a key of
        :data:`jaxdeconv.FORMULATIONS`.

    Returns:
      The transposed convolution in ``spec``'s layout, equal to any registered
      formulation's.

    Raises:
      ValueError: if ``base`` is not a registered formulation.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxdeconv
      >>> x, w = jnp.ones((1, 4, 5)), jnp.ones((4, 3, 3))
      >>> spec = jaxdeconv.make_spec(x.shape, w.shape, stride=2, groups=2)
      >>> y = jaxdeconv.conv_transpose(x, w, stride=2, groups=2)
      >>> bool(jnp.allclose(per_group(x, w, spec), y))
      True
    """
    formulation = get(base, argument="base")

    def fn(a, b, sub):
        return formulation(
            a, b, sub, precision=precision, preferred_element_type=preferred_element_type
        )

    g = spec.groups
    if g == 1:
        return fn(x, w, spec)
    cig, cog = spec.in_channels // g, spec.out_channels // g
    sub = dataclasses.replace(spec, in_channels=cig, out_channels=cog, groups=1)
    x_axis, w_axis = _group_axes(spec)
    if g <= _UNROLL_GROUPS:
        # Unrolled, the partitioner keeps output channels sharded when the weight is.
        xs = jnp.split(x, g, axis=x_axis)
        ws = jnp.split(w, g, axis=w_axis)
        return jnp.concatenate([fn(a, b, sub) for a, b in zip(xs, ws)], axis=x_axis)
    # [..., C_in, ...] -> [g, ..., C_in/g, ...]: the group index leads.
    xg = jnp.moveaxis(x.reshape(*x.shape[:x_axis], g, cig, *x.shape[x_axis + 1 :]), x_axis, 0)
    wg = jnp.moveaxis(w.reshape(*w.shape[:w_axis], g, cig, *w.shape[w_axis + 1 :]), w_axis, 0)
    y = lax.map(lambda xw: fn(xw[0], xw[1], sub), (xg, wg))  # [g, ..., C_out/g, ...]
    y = jnp.moveaxis(y, 0, x_axis)
    return y.reshape(*y.shape[:x_axis], g * cog, *y.shape[x_axis + 2 :])

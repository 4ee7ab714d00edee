"""A grouped transposed convolution as ``groups`` ungrouped ones, each any formulation.

XLA's SPMD partitioner all-gathers every convolution with ``feature_group_count > 1``;
run group by group, a grouped layer partitions with halo exchanges only. The planner
(:mod:`jaxdeconv._plan`) uses this on a mesh; :mod:`jaxdeconv.sharding` exposes it.
"""

from __future__ import annotations

import jax

from .._spec import ConvTransposeSpec
from .._split import by_group
from ._registry import get

__all__ = ["per_group"]


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

    # Unrolled (up to UNROLL_GROUPS), the partitioner keeps output channels sharded
    # when the weight is.
    return by_group(fn, spec, [(x, "act"), (w, "weight")], "act")

"""Running a layer's computation in pieces: group by group, or batch chunk by chunk.

A grouped transposed convolution (or either of its gradients) is ``groups``
independent ungrouped ones, each on its slice of the channels. :func:`by_group` runs
any such computation that way; :func:`jaxdeconv.formulations.per_group` (on a mesh)
and the phase primitives' CPU GEMM and sub-pixel kernels (where XLA:CPU's grouped
products and convolutions run far under its ungrouped ones) use it.

Every image of the batch is independent too (the weight gradient is a sum over them):
:func:`by_batch` runs a computation on chunks of the batch one after another, so that
the GEMM kernels' buffers stay bounded on layers too large to run whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ._spec import ConvTransposeSpec

__all__ = ["UNROLL_GROUPS", "by_batch", "by_group", "ungrouped"]

# Up to this many groups are unrolled (one program part per group); more run one after
# another under lax.map, which keeps the program's size independent of the groups.
UNROLL_GROUPS = 8


def ungrouped(spec: ConvTransposeSpec) -> ConvTransposeSpec:
    """The spec of one group: ``C_in / groups -> C_out / groups``, ``groups == 1``."""
    g = spec.groups
    return dataclasses.replace(
        spec, in_channels=spec.in_channels // g, out_channels=spec.out_channels // g, groups=1
    )


def _axis(spec: ConvTransposeSpec, kind: str) -> int:
    """The axis that holds the groups: an activation's channels, the weight's ``C_in``."""
    if kind == "act":
        return spec.ndim + 1 if spec.channels_last else 1
    if kind == "weight":
        return spec.ndim if spec.channels_last else 0
    raise ValueError(f"kind={kind!r} is not 'act' or 'weight'")


def by_group(
    fn: Callable[..., jax.Array],
    spec: ConvTransposeSpec,
    operands: Sequence[tuple[jax.Array, str]],
    out: str,
) -> jax.Array:
    """``fn(*operands_of_one_group, sub_spec)`` for every group, put back together.

    Args:
      fn: computes one group: its operands' slices, then the ungrouped spec.
      spec: the grouped operation; each operand and the result are in its layout.
      operands: ``(array, kind)`` pairs, ``kind`` ``"act"`` (split on the channel
        axis: an input, output or cotangent) or ``"weight"`` (split on ``C_in``).
      out: the result's kind.
    """
    g = spec.groups
    sub = ungrouped(spec)
    if g == 1:
        return fn(*(a for a, _ in operands), sub)
    out_axis = _axis(spec, out)
    if g <= UNROLL_GROUPS:
        parts = [jnp.split(a, g, axis=_axis(spec, kind)) for a, kind in operands]
        return jnp.concatenate([fn(*p, sub) for p in zip(*parts)], axis=out_axis)
    stacked = []
    for a, kind in operands:  # [.., C, ..] -> [g, .., C/g, ..]: the group index leads
        ax = _axis(spec, kind)
        a = a.reshape(*a.shape[:ax], g, a.shape[ax] // g, *a.shape[ax + 1 :])
        stacked.append(jnp.moveaxis(a, ax, 0))
    y = lax.map(lambda ps: fn(*ps, sub), tuple(stacked))  # [g, .., C/g, ..]
    y = jnp.moveaxis(y, 0, out_axis)
    return y.reshape(*y.shape[:out_axis], -1, *y.shape[out_axis + 2 :])


def by_batch(
    fn: Callable[..., jax.Array],
    spec: ConvTransposeSpec,
    chunks: int,
    operands: Sequence[tuple[jax.Array, str]],
    out: str,
) -> jax.Array:
    """``fn(*operands_of_one_chunk, chunk_spec)`` on ``chunks`` equal chunks of the batch,
    one after another (under :func:`jax.lax.map`, so only one chunk's buffers are live).

    Args:
      fn: computes one chunk: its operands, then the spec with ``batch // chunks``.
      spec: the whole operation; ``chunks`` must divide ``spec.batch``.
      chunks: how many chunks.
      operands: ``(array, kind)`` pairs, ``kind`` ``"act"`` (split on the batch axis)
        or ``"weight"`` (the same for every chunk).
      out: ``"act"`` (the chunks' results concatenated) or ``"weight"`` (summed: a
        weight gradient).
    """
    if chunks == 1:
        return fn(*(a for a, _ in operands), spec)
    if spec.batch % chunks:
        raise ValueError(f"chunks={chunks} does not divide the batch, {spec.batch}")
    sub = dataclasses.replace(spec, batch=spec.batch // chunks)
    split = [
        (a.reshape(chunks, -1, *a.shape[1:]), i) for i, (a, k) in enumerate(operands) if k == "act"
    ]
    whole = {i: a for i, (a, k) in enumerate(operands) if k == "weight"}

    def one(acts):
        args = dict(whole)
        args.update({i: a for a, (_, i) in zip(acts, split)})
        return fn(*(args[i] for i in range(len(operands))), sub)

    y = lax.map(one, tuple(a for a, _ in split))
    if out == "weight":  # the chunks' partial sums, added in at least float32
        return y.sum(0, dtype=jnp.promote_types(y.dtype, jnp.float32)).astype(y.dtype)
    return y.reshape(-1, *y.shape[2:])

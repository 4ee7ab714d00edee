"""The formulations: peers that compute the same transposed convolution.

Each is a pure, jit-compatible function with one signature::

    fn(x, w, spec, *, precision=None, preferred_element_type=None) -> y

``x`` is the batched input and ``w`` the weight, both in ``spec``'s layout
(:class:`jaxdeconv.ConvTransposeSpec`); bias is added by the caller. They read
sizes from ``spec`` and never re-derive them. :data:`FORMULATIONS` is the live
registry: :func:`register` adds one, and ``conv_transpose(method=...)``, the
cross-checks and the tools read it at call time.

* :mod:`.lax_based`: ``vjp``, ``lhs_dilated``, ``zero_insertion``;
* :mod:`.phase`: the zero-free phase decomposition, its primitives and their
  convolution and CPU GEMM lowerings;
* :mod:`.per_group`: any formulation run group by group (for meshes).
"""

from __future__ import annotations

from ._registry import FORMULATIONS, Formulation, get, register
from .lax_based import lhs_dilated, vjp, zero_insertion
from .per_group import per_group
from .phase import phase

__all__ = ["FORMULATIONS", "Formulation", "get", "per_group", "register"]

for _name, _fn in (
    ("vjp", vjp),
    ("lhs_dilated", lhs_dilated),
    ("zero_insertion", zero_insertion),
    ("phase", phase),
):
    register(_name, _fn)
del _name, _fn

"""The registry of formulations (a leaf module: everything may import it)."""

from __future__ import annotations

from collections.abc import Callable

import jax

__all__ = ["FORMULATIONS", "Formulation", "get", "register"]

Formulation = Callable[..., jax.Array]

FORMULATIONS: dict[str, Formulation] = {}
"""Every formulation by its ``method=`` name (the live registry)."""


def register(name: str, fn: Formulation, *, replace: bool = False) -> Formulation:
    """Add a formulation under ``name``; ``conv_transpose(method=name)`` then runs it.

    Args:
      name: the ``method=`` name; not ``"auto"``.
      fn: ``fn(x, w, spec, *, precision=None, preferred_element_type=None) -> y``.
      replace: allow replacing a registered formulation.

    Returns:
      ``fn``, so that ``register`` also works as a decorator's body.

    Raises:
      ValueError: for a taken or invalid name. TypeError: if ``fn`` is not callable.

    Examples:
      >>> import jaxdeconv
      >>> from jaxdeconv.formulations import FORMULATIONS, register
      >>> _ = register("mine", FORMULATIONS["lhs_dilated"])
      >>> jaxdeconv.conv_transpose(jax.numpy.ones((1, 1, 2)), jax.numpy.ones((1, 1, 2)),
      ...                          method="mine")
      Array([[[1., 2., 1.]]], dtype=float32)
      >>> del FORMULATIONS["mine"]
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"name={name!r} must be a non-empty string other than 'auto'")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if name in FORMULATIONS and not replace:
        raise ValueError(f"name={name!r} is already registered; pass replace=True")
    FORMULATIONS[name] = fn
    return fn


def get(name: str, *, argument: str = "method") -> Formulation:
    """The registered formulation ``name``; a ``ValueError`` naming the live choices."""
    fn = FORMULATIONS.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ValueError(f"{argument}={name!r} is not one of {tuple(FORMULATIONS)}")
    return fn

"""Cross-check helpers for people who add a formulation or port a model.

Built on chex. Three kinds of check:

* :func:`check_formulations_agree`: every formulation (by default all of
  :data:`jaxdeconv.FORMULATIONS`) gives the same values, reverse-mode gradients
  (VJP) and forward-mode derivatives (JVP) on one configuration, against a
  float64 NumPy definition that shares no code with them.
* :func:`check_transpose_pair`: two linear functions claimed to be each other's
  transpose really are: the adjoint identity ``<f(x), y> == <x, f_t(y)>``,
  ``jax.vjp`` and ``jax.linear_transpose`` of each equal the other, and on small
  shapes the dense Jacobians are transposes of each other.
* :func:`assert_close`: ``chex.assert_trees_all_close`` with a tolerance chosen
  by dtype (:data:`TOLERANCES`).

References sharing no code with the formulations: :func:`numpy_reference` and
:func:`numpy_conv_transpose_vjp` (float64 NumPy), :func:`torch_reference`
(PyTorch and its autograd, imported lazily), and :func:`forward_conv`.

The fact these helpers make executable: a transposed convolution is the
transpose (the VJP) of a strided forward convolution, :func:`forward_conv`, and
its own input gradient is that forward convolution again.

Tolerances, per dtype (``rtol``, ``atol``); an element passes when
``|actual - desired| <= atol * scale + rtol * |desired|`` with
``scale = max(1, max|desired|)``. They are meant for results of O(1) inputs
(standard-normal) and reductions of up to a few hundred terms, compared with a
float64 reference computed from the *same* (already rounded) inputs:

=========  ========  ========  ==============================================
dtype      rtol      atol      why
=========  ========  ========  ==============================================
float64    1e-10     1e-10     accumulation error only
float32    1e-5      1e-5      about 80 ulp: reordered sums
bfloat16   2e-2      2e-2      output rounding (2**-9) plus accumulation
float16    4e-3      4e-3      output rounding (2**-11) plus accumulation
=========  ========  ========  ==============================================

Examples:
  >>> import numpy as np, jaxdeconv
  >>> from jaxdeconv import testing
  >>> testing.tolerance("bfloat16")
  {'rtol': 0.02, 'atol': 0.02}
  >>> spec = jaxdeconv.make_spec((1, 2, 3), (2, 3, 4), stride=2, padding=1)
  >>> x, w, _ = testing.random_arrays(spec)
  >>> results = testing.check_formulations_agree(x, w, spec)
  >>> sorted(results) == sorted(jaxdeconv.FORMULATIONS)
  True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ._layout import (
    act_from_channels_first,
    act_to_channels_first,
    weight_from_torch,
    weight_to_torch,
)
from ._reference import numpy_conv_transpose
from ._spec import ConvTransposeSpec
from .formulations import FORMULATIONS
from .formulations.lax_based import forward_conv

__all__ = [
    "TOLERANCES",
    "assert_close",
    "check_formulations_agree",
    "check_transpose_pair",
    "forward_conv",
    "numpy_conv_transpose_vjp",
    "numpy_reference",
    "random_arrays",
    "tolerance",
    "torch_reference",
]

TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-5, 1e-5),
    "bfloat16": (2e-2, 2e-2),
    "float16": (4e-3, 4e-3),
}
"""``dtype name -> (rtol, atol)``; see the module docstring for how they apply."""


def _dtype_name(dtype: Any) -> str:
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        raise TypeError(f"dtype={dtype!r} is not a dtype") from None
    if name not in TOLERANCES:
        raise ValueError(
            f"dtype={dtype!r} has no documented tolerance; expected one of {sorted(TOLERANCES)}"
        )
    return name


def tolerance(dtype: Any, scale: float = 1.0) -> dict[str, float]:
    """The documented ``rtol`` and ``atol`` for ``dtype``, ``atol`` times ``scale``.

    Args:
      dtype: a floating dtype (or its name) listed in :data:`TOLERANCES`.
      scale: multiplies ``atol``; pass ``max(1, max|desired|)`` for results far
        from unit size.

    Returns:
      ``{"rtol": ..., "atol": ...}``, ready to unpack into
      ``chex.assert_trees_all_close``.

    Raises:
      TypeError: if ``dtype`` is not a dtype.
      ValueError: if it is a dtype without a documented tolerance (e.g. int32).

    Examples:
      >>> tolerance("float32")
      {'rtol': 1e-05, 'atol': 1e-05}
      >>> tolerance("float16", scale=10.0)
      {'rtol': 0.004, 'atol': 0.04}
    """
    rtol, atol = TOLERANCES[_dtype_name(dtype)]
    return {"rtol": rtol, "atol": atol * float(scale)}


def _loosest_dtype(tree) -> str:
    order = ["float64", "float32", "float16", "bfloat16"]
    names = [
        np.dtype(leaf.dtype).name
        for leaf in jax.tree_util.tree_leaves(tree)
        if hasattr(leaf, "dtype")
    ]
    names = [n for n in names if n in order] or ["float32"]
    return max(names, key=order.index)


def assert_close(
    actual,
    desired,
    *,
    dtype: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    err_msg: str = "",
) -> None:
    """Assert two pytrees of arrays are equal in structure, shapes and values.

    Values are compared in float64 with :func:`chex.assert_trees_all_close`;
    the tolerance is :func:`tolerance` of ``dtype`` (default: the loosest dtype
    among ``actual``'s leaves) with ``scale = max(1, max|desired|)`` per leaf.
    ``rtol`` / ``atol`` override it.

    Raises:
      AssertionError: naming the leaf and the largest difference.

    Examples:
      >>> import jax.numpy as jnp
      >>> assert_close(jnp.float32(1.0) + 1e-7, 1.0)
      >>> assert_close(jnp.bfloat16(1.0), 1.004)     # bfloat16: 2e-2
      >>> assert_close(jnp.float32(1.0), 1.001)
      Traceback (most recent call last):
      ...
      AssertionError: ...
    """
    name = _dtype_name(dtype) if dtype is not None else _loosest_dtype(actual)
    actual = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), actual)
    desired = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), desired)
    chex.assert_trees_all_equal_shapes(actual, desired)
    pairs = zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired))
    for i, (a, d) in enumerate(pairs):
        a = np.asarray(a, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        tol = tolerance(name, max(1.0, float(np.max(np.abs(d), initial=0.0))))
        if rtol is not None:
            tol["rtol"] = rtol
        if atol is not None:
            tol["atol"] = atol
        if not np.allclose(a, d, **tol):
            worst = float(np.max(np.abs(a - d)))
            msg = f"leaf {i}: max|actual - desired| = {worst:.3e} over {name} tolerance {tol}"
            chex.assert_trees_all_close(a, d, **tol, custom_message=f"{err_msg} {msg}".strip())


def random_arrays(
    spec: ConvTransposeSpec, *, dtype: Any = np.float32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard-normal ``(input, weight, bias)`` for ``spec``, in its layout.

    Values are drawn in float64 and rounded to ``dtype`` (NumPy arrays; bfloat16
    goes through ``jnp.dtype``).

    Examples:
      >>> import jaxdeconv
      >>> spec = jaxdeconv.make_spec((2, 4, 5), (4, 3, 3), groups=2)
      >>> [a.shape for a in random_arrays(spec)]
      [(2, 4, 5), (4, 3, 3), (6,)]
    """
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    arrays = (
        rng.standard_normal(spec.input_shape),
        rng.standard_normal(spec.weight_shape),
        rng.standard_normal(spec.out_channels),
    )
    return tuple(a.astype(dt) for a in arrays)


def _to_channels_first(spec: ConvTransposeSpec, x=None, w=None, y=None):
    """float64 NumPy copies of the given arrays in torch's layout."""
    out = []
    for a, move in ((x, act_to_channels_first), (w, weight_to_torch), (y, act_to_channels_first)):
        if a is not None:
            out.append(move(np.asarray(a, dtype=np.float64), spec))
    return out


def _from_channels_first(spec: ConvTransposeSpec, a, kind="act"):
    return (act_from_channels_first if kind == "act" else weight_from_torch)(a, spec)


def numpy_reference(
    input: Any, weight: Any, spec: ConvTransposeSpec, bias: Any = None
) -> np.ndarray:
    """:func:`jaxdeconv.numpy_conv_transpose` (float64) of ``spec``, in its layout.

    The spec's crops are passed as per-side padding, a negative high-side crop
    as ``output_padding``.
    """
    lo = [c[0] for c in spec.crop]
    hi = [c[1] for c in spec.crop]
    if min(lo) < 0:
        raise ValueError(f"spec.crop={spec.crop} has a negative low-side crop")
    return numpy_conv_transpose(
        np.asarray(input, np.float64),
        np.asarray(weight, np.float64),
        None if bias is None else np.asarray(bias, np.float64),
        spec.stride,
        tuple((a, max(b, 0)) for a, b in zip(lo, hi)),
        tuple(max(-b, 0) for b in hi),
        spec.groups,
        spec.dilation,
        channels_last=spec.channels_last,
    )


def numpy_conv_transpose_vjp(
    input: Any, weight: Any, cotangent: Any, spec: ConvTransposeSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``<cotangent, conv_transpose(input, weight) + bias>``, by definition.

    Plain float64 NumPy, sharing no code with the JAX side: output position
    ``i * stride + tap * dilation - crop_lo`` receives ``weight[tap] *
    input[i]``, so each input pixel's gradient gathers the cotangent at those
    positions through the weight, and each tap's weight gradient pairs the input
    with the gathered cotangent.

    Returns:
      ``(d_input, d_weight, d_bias)``, in ``spec``'s layout.

    Examples:
      >>> import jaxdeconv
      >>> spec = jaxdeconv.make_spec((1, 1, 3), (1, 1, 2), stride=2)
      >>> dx, dw, db = numpy_conv_transpose_vjp(
      ...     np.ones((1, 1, 3)), [[[1.0, 2.0]]], np.arange(6.0)[None, None], spec)
      >>> dx, dw, db
      (array([[[ 2.,  8., 14.]]]), array([[[6., 9.]]]), array([15.]))
    """
    x, w, ct = _to_channels_first(spec, input, weight, cotangent)
    g = spec.groups
    cig, cog = spec.in_channels // g, spec.out_channels // g
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for tap in itertools.product(*(range(k) for k in spec.kernel_size)):
        gathered = ct
        for ax, (t, s, d, (lo, _), i_size, o_size) in enumerate(
            zip(tap, spec.stride, spec.dilation, spec.crop, spec.input_size, spec.output_size)
        ):
            pos = np.arange(i_size) * s + t * d - lo
            valid = (pos >= 0) & (pos < o_size)
            gathered = np.take(gathered, np.clip(pos, 0, o_size - 1), axis=ax + 2)
            shape = [1] * gathered.ndim
            shape[ax + 2] = i_size
            gathered = gathered * valid.reshape(shape)
        for grp in range(g):
            xi = slice(grp * cig, (grp + 1) * cig)
            co = slice(grp * cog, (grp + 1) * cog)
            wt = w[(xi, slice(None), *tap)]
            dx[:, xi] += np.einsum("co,no...->nc...", wt, gathered[:, co])
            xs = x[:, xi].reshape(x.shape[0], cig, -1)
            gs = gathered[:, co].reshape(x.shape[0], cog, -1)
            dw[(xi, slice(None), *tap)] += np.einsum("ncp,nop->co", xs, gs)
    db = ct.sum(axis=(0, *range(2, ct.ndim)))
    return _from_channels_first(spec, dx), _from_channels_first(spec, dw, "w"), db


def _identity(fn):
    return fn


def check_formulations_agree(
    input: Any,
    weight: Any,
    spec: ConvTransposeSpec,
    *,
    formulations: Mapping[str, Callable[..., jax.Array]] | None = None,
    transform: Callable[[Callable], Callable] | None = None,
    precision: jax.lax.PrecisionLike = "highest",
    preferred_element_type: jax.typing.DTypeLike | None = None,
    gradients: bool = True,
    seed: int = 0,
    dtype: Any = None,
) -> dict[str, dict[str, Any]]:
    """Check formulations agree with the NumPy definition on one configuration.

    Each formulation ``fn(x, w, spec, *, precision, preferred_element_type)``
    is evaluated on ``(input, weight)``; with ``gradients``, also its VJP for a
    random cotangent (gradients w.r.t. input and weight) and its JVP for random
    tangents. References, float64 NumPy: :func:`numpy_reference` for values,
    :func:`numpy_conv_transpose_vjp` for the VJP and, the operation being
    bilinear, ``T(dx, w) + T(x, dw)`` for the JVP.

    Args:
      input, weight: in ``spec``'s layout (batched).
      spec: from :func:`jaxdeconv.make_spec`.
      formulations: name -> function; default :data:`jaxdeconv.FORMULATIONS`.
      transform: applied to each function of arrays before calling it:
        ``jax.jit``, or ``self.variant`` inside a ``chex.variants`` test.
      precision, preferred_element_type: passed to every formulation.
      gradients: also check reverse and forward mode.
      seed: for the cotangent and tangents.
      dtype: tolerance dtype (default: the loosest of the results).

    Returns:
      ``{name: {"value": y, "vjp": (dx, dw), "jvp": dy}}`` (without the last two
      when ``gradients`` is false).

    Raises:
      AssertionError: naming the formulation and the quantity that disagrees.
    """
    formulations = dict(FORMULATIONS if formulations is None else formulations)
    transform = transform or _identity
    x = jnp.asarray(input)
    w = jnp.asarray(weight)
    rng = np.random.default_rng(seed)
    ct64 = rng.standard_normal(spec.output_shape)
    tx = jnp.asarray(rng.standard_normal(x.shape), x.dtype)
    tw = jnp.asarray(rng.standard_normal(w.shape), w.dtype)
    want = numpy_reference(x, w, spec)
    references: dict[str, tuple] = {}  # by output dtype: the cotangent as rounded

    def reference_gradients(out_dtype):
        if out_dtype not in references:
            ct = jnp.asarray(ct64, out_dtype)
            vjp_ref = numpy_conv_transpose_vjp(x, w, ct, spec)[:2]
            jvp_ref = numpy_reference(tx, w, spec) + numpy_reference(x, tw, spec)
            references[out_dtype] = (ct, vjp_ref, jvp_ref)
        return references[out_dtype]

    results: dict[str, dict[str, Any]] = {}
    for name, fn in formulations.items():

        def value(x_, w_, fn=fn):
            return fn(
                x_, w_, spec, precision=precision, preferred_element_type=preferred_element_type
            )

        def all_modes(x_, w_, ct_, tx_, tw_, value=value):
            y, pullback = jax.vjp(value, x_, w_)
            _, dy = jax.jvp(value, (x_, w_), (tx_, tw_))
            return y, pullback(ct_), dy

        out: dict[str, Any] = {}
        if gradients:
            out_dtype = jax.eval_shape(value, x, w).dtype
            ct, vjp_ref, jvp_ref = reference_gradients(jnp.dtype(out_dtype).name)
            y, grads, dy = transform(all_modes)(x, w, ct, tx, tw)
            out.update(value=y, vjp=grads, jvp=dy)
        else:
            out["value"] = y = transform(value)(x, w)
        tol_dtype = dtype or _loosest_dtype(out)
        if y.shape != spec.output_shape:
            raise AssertionError(
                f"formulation {name!r}: output shape {y.shape}, expected {spec.output_shape}"
            )
        assert_close(y, want, dtype=tol_dtype, err_msg=f"formulation {name!r}, value:")
        if gradients:
            for got, ref, what in (
                (grads[0], vjp_ref[0], "VJP d/dinput"),
                (grads[1], vjp_ref[1], "VJP d/dweight"),
                (dy, jvp_ref, "JVP"),
            ):
                assert_close(got, ref, dtype=tol_dtype, err_msg=f"formulation {name!r}, {what}:")
        results[name] = out
    return results


def _inner(a, b) -> float:
    return float(np.vdot(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()))


def check_transpose_pair(
    f: Callable[[jax.Array], jax.Array],
    f_t: Callable[[jax.Array], jax.Array],
    primal: Any,
    *,
    transform: Callable[[Callable], Callable] | None = None,
    dense_max_size: int = 4096,
    seed: int = 0,
    dtype: Any = None,
) -> None:
    """Check that linear ``f_t`` is the transpose (adjoint) of linear ``f``.

    With random ``x`` shaped like ``primal`` and ``y`` shaped like ``f(x)``:

    1. the adjoint identity ``<f(x), y> == <x, f_t(y)>``, to within the dtype's
       ``rtol`` times ``|f(x)| |y|`` (the Cauchy-Schwarz bound);
    2. ``jax.vjp(f, x)`` pulls ``y`` back to ``f_t(y)``, and ``jax.vjp(f_t, y)``
       pulls ``x`` back to ``f(x)`` (so each is the other's gradient);
    3. ``jax.linear_transpose`` of each equals the other;
    4. when ``x.size * y.size <= dense_max_size``, the dense Jacobian of
       ``f_t`` (``jax.jacfwd``) equals the transpose of ``f``'s (``jax.jacrev``).

    Args:
      f, f_t: functions of one array, claimed linear and mutually transposed.
      primal: an array or ``jax.ShapeDtypeStruct`` giving ``x``'s shape and dtype.
      transform: applied to every function before calling it (``jax.jit``,
        ``self.variant`` in a ``chex.variants`` test).
      dense_max_size: the largest ``x.size * y.size`` for the dense check.
      seed: for ``x`` and ``y``.
      dtype: tolerance dtype (default: ``primal``'s).

    Raises:
      AssertionError: naming the identity that fails.

    Examples:
      >>> import jax.numpy as jnp
      >>> a = jnp.arange(6.0).reshape(2, 3)
      >>> check_transpose_pair(lambda v: a @ v, lambda u: a.T @ u, jnp.zeros(3))
      >>> check_transpose_pair(lambda v: a @ v, lambda u: a[:, ::-1].T @ u, jnp.zeros(3))
      Traceback (most recent call last):
      ...
      AssertionError: adjoint identity <f(x), y> == <x, f_t(y)> fails: ...
    """
    transform = transform or _identity
    rng = np.random.default_rng(seed)
    if not (hasattr(primal, "shape") and hasattr(primal, "dtype")):
        primal = jnp.asarray(primal)
    x_aval = jax.ShapeDtypeStruct(tuple(primal.shape), primal.dtype)
    y_aval = jax.eval_shape(f, x_aval)
    name = _dtype_name(dtype or x_aval.dtype)
    x = jnp.asarray(rng.standard_normal(x_aval.shape), x_aval.dtype)
    y = jnp.asarray(rng.standard_normal(y_aval.shape), y_aval.dtype)

    dense = x.size * y.size <= dense_max_size

    def everything(x_, y_):
        # One function, so that ``transform`` (a jit, a pmap) compiles once.
        out = {
            "f(x)": f(x_),
            "f_t(y)": f_t(y_),
            "vjp of f": jax.vjp(f, x_)[1](y_)[0],
            "vjp of f_t": jax.vjp(f_t, y_)[1](x_)[0],
            "linear_transpose of f": jax.linear_transpose(f, x_aval)(y_)[0],
            "linear_transpose of f_t": jax.linear_transpose(f_t, y_aval)(x_)[0],
        }
        if dense:
            out["jacrev(f)"] = jax.jacrev(f)(x_)
            out["jacfwd(f_t)"] = jax.jacfwd(f_t)(y_)
        return out

    got = transform(everything)(x, y)
    fx, fty = got["f(x)"], got["f_t(y)"]
    chex.assert_shape(fty, x_aval.shape)
    chex.assert_shape(fx, y_aval.shape)
    lhs, rhs = _inner(fx, y), _inner(x, fty)
    bound = np.linalg.norm(np.asarray(fx, np.float64)) * np.linalg.norm(np.asarray(y, np.float64))
    rtol, atol = TOLERANCES[name]
    if not abs(lhs - rhs) <= rtol * bound + atol:
        raise AssertionError(
            f"adjoint identity <f(x), y> == <x, f_t(y)> fails: {lhs!r} != {rhs!r} "
            f"(difference {abs(lhs - rhs):.3e}, allowed {rtol * bound + atol:.3e} for {name})"
        )
    for key, want in (
        ("vjp of f", fty),
        ("linear_transpose of f", fty),
        ("vjp of f_t", fx),
        ("linear_transpose of f_t", fx),
    ):
        other = "f_t" if want is fty else "f"
        assert_close(got[key], want, dtype=name, err_msg=f"{key} != {other}:")
    if dense:
        jac_f = np.asarray(got["jacrev(f)"], np.float64).reshape(y.size, x.size)
        jac_ft = np.asarray(got["jacfwd(f_t)"], np.float64).reshape(x.size, y.size)
        assert_close(
            jac_ft, jac_f.T, dtype=name, err_msg="dense Jacobian of f_t != that of f, transposed:"
        )


def torch_reference(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    cotangent: Any = None,
    channels_last: bool = False,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, tuple[np.ndarray | None, ...] | None]:
    """``torch.nn.functional.conv_transpose{1,2,3}d`` (float64 unless ``dtype``), and its VJP.

    PyTorch is imported here, lazily: it is a test oracle, never a runtime need.
    Arguments are PyTorch's (integer or per-dimension ``padding`` only), layouts
    as in :func:`jaxdeconv.conv_transpose`.

    Returns:
      ``(value, grads)``: ``grads`` is ``None`` without ``cotangent``, else
      ``torch.autograd``'s ``(d_input, d_weight, d_bias)`` of
      ``<cotangent, value>`` (``d_bias`` is ``None`` without ``bias``).
    """
    import torch
    import torch.nn.functional as F

    def tensor(a, grad=cotangent is not None):
        t = torch.from_numpy(np.array(a, dtype=np.float32 if low else dt))
        t = t.to(getattr(torch, dt.name)) if low else t
        return t.requires_grad_(grad)

    dt = np.dtype(dtype)
    low = dt.name in ("bfloat16",)  # NumPy has no native bfloat16: go through float32
    w = np.asarray(weight, np.float32 if low else dt)
    n = w.ndim - 2
    x = np.asarray(input, np.float32 if low else dt)
    if channels_last:
        x = np.moveaxis(x, -1, -n - 1)
        w = np.moveaxis(w, (n, n + 1), (0, 1))
    xt, wt = tensor(x), tensor(w)
    bt = None if bias is None else tensor(bias)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    y = fn(xt, wt, bt, stride, padding, output_padding, groups, dilation)
    value = y.detach().float().numpy() if low else y.detach().numpy()
    grads = None
    if cotangent is not None:
        ct = np.asarray(cotangent, np.float32 if low else dt)
        if channels_last:
            ct = np.moveaxis(ct, -1, -n - 1)
        leaves = [t for t in (xt, wt, bt) if t is not None]
        got = [g.float() if low else g for g in torch.autograd.grad(y, leaves, tensor(ct, False))]
        dx, dw = got[0].numpy(), got[1].numpy()
        db = got[2].numpy() if bt is not None else None
        if channels_last:
            dx = np.moveaxis(dx, -n - 1, -1)
            dw = np.moveaxis(dw, (0, 1), (n, n + 1))
        grads = (dx, dw, db)
    if channels_last:
        value = np.moveaxis(value, -n - 1, -1)
    return value, grads

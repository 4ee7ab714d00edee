"""The public functions: ``conv_transpose`` and its rank-checked aliases."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import formulations
from ._cost import MAX_COLS_BYTES, chunks_fit, cols_bytes, gemm_applies
from ._layout import add_bias
from ._plan import Plan, make_plan, on_several_devices, phase_kernels
from ._spec import (
    ConvTransposeSpec,
    IntOrSeq,
    PaddingLike,
    _check_static,
    as_array,
    make_spec,
    spatial_output_size,
)

__all__ = ["conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "plan"]


def _check_array(name: str, value) -> jax.Array | jax.ShapeDtypeStruct:
    """An array (or a ``jax.ShapeDtypeStruct``, for planning) of a floating dtype."""
    if not isinstance(value, (jax.Array, jax.ShapeDtypeStruct)):
        value = as_array(name, value, xp=jnp)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {value.dtype}; cast it first, e.g. {name}.astype(jnp.float32)"
        )
    return value


def _check_precision(precision):
    """``precision`` as ``lax`` would canonicalize it; a ``ValueError`` naming it if bad."""
    from jax._src.lax.lax import canonicalize_precision

    _check_static("precision", precision)
    try:
        return canonicalize_precision(precision)
    except (TypeError, ValueError):
        raise ValueError(
            f"precision={precision!r} must be None, a jax.lax.Precision, one of 'default', "
            "'high', 'highest' (or 'fastest', 'bfloat16', 'tensorfloat32', 'float32'), or a "
            "pair of these (input, weight)"
        ) from None


def _check_preferred_element_type(value):
    _check_static("preferred_element_type", value)
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"preferred_element_type={value!r} must be a dtype or None") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"preferred_element_type={value!r} must be a floating dtype (float16, bfloat16, "
            "float32, float64) or None: the inputs are floating"
        )
    return dtype


def _check_method(method):
    _check_static("method", method)
    if isinstance(method, Plan):
        formulations.get(method.formulation, argument="method.formulation")
        return method
    if method not in ("auto", "per_group"):
        formulations.get(method)
    return method


def _prepare(
    input,
    weight,
    bias,
    stride,
    padding,
    output_padding,
    groups,
    dilation,
    *,
    output_size,
    channels_last,
    precision,
    preferred_element_type,
):
    """Check arrays and arguments: ``(x, w, b, spec, unbatched, precision, pet)``.

    ``x`` is batched; ``spec`` describes the batched call. Raises before XLA sees
    anything.
    """
    x = _check_array("input", input)
    w = _check_array("weight", weight)
    if w.ndim < 3:
        raise ValueError(
            f"weight must have shape [C_in, C_out/groups, *kernel] with at least one "
            f"spatial dimension, got weight.shape={w.shape}"
        )
    ndim = w.ndim - 2
    unbatched = x.ndim == ndim + 1
    shape = (1, *x.shape) if unbatched else x.shape
    if unbatched and output_size is not None:
        output_size = spatial_output_size(output_size, ndim, batched=False)
    spec = make_spec(
        shape,
        w.shape,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
        channels_last=channels_last,
    )
    b = None
    if bias is not None:
        b = _check_array("bias", bias)
        if b.shape != (spec.out_channels,):
            raise ValueError(
                f"bias.shape={b.shape} must be ({spec.out_channels},), one value per output channel"
            )
    precision = _check_precision(precision)
    preferred_element_type = _check_preferred_element_type(preferred_element_type)
    return x, w, b, spec, unbatched, precision, preferred_element_type


def batched_operands(x, w, unbatched: bool):
    """``x`` batched, and both cast to their promoted dtype: ``(x, w, dtype)``."""
    dtype = jnp.result_type(x.dtype, w.dtype)
    return (x[None] if unbatched else x).astype(dtype), w.astype(dtype), dtype


def _plan_for(method, spec: ConvTransposeSpec, dtype, *arrays, on_mesh=None) -> Plan:
    """The plan for this call: ``method`` itself if it is a :class:`Plan`."""
    if on_mesh is None:
        on_mesh = on_several_devices(*arrays)
    if isinstance(method, Plan):
        kernels = method.kernels
        if kernels is not None and kernels.lowering == "gemm":
            chunks = kernels.batch_chunks
            fits = gemm_applies(spec, dtype) and chunks_fit(spec, dtype, chunks)
            if not fits or spec.batch % kernels.forward_chunks:
                raise ValueError(
                    f"method={method.label!r}: the GEMM lowering cannot run this layer as "
                    f"planned (batch={spec.batch} in {chunks} chunk(s), the forward in "
                    f"{kernels.forward_chunks}, buffers of "
                    f"{cols_bytes(spec, dtype)} bytes against {MAX_COLS_BYTES} per chunk); "
                    "plan it for these arguments with jaxdeconv.plan(...)"
                )
        return method
    return make_plan(spec, np.dtype(dtype), method, on_mesh=on_mesh)


def run(
    plan_: Plan, x, w, spec: ConvTransposeSpec, *, precision=None, preferred_element_type=None
) -> jax.Array:
    """Run ``plan_`` on batched ``x`` and ``w`` in spec's layout (no bias)."""
    kw = dict(precision=precision, preferred_element_type=preferred_element_type)
    if plan_.per_group:
        return formulations.per_group(x, w, spec, base=plan_.formulation, **kw)
    if plan_.kernels is not None:
        kw["kernels"] = plan_.kernels
    return formulations.get(plan_.formulation)(x, w, spec, **kw)


def conv_transpose(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: Sequence[int] | int | None = None,
    method: str = "auto",
    channels_last: bool = False,
    precision: jax.lax.PrecisionLike = None,
    preferred_element_type: jax.typing.DTypeLike | None = None,
) -> jax.Array:
    """Transposed convolution with PyTorch's arguments, numbers and weight layout.

    Equals ``torch.nn.functional.conv_transpose{1,2,3}d`` (same positional order
    and meaning) for 1, 2 and 3 spatial dimensions, and extends to any number.

    Args:
      input: ``[N, C_in, *spatial]`` or unbatched ``[C_in, *spatial]``
        (channels-last: ``[N, *spatial, C_in]`` or ``[*spatial, C_in]``).
      weight: ``[C_in, C_out / groups, *kernel]``, PyTorch's ``ConvTranspose``
        layout (channels-last: ``[*kernel, C_in, C_out / groups]``, i.e.
        ``jnp.moveaxis(w, (0, 1), (-2, -1))`` of the PyTorch weight).
      bias: optional ``[C_out]``.
      stride: int or one per spatial dimension.
      padding: int or one per dimension (PyTorch's: crops ``p`` from each side
        of the result); per-side pairs ``((lo, hi), ...)``; or ``"SAME"``
        (``output = input * stride``; when ``dilation * (k - 1) + 1 - stride``
        is odd the extra pixel is cropped from the high end, as in TensorFlow
        and ``lax.conv_transpose``) or ``"VALID"``
        (``output = input * stride + max(dilation * (k - 1) + 1 - stride, 0)``).
      output_padding: extra size added on the high side of each dimension; must
        be smaller than stride or dilation, as in PyTorch.
      groups: blocked connections from input to output channels.
      dilation: kernel dilation, int or one per dimension.
      output_size: the wanted spatial output size (leading batch/channel sizes
        are ignored), as in ``torch.nn.ConvTranspose2d.forward(x, output_size)``;
        it sets ``output_padding`` and excludes a non-zero one.
      method: ``"auto"`` (the planner decides, see :func:`plan`), a registered
        formulation (``"vjp"``, ``"lhs_dilated"``, ``"zero_insertion"``,
        ``"phase"`` or one added with :func:`jaxdeconv.register`; see
        :data:`jaxdeconv.FORMULATIONS`), ``"per_group"`` (``"lhs_dilated"`` one
        group at a time), or a :class:`~jaxdeconv.Plan` from :func:`plan`, run
        as it is.
      channels_last: layout of input, weight and output (see above).
      precision: passed to ``lax`` (``None``, a ``jax.lax.Precision``, its name,
        or a pair); validated first.
      preferred_element_type: accumulation and output dtype, passed to ``lax``.

    Returns:
      ``[N, C_out, *out]`` (or its unbatched / channels-last form), where per
      dimension ``out = (in - 1) * stride - pad_lo - pad_hi + dilation * (k - 1)
      + output_padding + 1``. The dtype is the promoted input/weight dtype unless
      ``preferred_element_type`` is given.

    Raises:
      ValueError, TypeError: for any argument PyTorch rejects, and for bad
        extensions, before anything reaches XLA. Also ValueError for an output
        size below 1 (where some PyTorch kernels return an empty tensor), and
        TypeError for an integer, bool or complex ``input``/``weight``/``bias``
        and for a traced value (under ``jit``) in any static argument
        (``stride`` to ``dilation``, ``output_size``, ``method``,
        ``channels_last``).
      ValueError: for ``method="zero_insertion"`` when the zero-inserted input
        plus the dilated kernel would take more than
        ``JAXDECONV_ZERO_INSERTION_MAX_BYTES`` (environment variable; default
        1 GiB, ``none`` for no bound).

    Unlike ``lax.conv_transpose`` (and Flax's ``ConvTranspose``), an integer
    ``padding`` is PyTorch's forward-conv padding, not the padding of the
    dilated input, and the kernel is flipped and channel-swapped as PyTorch's
    gradient convention requires, so PyTorch weights load unchanged.

    Examples:
      The seed's worked example:

      >>> import jax.numpy as jnp
      >>> x = jnp.array([[[[4., 4., 3.], [0., 3., 4.], [2., 3., 2.]]]])
      >>> w = jnp.array([[[[1., 2.], [0., 1.]]]])
      >>> conv_transpose(x, w)[0, 0]
      Array([[ 4., 12., 11.,  6.],
             [ 0.,  7., 14., 11.],
             [ 2.,  7., 11.,  8.],
             [ 0.,  2.,  3.,  2.]], dtype=float32)
      >>> conv_transpose(x, w, padding=1)[0, 0]
      Array([[ 7., 14.],
             [ 7., 11.]], dtype=float32)
    """
    return _conv_transpose(
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
        method=method,
        channels_last=channels_last,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _conv_transpose(input, weight, bias, *args, method, on_mesh=None, **kwargs):
    """:func:`conv_transpose`, with the placement optionally given (``on_mesh``)."""
    method = _check_method(method)
    x, w, b, spec, unbatched, precision, preferred_element_type = _prepare(
        input, weight, bias, *args, **kwargs
    )
    x, w, dtype = batched_operands(x, w, unbatched)
    chosen = _plan_for(method, spec, dtype, x, w, on_mesh=on_mesh)
    y = run(chosen, x, w, spec, precision=precision, preferred_element_type=preferred_element_type)
    y = add_bias(y, b, spec)
    return y[0] if unbatched else y


def conv_transpose_on(*args, on_mesh: bool, **kwargs) -> jax.Array:
    """:func:`conv_transpose` planned as if its arrays were (not) on several devices."""
    a = _bind("conv_transpose", args, kwargs).arguments
    return _conv_transpose(
        a.pop("input"),
        a.pop("weight"),
        a.pop("bias"),
        a.pop("stride"),
        a.pop("padding"),
        a.pop("output_padding"),
        a.pop("groups"),
        a.pop("dilation"),
        on_mesh=on_mesh,
        **a,
    )


def _bind(fn_name: str, args, kwargs) -> inspect.BoundArguments:
    """``args``/``kwargs`` bound to :func:`conv_transpose`'s signature, defaults applied."""
    try:
        bound = inspect.signature(conv_transpose).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{fn_name}(): {e}") from None
    bound.apply_defaults()
    return bound


def _ranked(n: int):
    def fn(*args, **kwargs) -> jax.Array:
        bound = _bind(f"conv_transpose{n}d", args, kwargs)
        weight, input = bound.arguments["weight"], bound.arguments["input"]
        w_ndim, x_ndim = np.ndim(weight), np.ndim(input)
        if w_ndim != n + 2 or x_ndim not in (n + 1, n + 2):
            raise ValueError(
                f"conv_transpose{n}d expects a weight of rank {n + 2} and an input of rank "
                f"{n + 1} (unbatched) or {n + 2} (batched), got weight.shape="
                f"{np.shape(weight)} and input.shape={np.shape(input)}"
            )
        return conv_transpose(*bound.args, **bound.kwargs)

    fn.__signature__ = inspect.signature(conv_transpose)
    fn.__name__ = fn.__qualname__ = f"conv_transpose{n}d"
    fn.__doc__ = (
        f"``torch.nn.functional.conv_transpose{n}d`` for JAX: :func:`conv_transpose` "
        f"restricted to {n} spatial dimension(s).\n\n"
        f"Raises:\n  ValueError: if ``weight`` is not of rank {n + 2} or ``input`` not of "
        f"rank {n + 1} or {n + 2}.\n"
    )
    return fn


conv_transpose1d = _ranked(1)
conv_transpose2d = _ranked(2)
conv_transpose3d = _ranked(3)


def plan(
    *args,
    backend: str | None = None,
    on_mesh: bool | None = None,
    strategy: str | None = None,
    **kwargs,
) -> Plan:
    """What :func:`conv_transpose` would run for these arguments, and why.

    Takes :func:`conv_transpose`'s arguments (arrays, or ``jax.ShapeDtypeStruct``
    for shapes alone) and returns the :class:`~jaxdeconv._plan.Plan` it would
    run: the formulation, whether groups run one by one, and for ``"phase"`` the
    kernels of the forward pass and both gradients. ``plan(...).label`` is a
    one-line summary; pass the plan back as ``conv_transpose(..., method=plan)``
    to run exactly it.

    Args:
      *args, **kwargs: as for :func:`conv_transpose`.
      backend: plan for this backend (default ``jax.default_backend()``).
      on_mesh: plan as if the arrays were (``True``) or were not (``False``) on
        several devices; default: from the arrays' placement.
      strategy: force the phase formulation's CPU strategy, ``"cols"`` (GEMM +
        col2im), ``"phase"`` (phase convolutions, GEMM gradients) or ``"convs"``
        (the convolution lowering); ``method`` must then be ``"auto"`` or
        ``"phase"``.

    Returns:
      A :class:`~jaxdeconv._plan.Plan`.

    Examples:
      >>> import jax, jaxdeconv
      >>> x = jax.ShapeDtypeStruct((8, 64, 16, 16), "float32")
      >>> w = jax.ShapeDtypeStruct((64, 32, 4, 4), "float32")
      >>> p = jaxdeconv.plan(x, w, stride=2, padding=1, backend="cpu", on_mesh=False)
      >>> p.formulation, p.kernels.lowering
      ('phase', 'gemm')
      >>> jaxdeconv.plan(x, w, stride=2, padding=1, backend="gpu").label
      'lhs_dilated'
    """
    bound = _bind("plan", args, kwargs)
    a = bound.arguments
    method = _check_method(a["method"])
    x, w, _, spec, _, _, _ = _prepare(
        a["input"],
        a["weight"],
        a["bias"],
        a["stride"],
        a["padding"],
        a["output_padding"],
        a["groups"],
        a["dilation"],
        output_size=a["output_size"],
        channels_last=a["channels_last"],
        precision=a["precision"],
        preferred_element_type=a["preferred_element_type"],
    )
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend={backend!r} must be a string such as 'cpu' or 'gpu'")
    if on_mesh is None:
        on_mesh = on_several_devices(x, w)
    dtype = np.dtype(jnp.result_type(x.dtype, w.dtype))
    if isinstance(method, Plan):
        return _plan_for(method, spec, dtype, on_mesh=on_mesh)
    if strategy is None:
        return make_plan(spec, dtype, method, backend=backend, on_mesh=bool(on_mesh))
    if method not in ("auto", "phase"):
        raise ValueError(f"strategy={strategy!r} needs method='auto' or 'phase', got {method!r}")
    chosen = make_plan(spec, dtype, "phase", backend=backend, on_mesh=bool(on_mesh))
    kernels = phase_kernels(
        spec, dtype, backend=chosen.backend, on_mesh=chosen.on_mesh, strategy=strategy
    )
    return dataclasses.replace(
        chosen, method=method, kernels=kernels, reason=f"strategy={strategy!r} asked for"
    )

"""Port a whole PyTorch model's parameters and buffers to a torch-named pytree of JAX arrays.

:func:`torch_to_pytree` reads a ``torch.nn.Module`` (or a bare ``state_dict``)
and returns nested dicts that follow the dotted names of its ``state_dict``
(``"ups.0.bias"`` becomes ``tree["ups"]["0"]["bias"]``), with

* transposed-convolution weights in PyTorch's layout or channels-last,
* weight norm (legacy ``torch.nn.utils.weight_norm`` and
  ``torch.nn.utils.parametrizations.weight_norm``) folded into ``weight`` from
  ``g`` and ``v`` exactly as torch's forward computes it, or kept as
  ``weight_g`` and ``weight_v``,
* integer buffers kept as integers (``num_batches_tracked`` stays int64), and
* float64 never silently narrowed: kept with JAX's x64 mode on, else an
  error that asks for an explicit ``dtype=``.

Needs ``torch`` (``pip install 'jaxdeconv[torch]'``), imported when called.
See ``docs/porting.md`` for whole generators (HiFi-GAN-style and DCGAN-style)
ported with their values and gradients checked against torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["torch_to_pytree"]

LAYOUTS = ("torch", "channels_last")
WEIGHT_NORM = ("fold", "keep")
_PARAM_WN = ("parametrizations.weight.original0", "parametrizations.weight.original1")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("porting from PyTorch needs torch: pip install 'jaxdeconv[torch]'") from e
    return torch


def _check_dtype(dtype) -> Any:
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype={dtype!r} is not a dtype") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"dtype={dtype!r} must be a floating dtype (it applies to float tensors)")
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        raise ValueError(
            f"dtype={dtype!r} needs JAX's x64 mode: enable it with "
            "jax.config.update('jax_enable_x64', True), or ask for float32"
        )
    return dt


def _to_jax(tensor, name: str, dtype) -> jax.Array | np.ndarray:
    """One torch tensor as a JAX array, with an explicit rule for every dtype.

    Floating tensors become ``dtype`` if given, else keep their dtype (float64
    without x64 raises). Integer and bool tensors keep their dtype; an int64
    tensor with x64 off is returned as a NumPy int64 array rather than
    narrowed to int32.
    """
    torch = _torch()
    t = tensor.detach().cpu()
    # NumPy has no bfloat16: widen exactly, then narrow back
    a = t.float().numpy().astype(jnp.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
    if a.dtype.kind in "iub":
        if jax.dtypes.canonicalize_dtype(a.dtype) != a.dtype:
            return a.copy()  # int64 / uint64 with x64 off: NumPy keeps the values exact
        return jnp.asarray(a)
    target = a.dtype if dtype is None else dtype
    if jax.dtypes.canonicalize_dtype(target) != target:
        raise ValueError(
            f"{name} is {a.dtype} but JAX's x64 mode is off, so JAX would silently make it "
            f"{jax.dtypes.canonicalize_dtype(target)}: pass dtype=jnp.float32 to convert "
            "explicitly, or enable x64 with jax.config.update('jax_enable_x64', True)"
        )
    return jnp.asarray(a.astype(target, copy=False))


def _normalize_dim(dim, ndim: int) -> int | None:
    """torch's weight-norm ``dim`` (``-1`` / ``None``: the whole tensor) -> axis or None."""
    if dim is None or dim == -1:
        return None
    return dim + ndim if dim < 0 else dim


def _dim_from_shapes(g_shape, v_shape, name: str) -> int | None:
    """The weight-norm ``dim`` that gives ``g`` its shape (None: norm of the whole ``v``)."""
    g_shape, v_shape = tuple(g_shape), tuple(v_shape)
    if g_shape == ():
        return None
    kept = [i for i, (gs, vs) in enumerate(zip(g_shape, v_shape)) if gs == vs and gs > 1]
    if (
        len(g_shape) != len(v_shape)
        or any(gs not in (1, vs) for gs, vs in zip(g_shape, v_shape))
        or len(kept) > 1
    ):
        raise ValueError(
            f"{name}: g of shape {g_shape} is not a torch weight-norm magnitude for v of "
            f"shape {v_shape} (it must be a scalar or keep one axis of v, size 1 elsewhere)"
        )
    return kept[0] if kept else None


def _weight_norm_of(module) -> tuple[Any, Any, int | None] | None:
    """``(g, v, dim)`` of a module whose ``weight`` is weight-normed, else ``None``.

    Reads both torch APIs: the legacy ``torch.nn.utils.weight_norm`` (a forward
    pre-hook and parameters ``weight_g`` / ``weight_v``; ``module.weight`` is
    stale until the next forward, e.g. after ``load_state_dict``) and
    ``torch.nn.utils.parametrizations.weight_norm`` (``original0`` /
    ``original1``). ``dim`` is an axis of the weight in PyTorch's layout, or
    ``None`` for one norm over the whole tensor (torch's ``dim=None`` and
    ``dim=-1``).

    Raises:
      ValueError: when ``module.weight`` cannot be trusted and cannot be
        recomputed: a weight norm on another parameter than ``weight``, a legacy
        ``spectral_norm``, or ``weight_g`` / ``weight_v`` without the hook.
    """
    torch = _torch()
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    kind = type(module).__name__
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, SpectralNorm):
            raise ValueError(
                f"{kind} uses the legacy torch.nn.utils.spectral_norm: its weight is recomputed "
                "by power iteration in every forward; call "
                "torch.nn.utils.remove_spectral_norm(module) first"
            )
        if isinstance(hook, WeightNorm) and hook.name != "weight":
            raise ValueError(
                f"{kind} has a weight norm on {hook.name!r}; only 'weight' is supported"
            )
    hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)]
    if hooks:
        v = module.weight_v
        return module.weight_g, v, _normalize_dim(hooks[0].dim, v.dim())
    if parametrize.is_parametrized(module, "weight"):
        plist = module.parametrizations.weight
        wn = torch.nn.utils.parametrizations._WeightNorm
        if len(plist) == 1 and isinstance(plist[0], wn):
            v = plist.original1
            return plist.original0, v, _normalize_dim(plist[0].dim, v.dim())
        return None  # another parametrization: module.weight is recomputed on access
    if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
        raise ValueError(
            f"{kind} has weight_g and weight_v but no weight-norm hook, so whether "
            "module.weight is current cannot be told; apply torch.nn.utils.weight_norm "
            "before load_state_dict, or pass the state_dict instead"
        )
    return None


def _fold_weight_norm(g, v, dim: int | None):
    """torch's ``_weight_norm(v, g, dim)``: the weight ``g * v / ||v||`` as a torch tensor."""
    torch = _torch()
    with torch.no_grad():
        return torch._weight_norm(v.detach(), g.detach(), -1 if dim is None else dim)


def _channels_last(a):
    return a if a.ndim == 0 else jnp.moveaxis(jnp.asarray(a), (0, 1), (-2, -1))


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def torch_to_pytree(
    module_or_state_dict,
    *,
    conv_transpose_layout: str = "torch",
    weight_norm: str = "fold",
    dtype: jax.typing.DTypeLike | None = None,
    conv_transpose_names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """A torch model's parameters and buffers as nested, torch-named dicts of JAX arrays.

    The dotted names of the ``state_dict`` become nested dicts
    (``"ups.0.bias"`` -> ``tree["ups"]["0"]["bias"]``; list indices stay
    strings). Every tensor keeps its shape and PyTorch layout except:

    * transposed-convolution weights ``[C_in, C_out / groups, *kernel]`` become
      ``[*kernel, C_in, C_out / groups]`` with ``conv_transpose_layout=
      "channels_last"`` (the layout of ``jaxdeconv.conv_transpose(...,
      channels_last=True)``); ordinary ``Conv`` weights are left as they are;
    * weight norm: with ``weight_norm="fold"`` the entries ``weight_g`` and
      ``weight_v`` (legacy API) or ``parametrizations.weight.original0`` /
      ``original1`` become one ``weight`` computed by torch's own
      ``_weight_norm``, bit for bit what the torch forward uses (the legacy
      ``module.weight`` attribute is never read: it is stale after
      ``load_state_dict``). With ``weight_norm="keep"`` both APIs give
      ``weight_g`` and ``weight_v`` (in the chosen layout), ready for the
      layers' ``weight_norm=True``.

    Dtypes: floating tensors keep their dtype, or all become ``dtype`` if
    given; float64 with JAX's x64 mode off raises instead of silently becoming
    float32. Integer and bool buffers keep their dtype; an int64 buffer
    (BatchNorm's ``num_batches_tracked``) with x64 off is a NumPy int64
    array, since JAX would narrow it to int32.

    With a module, transposed convolutions are found by walking
    ``module.named_modules()`` and weight norm's ``dim`` is read from the
    module. A bare ``state_dict`` carries no module types: the weight-norm
    ``dim`` is read off ``g``'s shape (which determines the result), and
    ``conv_transpose_layout="channels_last"`` needs ``conv_transpose_names``,
    the dotted module names (``""`` for the root) whose ``weight`` is a
    transposed-convolution weight.

    Args:
      module_or_state_dict: a ``torch.nn.Module`` or a mapping from names to
        tensors (a ``state_dict``).
      conv_transpose_layout: ``"torch"`` or ``"channels_last"``.
      weight_norm: ``"fold"`` or ``"keep"``.
      dtype: a floating dtype for every floating tensor (default: keep each).
      conv_transpose_names: module names whose ``weight`` is a transposed-conv
        weight; for a ``state_dict`` (with a module they are found, and these
        are added).

    Returns:
      Nested dicts of ``jax.Array`` (NumPy int64 arrays for int64 with x64 off).

    Raises:
      TypeError: for an argument of the wrong type.
      ValueError: for an unknown option, float64 with x64 off and no ``dtype``,
        a weight norm or parametrization that cannot be read (legacy
        ``spectral_norm``, other parametrizations), or a name in
        ``conv_transpose_names`` that names no rank >= 3 weight.

    Examples:
      >>> import torch, jax.numpy as jnp
      >>> from jaxdeconv.porting import torch_to_pytree
      >>> net = torch.nn.Sequential(
      ...     torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(4, 2, 3)),
      ...     torch.nn.BatchNorm1d(2),
      ... )
      >>> tree = torch_to_pytree(net, conv_transpose_layout="channels_last")
      >>> sorted(tree), sorted(tree["0"]), tree["0"]["weight"].shape
      (['0', '1'], ['bias', 'weight'], (3, 4, 2))
      >>> tree["1"]["num_batches_tracked"].dtype      # int64 kept (NumPy with x64 off)
      dtype('int64')
      >>> kept = torch_to_pytree(net, weight_norm="keep")
      >>> kept["0"]["weight_g"].shape, kept["0"]["weight_v"].shape   # dim=0: per input channel
      ((4, 1, 1), (4, 2, 3))
    """
    torch = _torch()
    if conv_transpose_layout not in LAYOUTS:
        raise ValueError(f"conv_transpose_layout={conv_transpose_layout!r} is not one of {LAYOUTS}")
    if weight_norm not in WEIGHT_NORM:
        raise ValueError(f"weight_norm={weight_norm!r} is not one of {WEIGHT_NORM}")
    dtype = _check_dtype(dtype)
    if isinstance(conv_transpose_names, str):
        raise TypeError(
            f"conv_transpose_names={conv_transpose_names!r} must be a collection of names, "
            "not one string"
        )
    ct_names = set(conv_transpose_names or ())
    dims: dict[str, int | None] = {}  # module prefix ("" or "a.b.") -> weight-norm dim
    if isinstance(module_or_state_dict, torch.nn.Module):
        module = module_or_state_dict
        state = dict(module.state_dict())
        for name, sub in module.named_modules():
            if isinstance(sub, torch.nn.modules.conv._ConvTransposeNd):
                ct_names.add(name)
            found = _weight_norm_of(sub)
            if found is not None:
                dims[f"{name}." if name else ""] = found[2]
    elif isinstance(module_or_state_dict, Mapping):
        state = dict(module_or_state_dict)
        if conv_transpose_layout == "channels_last" and conv_transpose_names is None:
            raise ValueError(
                "a state_dict has no module types, so its transposed-convolution weights "
                "cannot be told from convolution weights: pass conv_transpose_names=[...] "
                "(the dotted module names), or the module itself"
            )
    else:
        raise TypeError(
            "module_or_state_dict must be a torch.nn.Module or a state_dict mapping, got "
            f"{type(module_or_state_dict).__name__}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} must map a str to a torch.Tensor")

    # weight-norm pairs, by module prefix: (key of g, key of v)
    pairs: dict[str, tuple[str, str]] = {}
    for key in state:
        if key.endswith("weight_g") and key[: -len("g")] + "v" in state:
            prefix = key[: -len("weight_g")]
            if prefix == "" or prefix.endswith("."):
                pairs[prefix] = (key, prefix + "weight_v")
        elif key.endswith(_PARAM_WN[0]):
            prefix = key[: -len(_PARAM_WN[0])]
            if prefix + _PARAM_WN[1] in state:
                pairs[prefix] = (key, prefix + _PARAM_WN[1])
    taken = {k for pair in pairs.values() for k in pair}
    for key in state:
        if ".parametrizations." in f".{key}" and key not in taken:
            raise ValueError(
                f"state_dict entry {key!r} belongs to a parametrization other than weight "
                "norm (spectral_norm, orthogonal, ...): call "
                "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight') first"
            )
        if key.endswith("weight_orig") and key[: -len("orig")] + "u" in state:
            raise ValueError(
                f"state_dict entry {key!r} is a legacy spectral_norm: call "
                "torch.nn.utils.remove_spectral_norm(module) first"
            )

    weights = {f"{n}.weight" if n else "weight" for n in ct_names}
    if conv_transpose_layout == "channels_last":
        for n in ct_names:
            w_key = f"{n}.weight" if n else "weight"
            prefix = f"{n}." if n else ""
            if prefix in pairs:
                continue
            if w_key not in state or state[w_key].dim() < 3:
                raise ValueError(
                    f"conv_transpose_names has {n!r}, but {w_key!r} is not a transposed-"
                    "convolution weight of rank >= 3 in the state_dict"
                )

    flat: dict[str, Any] = {}
    for key, tensor in state.items():
        if key in taken:
            continue
        arr = _to_jax(tensor, key, dtype)
        if conv_transpose_layout == "channels_last" and key in weights:
            arr = _channels_last(arr)
        flat[key] = arr
    for prefix, (g_key, v_key) in pairs.items():
        g, v = state[g_key], state[v_key]
        dim = dims.get(prefix)
        if prefix not in dims:
            dim = _dim_from_shapes(g.shape, v.shape, g_key)
        last = conv_transpose_layout == "channels_last" and f"{prefix}weight" in weights
        if weight_norm == "fold":
            arr = _to_jax(_fold_weight_norm(g, v, dim), f"{prefix}weight", dtype)
            flat[f"{prefix}weight"] = _channels_last(arr) if last else arr
        else:
            for name, t in (("weight_g", g), ("weight_v", v)):
                arr = _to_jax(t, prefix + name, dtype)
                flat[prefix + name] = _channels_last(arr) if last else arr
    return _nest(flat)

"""Fuzzing jaxdeconv's arguments against PyTorch: same accepted set, same numbers.

Three property tests, each drawing the rank (1, 2 or 3):

* ``test_accepts_what_torch_accepts``: argument sets drawn from ranges that
  cross every validity boundary (output_padding at and past ``max(stride,
  dilation)``, paddings that crop to nothing, groups that do not divide the
  channels, a weight with the wrong ``C_in``, wrong-length tuples, ...), in every
  accepted argument form (int, tuple, list, 1-tuple), dtypes and both layouts.
  jaxdeconv accepts exactly what ``torch.nn.functional.conv_transpose{n}d``
  accepts, gives the same values where both accept, and otherwise raises
  ValueError/TypeError naming an argument.
* ``test_one_bad_argument_is_named``: a valid set with exactly one argument made
  invalid; torch rejects it and jaxdeconv's message names that argument and its
  value.
* ``test_output_size_matches_torch_module``: ``output_size`` against
  ``torch.nn.ConvTranspose{n}d.forward(x, output_size)``.

The deliberate differences from torch (README, "Errors and edge cases") are
asserted where they occur: an output size of 0 is an error (torch returns an
empty tensor on some backends, raises on others); integer inputs are refused
(torch computes them); mixed input/weight dtypes are promoted (torch refuses);
an empty batch is validated like any other (torch skips the output_padding,
dilation and output-size checks for it).

With the default ``ci`` hypothesis profile (25 examples per test) CI runs
3 x 25 = 75 examples; ``HYPOTHESIS_PROFILE=long`` runs 1000 per test (3000).
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import jaxdeconv

RANKS = (1, 2, 3)
METHODS = ("auto", *jaxdeconv.FORMULATIONS)
ARGUMENT_NAMES = (
    "input",
    "weight",
    "bias",
    "stride",
    "padding",
    "output_padding",
    "groups",
    "dilation",
    "output_size",
)
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
}
JAX_DTYPES = {
    "float32": jnp.float32,
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "int32": jnp.int32,
}
TOLERANCE = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}


def torch_fn(ndim):
    return getattr(torch.nn.functional, f"conv_transpose{ndim}d")


def jax_fn(ndim):
    return getattr(jaxdeconv, f"conv_transpose{ndim}d")


# -- drawing argument sets ---------------------------------------------------------------


def as_form(draw, values, *, allow_int=True):
    """One of the forms torch accepts for an int-tuple argument."""
    forms = ["tuple", "list", "tuple"]
    if len(set(values)) == 1:
        forms += ["int", "one"] if allow_int else ["one"]
    form = draw(st.sampled_from(forms))
    if form == "int":
        return values[0]
    if form == "one":
        return (values[0],)
    return list(values) if form == "list" else tuple(values)


def integer_valued(rng, shape, dtype):
    """Small integers as floats: every sum is exact in float32 and float16."""
    return rng.integers(-2, 3, size=shape).astype(np.float32).astype(dtype)


FAULTS = ("groups does not divide C_in", "weight C_in", "bias length", "wrong length")


@st.composite
def free_argument_sets(draw, ndim, *, faults=True):
    """Ranges that straddle the validity boundaries torch checks.

    Sizes, strides, paddings, output_padding and dilation are drawn freely, so
    output_padding >= max(stride, dilation) and output sizes < 1 occur by
    themselves; one set in four also gets one structural fault.
    """
    small = st.integers(1, 4 if ndim < 3 else 3)
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 2))
    cfg = {
        "ndim": ndim,
        "batch": draw(st.sampled_from([1, 2, 0])),
        "batched": draw(st.sampled_from([True, True, False])),
        "c_in": c_in,
        "w_c_in": c_in,
        "c_out_g": draw(st.integers(1, 2)),
        "groups": groups,
        "size": [draw(small) for _ in range(ndim)],
        "kernel": [draw(small) for _ in range(ndim)],
        "stride": [draw(st.integers(1, 4)) for _ in range(ndim)],
        "padding": [draw(st.sampled_from([0, 0, 1, 1, 2, 3])) for _ in range(ndim)],
        "output_padding": [draw(st.sampled_from([0] * 6 + [1, 2])) for _ in range(ndim)],
        "dilation": [draw(st.integers(1, 3)) for _ in range(ndim)],
        "bias": draw(st.sampled_from(["none", "ok"])),
        "dtype": draw(st.sampled_from(["float32"] * 9 + ["float16", "bfloat16", "int32"])),
        "mixed": draw(st.sampled_from([False] * 5 + [True])),
        "channels_last": draw(st.booleans()),
        "method": draw(st.sampled_from(METHODS)),
        "seed": draw(st.integers(0, 2**16)),
    }
    cfg["forms"] = {
        name: as_form(draw, cfg[name])
        for name in ("stride", "padding", "output_padding", "dilation")
    }
    fault = draw(st.sampled_from(["none"] * 12 + list(FAULTS))) if faults else "none"
    cfg["fault"] = fault
    if fault == "groups does not divide C_in":
        cfg["groups"] = c_in + 1
    elif fault == "weight C_in":
        cfg["w_c_in"] = c_in + draw(st.sampled_from([-1, 1])) * (c_in > 1 or 1)
    elif fault == "bias length":
        cfg["bias"] = "long"
    elif fault == "wrong length":
        name = draw(st.sampled_from(["stride", "padding", "output_padding", "dilation"]))
        cfg["forms"][name] = (*cfg[name], 1) if draw(st.booleans()) else ()
    return cfg


@st.composite
def valid_argument_sets(draw, ndim):
    """Argument sets torch and jaxdeconv both accept, by construction."""
    cfg = draw(free_argument_sets(ndim, faults=False))
    cfg.update(batch=max(cfg["batch"], 1), dtype="float32", mixed=False)
    op, pad = [], []
    for i, k, s, d in zip(cfg["size"], cfg["kernel"], cfg["stride"], cfg["dilation"]):
        o = draw(st.integers(0, max(s, d) - 1))
        op.append(o)
        pad.append(draw(st.integers(0, min(3, ((i - 1) * s + d * (k - 1) + o) // 2))))
    cfg.update(output_padding=op, padding=pad)
    cfg["forms"] = {
        name: as_form(draw, cfg[name])
        for name in ("stride", "padding", "output_padding", "dilation")
    }
    return cfg


def build(cfg):
    """Arrays (NumPy, torch layout) and keyword arguments for one argument set."""
    ndim, g = cfg["ndim"], cfg["groups"]
    rng = np.random.default_rng(cfg["seed"])
    x_shape = (cfg["c_in"], *cfg["size"])
    if cfg["batched"]:
        x_shape = (cfg["batch"], *x_shape)
    x = integer_valued(rng, x_shape, np.float32)
    w = integer_valued(rng, (cfg["w_c_in"], cfg["c_out_g"], *cfg["kernel"]), np.float32)
    n_bias = {"ok": 0, "long": 1}.get(cfg["bias"])
    n_bias = None if n_bias is None else cfg["c_out_g"] * max(g, 1) + n_bias
    b = None if n_bias is None else integer_valued(rng, (n_bias,), np.float32)
    kwargs = dict(cfg["forms"], groups=g)
    assert len(x.shape) in (ndim + 1, ndim + 2)
    return x, w, b, kwargs


def run_torch(cfg, x, w, b, kwargs, *, w_dtype=None):
    dtype = TORCH_DTYPES[cfg["dtype"]]
    tx = torch.from_numpy(x).to(dtype)
    tw = torch.from_numpy(w).to(w_dtype or dtype)
    tb = None if b is None else torch.from_numpy(b).to(dtype)
    try:
        if cfg["batched"] and tx.shape[0] == 0:
            # Deliberate difference: torch skips the output_padding, dilation and
            # output-size checks for an empty batch; jaxdeconv checks every batch size.
            # Judge the arguments by torch's verdict on a batch of one.
            torch_fn(cfg["ndim"])(tx.new_zeros((1, *tx.shape[1:])), tw, tb, **kwargs)
        return torch_fn(cfg["ndim"])(tx, tw, tb, **kwargs), None
    except (RuntimeError, TypeError, ValueError) as e:
        return None, e


def run_jax(cfg, x, w, b, kwargs, *, w_dtype=None):
    ndim = cfg["ndim"]
    dtype = JAX_DTYPES[cfg["dtype"]]
    jx, jw = jnp.asarray(x, dtype), jnp.asarray(w, w_dtype or dtype)
    jb = None if b is None else jnp.asarray(b, dtype)
    if cfg["channels_last"]:
        jx = jnp.moveaxis(jx, -ndim - 1, -1)
        jw = jnp.moveaxis(jw, (0, 1), (-2, -1))
    try:
        y = jax_fn(ndim)(
            jx, jw, jb, **kwargs, method=cfg["method"], channels_last=cfg["channels_last"]
        )
    except (ValueError, TypeError) as e:
        return None, e
    if cfg["channels_last"]:
        y = jnp.moveaxis(y, -1, -ndim - 1)
    return y, None


def assert_names_an_argument(error):
    message = str(error)
    assert any(re.search(rf"\b{name}\b", message) for name in ARGUMENT_NAMES), message
    assert re.search(r"\d", message), f"no value in the message: {message}"


def assert_same_values(y, ref, dtype):
    assert y.shape == tuple(ref.shape)
    assert y.dtype == JAX_DTYPES[dtype]
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(np.asarray(y, np.float32), ref.float().numpy(), rtol=tol, atol=tol)


# -- the tests ---------------------------------------------------------------------------


@given(data=st.data())
def test_accepts_what_torch_accepts(data):
    ndim = data.draw(st.sampled_from(RANKS))
    cfg = data.draw(free_argument_sets(ndim))
    x, w, b, kwargs = build(cfg)
    w_dtype = None
    if cfg["mixed"] and cfg["dtype"] != "int32":
        # Torch refuses mixed input/weight dtypes; jaxdeconv promotes. Judge the other
        # arguments with torch on matching dtypes, then check the promotion.
        w_dtype = "float32" if cfg["dtype"] != "float32" else "float16"
    ref, torch_error = run_torch(cfg, x, w, b, kwargs)
    y, error = run_jax(cfg, x, w, b, kwargs, w_dtype=w_dtype and JAX_DTYPES[w_dtype])

    event("torch accepts" if ref is not None else f"torch rejects: {str(torch_error)[:40]}")
    if cfg["dtype"] == "int32":
        # Deliberate difference: torch computes integer transposed convolutions.
        assert isinstance(error, TypeError) and "floating dtype" in str(error), error
        return
    if ref is not None and 0 in ref.shape[-ndim:]:
        # Deliberate difference: torch returns an empty tensor (some backends) where
        # jaxdeconv raises for an output size < 1.
        assert isinstance(error, ValueError) and "spatial size" in str(error), error
        return
    if ref is None:
        assert error is not None, f"torch rejects ({torch_error}) but jaxdeconv accepts"
        assert_names_an_argument(error)
        return
    assert error is None, f"torch accepts but jaxdeconv raises {error!r}"
    if w_dtype is not None:
        promoted = jnp.result_type(JAX_DTYPES[cfg["dtype"]], JAX_DTYPES[w_dtype])
        assert y.dtype == promoted
        _, mixed_error = run_torch(cfg, x, w, b, kwargs, w_dtype=TORCH_DTYPES[w_dtype])
        assert mixed_error is not None, "torch now accepts mixed dtypes: revisit the promotion"
        y = y.astype(JAX_DTYPES[cfg["dtype"]])  # integer values: exact in every dtype
    assert_same_values(y, ref, cfg["dtype"])


# name of the argument the message must give, how to break a valid set, what the message
# must contain as the value.
MUTATIONS = {
    "stride=0": ("stride", lambda c: c["forms"].update(stride=(0,) * c["ndim"]), "0"),
    "stride=-1": ("stride", lambda c: c["forms"].update(stride=-1), "-1"),
    "stride float": ("stride", lambda c: c["forms"].update(stride=2.0), "2.0"),
    "stride bool": ("stride", lambda c: c["forms"].update(stride=True), "True"),
    "stride length": (
        "stride",
        lambda c: c["forms"].update(stride=(1,) * (c["ndim"] + 1)),
        "1",
    ),
    "padding=-1": ("padding", lambda c: c["forms"].update(padding=-1), "-1"),
    "padding length": ("padding", lambda c: c["forms"].update(padding=(0,) * (c["ndim"] + 1)), "0"),
    "dilation=0": ("dilation", lambda c: c["forms"].update(dilation=0), "0"),
    "dilation=-2": ("dilation", lambda c: c["forms"].update(dilation=(-2,) * c["ndim"]), "-2"),
    "output_padding=-1": ("output_padding", lambda c: c["forms"].update(output_padding=-1), "-1"),
    "output_padding=max(stride, dilation)": (
        "output_padding",
        lambda c: c["forms"].update(
            output_padding=tuple(max(s, d) for s, d in zip(c["stride"], c["dilation"]))
        ),
        "output_padding=(",
    ),
    "groups=0": ("groups", lambda c: c.update(groups=0), "0"),
    "groups=-1": ("groups", lambda c: c.update(groups=-1), "-1"),
    "groups does not divide C_in": (
        "groups",
        lambda c: c.update(groups=c["c_in"] + 1),
        "groups=",
    ),
    "weight C_in": ("weight", lambda c: c.update(w_c_in=c["c_in"] + 1), "weight.shape=("),
    "weight C_out/groups=0": ("weight", lambda c: c.update(c_out_g=0), "weight.shape=("),
    "kernel size 0": (
        "weight",
        lambda c: c.update(kernel=[0, *c["kernel"][1:]]),
        "weight.shape=(",
    ),
    "input size 0": ("input", lambda c: c.update(size=[*c["size"][:-1], 0]), "input.shape=("),
    "bias length": ("bias", lambda c: c.update(bias="long"), "bias.shape=("),
}


@given(data=st.data())
def test_one_bad_argument_is_named(data):
    ndim = data.draw(st.sampled_from(RANKS))
    cfg = data.draw(valid_argument_sets(ndim))
    label = data.draw(st.sampled_from(sorted(MUTATIONS)))
    event(label)
    name, mutate, value_text = MUTATIONS[label]
    if label == "groups does not divide C_in":
        cfg["w_c_in"] = cfg["c_in"]
    mutate(cfg)
    x, w, b, kwargs = build(cfg)
    ref, _torch_error = run_torch(cfg, x, w, b, kwargs)
    assert ref is None, f"torch accepts {label}"
    y, error = run_jax(cfg, x, w, b, kwargs)
    assert y is None, f"jaxdeconv accepts {label}"
    message = str(error)
    assert isinstance(error, (ValueError, TypeError))
    assert re.search(rf"\b{name}\b", message), f"{label}: {message}"
    assert value_text in message, f"{label}: {message}"


@given(data=st.data())
def test_output_size_matches_torch_module(data):
    ndim = data.draw(st.sampled_from(RANKS))
    cfg = data.draw(valid_argument_sets(ndim))
    cfg["forms"]["output_padding"] = 0
    x, w, b, kwargs = build(cfg)
    smallest = [
        (i - 1) * s - 2 * p + d * (k - 1) + 1
        for i, s, p, d, k in zip(
            cfg["size"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["kernel"]
        )
    ]
    sizes = [m + data.draw(st.integers(0, s - 1)) for m, s in zip(smallest, cfg["stride"])]
    fault = data.draw(st.sampled_from(["none"] * 4 + ["too small", "too large", "length"]))
    event(f"output_size: {fault}")
    j = data.draw(st.integers(0, ndim - 1))
    if fault == "too small":
        sizes[j] = smallest[j] - 1
    elif fault == "too large":
        sizes[j] = smallest[j] + cfg["stride"][j]
    lead = [cfg["batch"], cfg["c_out_g"] * cfg["groups"]][-(x.ndim - ndim) :]
    forms = [sizes, tuple(sizes), [*lead, *sizes]]
    if fault == "length":
        forms = [[9, *lead, *sizes], [*lead[1:], *sizes] if len(lead) == 2 else [1, 1, *sizes]]
    output_size = data.draw(st.sampled_from(forms))
    module = getattr(torch.nn, f"ConvTranspose{ndim}d")(
        cfg["c_in"],
        cfg["c_out_g"] * cfg["groups"],
        cfg["kernel"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        groups=cfg["groups"],
        bias=b is not None,
        dilation=cfg["dilation"],
    )
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
        if b is not None:
            module.bias.copy_(torch.from_numpy(b))
        try:
            ref, torch_error = module(torch.from_numpy(x), output_size=output_size), None
        except (RuntimeError, ValueError, TypeError) as e:
            ref, torch_error = None, e
    kwargs.pop("output_padding")
    y, error = run_jax(cfg, x, w, b, {**kwargs, "output_size": output_size})
    event("torch accepts" if ref is not None else "torch rejects")
    if ref is not None and 0 in ref.shape[-ndim:]:
        assert isinstance(error, ValueError), error  # the empty-output difference
    elif ref is None:
        assert error is not None, f"torch rejects ({torch_error}) but jaxdeconv accepts"
        assert_names_an_argument(error)
    else:
        assert error is None, f"torch accepts but jaxdeconv raises {error!r}"
        assert_same_values(y, ref.detach(), "float32")

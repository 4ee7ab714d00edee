"""The public API: argument validation, aliases, dtypes, options."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdeconv
from jaxdeconv import conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d

X = np.ones((1, 4, 5, 5), np.float32)
W = np.ones((4, 3, 3, 3), np.float32)

BAD = [
    # (kwargs on top of X, W), exception, words the message must contain
    (dict(weight=np.ones((4, 3), np.float32)), ValueError, ["weight"]),
    (dict(input=np.ones((1, 4, 5, 5, 5), np.float32)), ValueError, ["input.shape", "rank"]),
    (dict(input=np.ones((4, 5), np.float32)), ValueError, ["input.shape"]),
    (dict(weight=np.ones((3, 3, 3, 3), np.float32)), ValueError, ["channels", "C_in=3"]),
    (dict(groups=3), ValueError, ["groups=3"]),
    (dict(groups=0), ValueError, ["groups=0"]),
    (dict(stride=0), ValueError, ["stride=0"]),
    (dict(stride=(1, -2)), ValueError, ["stride=(1, -2)"]),
    (dict(dilation=0), ValueError, ["dilation=0"]),
    (dict(padding=-1), ValueError, ["padding=-1"]),
    (dict(padding=((1, -1), (0, 0))), ValueError, ["padding"]),
    (dict(padding=(1, 2, 3)), ValueError, ["padding=(1, 2, 3)"]),
    (dict(padding="FULL"), ValueError, ["padding='FULL'"]),
    (dict(padding=((1, 2, 3), (0, 0))), ValueError, ["(lo, hi)"]),
    (dict(output_padding=2, stride=2), ValueError, ["output_padding=(2, 2)", "stride"]),
    (dict(output_padding=-1), ValueError, ["output_padding=-1"]),
    (dict(output_size=(20, 20), stride=2), ValueError, ["output_size=(20, 20)"]),
    (
        dict(output_size=(10, 10), output_padding=1, stride=2),
        ValueError,
        ["output_size", "not both"],
    ),
    (dict(padding=4), ValueError, ["output", "positive"]),
    (dict(stride=1.5), TypeError, ["stride"]),
    (dict(stride="2"), TypeError, ["stride"]),
    (dict(groups=2.0), TypeError, ["groups"]),
    (dict(input=np.ones((1, 4, 5, 5), np.int32)), TypeError, ["input", "floating", "int32"]),
    (dict(weight=np.ones((4, 3, 3, 3), bool)), TypeError, ["weight", "floating"]),
    (dict(bias=np.ones(4, np.float32)), ValueError, ["bias.shape=(4,)", "(3,)"]),
    (dict(bias=np.ones(3, np.int32)), TypeError, ["bias", "floating"]),
    (dict(method="fast"), ValueError, ["method='fast'"]),
    (dict(channels_last="yes"), TypeError, ["channels_last"]),
    (dict(input=np.ones((1, 4, 0, 5), np.float32)), ValueError, ["spatial size"]),
]


@pytest.mark.parametrize(("kw", "exc", "words"), BAD, ids=[str(b[0])[:60] for b in BAD])
def test_bad_input_is_rejected_with_a_clear_message(kw, exc, words):
    kw = dict(kw)
    x, w = kw.pop("input", X), kw.pop("weight", W)
    with pytest.raises(exc) as info:
        conv_transpose(x, w, **kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


TORCH_REJECTS = [
    dict(groups=3),
    dict(stride=0),
    dict(dilation=0),
    dict(padding=-1),
    dict(output_padding=-1),
    dict(output_padding=2, stride=2),
    dict(padding=4),
    dict(output_padding=(1, 3), stride=(2, 3)),
]


@pytest.mark.parametrize("kw", TORCH_REJECTS, ids=str)
def test_rejects_what_torch_rejects(kw):
    with pytest.raises((RuntimeError, ValueError)):
        torch.nn.functional.conv_transpose2d(torch.from_numpy(X), torch.from_numpy(W), **kw)
    with pytest.raises(ValueError):
        conv_transpose(X, W, **kw)


def test_output_padding_below_dilation_is_accepted_like_torch():
    kw = dict(stride=2, dilation=3, output_padding=2)
    want = torch.nn.functional.conv_transpose2d(torch.from_numpy(X), torch.from_numpy(W), **kw)
    np.testing.assert_allclose(conv_transpose(X, W, **kw), want.numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("fn", "n"), [(conv_transpose1d, 1), (conv_transpose2d, 2), (conv_transpose3d, 3)]
)
def test_ranked_aliases(fn, n, rng):
    x = rng.standard_normal((2, 2, *(4,) * n)).astype(np.float32)
    w = rng.standard_normal((2, 3, *(3,) * n)).astype(np.float32)
    np.testing.assert_array_equal(fn(x, w, None, 2, 1), conv_transpose(x, w, None, 2, 1))
    np.testing.assert_array_equal(fn(x[0], w, None, 2, 1), conv_transpose(x[0], w, None, 2, 1))
    other = conv_transpose2d if n != 2 else conv_transpose3d
    with pytest.raises(ValueError, match=r"conv_transpose\dd expects a weight of rank"):
        other(x, w)


def test_signature_mirrors_torch_and_options_are_keyword_only():
    torch_order = [
        "input",
        "weight",
        "bias",
        "stride",
        "padding",
        "output_padding",
        "groups",
        "dilation",
    ]
    for fn in (conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d):
        params = inspect.signature(fn).parameters
        positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == torch_order, fn.__name__
        for name, p in params.items():
            if name not in torch_order:
                assert p.kind is p.KEYWORD_ONLY, (fn.__name__, name)


def test_every_public_function_keeps_jax_options_keyword_only():
    jax_options = {"method", "precision", "preferred_element_type", "channels_last", "output_size"}
    for name in jaxdeconv.__all__:
        obj = getattr(jaxdeconv, name)
        if not inspect.isfunction(obj) or "input" not in inspect.signature(obj).parameters:
            continue  # the rule is for functions that mirror torch's (input, weight, ...)
        for pname, p in inspect.signature(obj).parameters.items():
            if pname in jax_options:
                assert p.kind is p.KEYWORD_ONLY, (name, pname)


def test_dtype_follows_input_and_preferred_element_type(rng):
    x = jnp.asarray(rng.standard_normal((1, 2, 3, 3)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((2, 2, 2, 2)), jnp.bfloat16)
    assert conv_transpose(x, w).dtype == jnp.bfloat16
    for method in jaxdeconv.FORMULATIONS:
        y = conv_transpose(x, w, method=method, preferred_element_type=jnp.float32)
        assert y.dtype == jnp.float32, method


def test_mixed_float_dtypes_promote(rng):
    x = jnp.asarray(rng.standard_normal((1, 2, 3, 3)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((2, 2, 2, 2)), jnp.float32)
    assert conv_transpose(x, w).dtype == jnp.float32


def test_accepts_lists_and_numpy_scalars():
    x = [[[1.0, 2.0, 3.0]]]
    w = [[[1.0, -1.0]]]
    y = conv_transpose(x, w, stride=np.int64(2), padding=np.int32(0))
    np.testing.assert_array_equal(y, [[[1.0, -1.0, 2.0, -2.0, 3.0, -3.0]]])


@pytest.mark.parametrize("name", ["stride", "padding", "output_padding", "groups", "dilation"])
def test_traced_static_argument_says_mark_it_static(name):
    def f(v):
        return conv_transpose(X, W, **{name: v})

    with pytest.raises(TypeError, match="static"):
        jax.jit(f)(1)


def test_a_formulation_registered_at_run_time_is_a_method_everywhere(rng):
    """The registry is read live: conv_transpose, the plan, the layers and sharding see it."""
    import jaxdeconv.equinox
    import jaxdeconv.sharding
    from jaxdeconv.formulations import FORMULATIONS, register

    calls = []

    def mine(x, w, spec, *, precision=None, preferred_element_type=None):
        calls.append(spec)
        return FORMULATIONS["lhs_dilated"](
            x, w, spec, precision=precision, preferred_element_type=preferred_element_type
        )

    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    want = jaxdeconv.numpy_conv_transpose(x, w, stride=2)
    with pytest.raises(ValueError, match="method='mine' is not one of"):
        jaxdeconv.conv_transpose(x, w, stride=2, method="mine")
    register("mine", mine)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register("mine", mine)
        assert jaxdeconv.plan(x, w, stride=2, method="mine").formulation == "mine"
        for y in (
            jaxdeconv.conv_transpose(x, w, stride=2, method="mine"),
            jaxdeconv.sharding.conv_transpose(x, w, stride=2, method="mine"),
        ):
            np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
        layer = jaxdeconv.equinox.ConvTranspose(4, 3, (3,), 2, method="mine", key=jax.random.key(0))
        assert layer(x).shape == want.shape
        assert len(calls) == 3
    finally:
        del FORMULATIONS["mine"]
    with pytest.raises(ValueError, match="name='auto'"):
        register("auto", mine)


def test_plan_says_what_runs_and_can_be_forced(rng):
    x = jax.ShapeDtypeStruct((8, 64, 16, 16), np.float32)
    w = jax.ShapeDtypeStruct((64, 32, 4, 4), np.float32)
    cpu = jaxdeconv.plan(x, w, stride=2, padding=1, backend="cpu", on_mesh=False)
    assert cpu.formulation == "phase" and cpu.kernels.lowering == "gemm" and cpu.reason
    assert jaxdeconv.plan(x, w, stride=2, padding=1, backend="gpu").label == "lhs_dilated"
    mesh = jaxdeconv.plan(x, w, stride=2, padding=1, groups=2, on_mesh=True)
    assert (mesh.formulation, mesh.per_group) == ("lhs_dilated", True)
    forced = jaxdeconv.plan(x, w, stride=2, padding=1, strategy="convs")
    assert forced.kernels.lowering == "conv" and "strategy" in forced.reason
    with pytest.raises(ValueError, match="strategy='cols' needs the GEMM lowering"):
        jaxdeconv.plan(x, w, stride=2, padding=1, on_mesh=True, method="phase", strategy="cols")
    with pytest.raises(ValueError, match="strategy='bogus' is not one of"):
        jaxdeconv.plan(x, w, stride=2, padding=1, strategy="bogus")
    # a plan passed back as method= runs exactly that plan
    xa = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    wa = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    want = jaxdeconv.numpy_conv_transpose(xa, wa, stride=2, padding=1)
    for strategy in ("cols", "phase", "convs"):
        p = jaxdeconv.plan(xa, wa, stride=2, padding=1, strategy=strategy)
        y = jaxdeconv.conv_transpose(xa, wa, stride=2, padding=1, method=p)
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    cols = jaxdeconv.plan(xa, wa, stride=2, padding=1, strategy="cols")
    # grouped channels-last layers run the GEMM lowering group by group
    xl, wl = np.moveaxis(xa, 1, -1), np.moveaxis(wa[:, :1], (0, 1), (-2, -1))
    kw = dict(stride=2, padding=1, groups=2, channels_last=True)
    grouped = jaxdeconv.plan(xl, wl, **kw, strategy="cols")
    want = jaxdeconv.numpy_conv_transpose(xa, wa[:, :1], stride=2, padding=1, groups=2)
    y = jaxdeconv.conv_transpose(xl, wl, **kw, method=grouped)
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), -1, 1), want, rtol=1e-5, atol=1e-5)
    # an empty batch has no GEMM lowering: a GEMM plan refuses to run there
    with pytest.raises(ValueError, match="GEMM lowering cannot run this layer"):
        jaxdeconv.conv_transpose(xa[:0], wa, stride=2, padding=1, method=cols)
    # GEMM kernels under another lowering would skip that check: refused when built
    with pytest.raises(ValueError, match=r"need lowering='gemm'.*got lowering='conv'"):
        jaxdeconv.PhaseKernels("conv", "gemm_cols_nhwc", "convs", "convs")

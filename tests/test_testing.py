"""Tests of jaxdeconv.testing: its references, its tolerances, and that its checks catch bugs.

The cross-check helpers run under ``chex.variants``: with and without jit, on
device, and under pmap (conftest gives 8 CPU devices).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from absl.testing import parameterized

import jaxdeconv
from jaxdeconv import testing

assert jax.device_count() > 1, "conftest should give 8 CPU devices for the pmap variant"

VARIANTS = dict(with_jit=True, without_jit=True, with_device=True, with_pmap=True)


class CrossCheckVariantsTest(chex.TestCase):
    @chex.variants(**VARIANTS)
    @parameterized.named_parameters(
        ("2d", (1, 4, 3, 2), (4, 1, 2, 2), dict(stride=2, groups=2, dilation=(2, 1)), True),
    )
    def test_formulations_agree(self, x_shape, w_shape, kwargs, channels_last):
        if channels_last:
            x_shape = (x_shape[0], *x_shape[2:], x_shape[1])
            w_shape = (*w_shape[2:], *w_shape[:2])
        spec = jaxdeconv.make_spec(x_shape, w_shape, **kwargs, channels_last=channels_last)
        x, w, _ = testing.random_arrays(spec, seed=3)
        results = testing.check_formulations_agree(x, w, spec, transform=self.variant)
        self.assertEqual(sorted(results), sorted(jaxdeconv.FORMULATIONS))
        for out in results.values():
            chex.assert_shape(out["value"], spec.output_shape)
            chex.assert_trees_all_equal_shapes(out["vjp"], (x, w))

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_every_formulation_is_the_transpose_of_forward_conv(self):
        spec = jaxdeconv.make_spec(
            (1, 2, 3, 2),
            (2, 2, 2, 3),
            stride=(2, 1),
            padding=((1, 0), (0, 1)),
            output_padding=(1, 0),
        )
        _, w, _ = testing.random_arrays(spec, seed=4)
        y = jax.ShapeDtypeStruct(spec.output_shape, jnp.float32)
        for fn in jaxdeconv.FORMULATIONS.values():
            testing.check_transpose_pair(
                lambda y_: testing.forward_conv(y_, w, spec, precision="highest"),
                lambda x_, fn=fn: fn(x_, jnp.asarray(w), spec, precision="highest"),
                y,
                transform=self.variant,
            )


# The checks catch what they claim to catch.

SPEC = jaxdeconv.make_spec((2, 2, 4), (2, 3, 3), stride=2, padding=1, output_padding=1)


def unflipped(x, w, spec, **kw):
    """The haiku bug: the kernel is not flipped."""
    return jaxdeconv.FORMULATIONS["lhs_dilated"](x, jnp.flip(w, axis=-1), spec, **kw)


def forgot_output_padding(x, w, spec, **kw):
    """Right size, but the output_padding column left at zero."""
    return jaxdeconv.FORMULATIONS["vjp"](x, w, spec, **kw).at[..., -1].set(0.0)


@jax.custom_jvp
def _wrong_tangent(x, w):
    return jaxdeconv.FORMULATIONS["vjp"](x, w, SPEC)


@_wrong_tangent.defjvp
def _wrong_tangent_jvp(primals, tangents):
    x, w = primals
    tx, tw = tangents
    f = jaxdeconv.FORMULATIONS["vjp"]
    return f(x, w, SPEC), f(tx, w, SPEC) - f(x, tw, SPEC)  # sign error on the weight term


def wrong_gradient(x, w, spec, **kw):
    """Correct values, wrong derivatives (both modes, through a custom_jvp)."""
    del spec, kw
    return _wrong_tangent(x, w)


@pytest.mark.parametrize(
    "broken, what",
    [(unflipped, "value"), (forgot_output_padding, "value"), (wrong_gradient, "VJP d/dweight")],
)
def test_check_formulations_agree_catches_bugs(broken, what):
    x, w, _ = testing.random_arrays(SPEC)
    good = {"vjp": jaxdeconv.FORMULATIONS["vjp"]}
    testing.check_formulations_agree(x, w, SPEC, formulations=good)
    with pytest.raises(AssertionError, match=f"formulation 'broken', {what}"):
        testing.check_formulations_agree(x, w, SPEC, formulations={**good, "broken": broken})


def test_check_transpose_pair_catches_wrong_partners():
    _, w, _ = testing.random_arrays(SPEC)
    y = jax.ShapeDtypeStruct(SPEC.output_shape, jnp.float32)

    def forward(y_):
        return testing.forward_conv(y_, w, SPEC)

    def transposed(x_):
        return jaxdeconv.FORMULATIONS["vjp"](x_, jnp.asarray(w), SPEC)

    testing.check_transpose_pair(forward, transposed, y)
    with pytest.raises(AssertionError, match="adjoint identity"):
        testing.check_transpose_pair(forward, lambda x_: unflipped(x_, w, SPEC), y)
    with pytest.raises(AssertionError, match="adjoint identity"):
        testing.check_transpose_pair(forward, lambda x_: 2.0 * transposed(x_), y)


def test_tolerances():
    assert testing.TOLERANCES == {
        "float64": (1e-10, 1e-10),
        "float32": (1e-5, 1e-5),
        "bfloat16": (2e-2, 2e-2),
        "float16": (4e-3, 4e-3),
    }
    assert testing.tolerance(jnp.bfloat16) == {"rtol": 2e-2, "atol": 2e-2}
    assert testing.tolerance(np.float32, scale=3.0) == pytest.approx({"rtol": 1e-5, "atol": 3e-5})
    with pytest.raises(ValueError, match=r"dtype=.*int32.* has no documented tolerance"):
        testing.tolerance(np.int32)
    with pytest.raises(TypeError, match="dtype='nope' is not a dtype"):
        testing.tolerance("nope")


def test_assert_close():
    testing.assert_close(np.float32(1.0) + 5e-6, 1.0)
    testing.assert_close({"a": jnp.bfloat16(3.0)}, {"a": 3.05})  # bfloat16: looser
    with pytest.raises(AssertionError):
        testing.assert_close({"a": jnp.float32(3.0)}, {"a": 3.05})
    with pytest.raises(AssertionError):  # no broadcasting
        testing.assert_close(np.ones(3), np.ones((1, 3)))
    with pytest.raises(AssertionError, match="leaf 1"):
        testing.assert_close((1.0, 2.0), (1.0, 2.1))
    # atol scales with the reference's magnitude: 1e-5 relative at 1000.
    testing.assert_close(np.float32(1000.009), 1000.0)
    with pytest.raises(AssertionError):
        testing.assert_close(np.float32(1000.03), 1000.0)


TORCH_CONV_CASES = [
    ((2, 2, 9), (3, 2, 3), dict(stride=2, padding=1)),
    ((1, 6, 7, 6), (4, 3, 2, 3), dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2)),
    ((1, 2, 5, 4, 5), (2, 2, 3, 2, 2), dict(stride=2, padding=1, dilation=1)),
]


@pytest.mark.parametrize("y_shape, w_shape, kwargs", TORCH_CONV_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_conv_is_torch_conv(y_shape, w_shape, kwargs, channels_last):
    """forward_conv(y, w) is torch.nn.functional.conv{n}d(y, w, ...) with the same weight."""
    n = len(w_shape) - 2
    rng = np.random.default_rng(5)
    y = rng.standard_normal(y_shape)
    w = rng.standard_normal(w_shape)
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}.get(
        n, torch.nn.functional.conv3d
    )
    want = conv(torch.tensor(y), torch.tensor(w), None, **kwargs).numpy()
    # The transposed conv whose output is y-sized: input = want's size.
    x_shape, ws = want.shape, w_shape
    if channels_last:
        y, w, want = (
            np.moveaxis(y, 1, -1),
            np.moveaxis(w, (0, 1), (-2, -1)),
            np.moveaxis(want, 1, -1),
        )
        x_shape, ws = want.shape, w.shape
    spatial = y.shape[1:-1] if channels_last else y.shape[2:]
    spec = jaxdeconv.make_spec(
        x_shape, ws, **kwargs, output_size=spatial, channels_last=channels_last
    )
    assert spec.output_shape == y.shape
    got = testing.forward_conv(y.astype(np.float32), w.astype(np.float32), spec)
    testing.assert_close(got, want)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=2, padding=1, output_padding=1),
        dict(stride=(1, 2), padding=(0, 1), dilation=(2, 1), groups=2),
    ],
)
def test_numpy_vjp_is_torch_autograd(kwargs):
    spec = jaxdeconv.make_spec((2, 4, 3, 3), (4, 2, 2, 3), **kwargs)
    x, w, b = testing.random_arrays(spec, dtype=np.float64, seed=6)
    ct = np.random.default_rng(7).standard_normal(spec.output_shape)
    value, grads = testing.torch_reference(x, w, b, **kwargs, cotangent=ct)
    testing.assert_close(testing.numpy_reference(x, w, spec, b), value)
    testing.assert_close(testing.numpy_conv_transpose_vjp(x, w, ct, spec), grads)


def test_numpy_vjp_is_the_dense_definition():
    """Where torch cannot go (SAME, per-side, channels-last): against the dense Jacobian."""
    spec = jaxdeconv.make_spec(
        (1, 3, 2, 2), (2, 2, 2, 2), stride=2, padding=((1, 0), (0, 2)), channels_last=True
    )
    x, w, _ = testing.random_arrays(spec, dtype=np.float64, seed=8)
    ct = np.random.default_rng(9).standard_normal(spec.output_shape)
    dx, dw, db = testing.numpy_conv_transpose_vjp(x, w, ct, spec)

    def basis(shape, i):
        e = np.zeros(int(np.prod(shape)))
        e[i] = 1.0
        return e.reshape(shape)

    want_dx = [
        np.vdot(ct, testing.numpy_reference(basis(x.shape, i), w, spec)) for i in range(x.size)
    ]
    want_dw = [
        np.vdot(ct, testing.numpy_reference(x, basis(w.shape, i), spec)) for i in range(w.size)
    ]
    np.testing.assert_allclose(dx.ravel(), want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw.ravel(), want_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, ct.sum(axis=(0, 1, 2)))

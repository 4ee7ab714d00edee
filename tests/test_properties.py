"""Property tests: random configurations, every formulation, values and gradients.

Hypothesis draws a rank (1-3), channels, groups, stride, padding (PyTorch's
int or per-dimension ints, per-side pairs, SAME, VALID), output_padding,
dilation, layout and bias. Each example is checked for every formulation in
``jaxdeconv.FORMULATIONS`` against the NumPy definition (values, VJP w.r.t.
input, weight and bias) and, where PyTorch can express it, against torch and
torch.autograd.

CI runs the ``ci`` profile of tests/conftest.py: 25 examples per test,
derandomized. ``HYPOTHESIS_PROFILE=long`` runs 1000.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

import jaxdeconv
from jaxdeconv import testing

PADDING_KINDS = ("int", "per_dim", "pairs", "SAME", "VALID")


@st.composite
def configurations(draw):
    n = draw(st.integers(1, 3))

    def dims(lo, hi):
        return tuple(draw(st.integers(lo, hi)) for _ in range(n))

    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    batch = draw(st.integers(1, 2))
    in_size = dims(1, {1: 5, 2: 4, 3: 3}[n])
    kernel = dims(1, 3)
    stride = dims(1, 3)
    dilation = dims(1, 2)
    kind = draw(st.sampled_from(PADDING_KINDS))
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "per_dim":
        padding = dims(0, 2)
    elif kind == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n))
    else:
        padding = kind
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    if draw(st.booleans()):
        output_padding = 0
    channels_last = draw(st.booleans())
    bias = draw(st.booleans())
    x_shape = (batch, c_in, *in_size)
    w_shape = (c_in, c_out // groups, *kernel)
    if channels_last:
        x_shape = (batch, *in_size, c_in)
        w_shape = (*kernel, c_in, c_out // groups)
    kwargs = dict(
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )
    try:
        spec = jaxdeconv.make_spec(x_shape, w_shape, **kwargs, channels_last=channels_last)
    except ValueError:
        assume(False)
    return spec, kwargs, channels_last, bias, kind in ("int", "per_dim")


def _all_formulations(methods, kwargs, channels_last):
    """One jitted function: value and VJP (x, w, b) of every formulation.

    (Forward mode is checked in test_autodiff.py, test_dtypes.py and by
    ``jaxdeconv verify``; leaving it out here keeps each example's compile small.)
    """

    @jax.jit
    def run(x, w, b, ct):
        out = {}
        for method in methods:

            def f(x_, w_, b_, method=method):
                return jaxdeconv.conv_transpose(
                    x_,
                    w_,
                    b_,
                    **kwargs,
                    method=method,
                    channels_last=channels_last,
                    precision="highest",
                )

            y, pullback = jax.vjp(f, x, w, b)
            out[method] = dict(value=y, vjp=pullback(ct))
        return out

    return run


@given(config=configurations(), seed=st.integers(0, 2**16))
def _check_values_and_gradients(methods, config, seed):
    spec, kwargs, channels_last, use_bias, torch_expressible = config
    note(f"spec={spec}, kwargs={kwargs}")
    x, w, b = testing.random_arrays(spec, seed=seed)
    rng = np.random.default_rng(seed + 1)
    ct = rng.standard_normal(spec.output_shape).astype(np.float32)
    if not use_bias:
        b = np.zeros_like(b)
    got = _all_formulations(methods, kwargs, channels_last)(x, w, b, ct)

    want = testing.numpy_reference(x, w, spec, b)
    want_vjp = testing.numpy_conv_transpose_vjp(x, w, ct, spec)
    if torch_expressible:
        value, grads = testing.torch_reference(
            x, w, b, **kwargs, cotangent=ct, channels_last=channels_last
        )
        testing.assert_close(want, value, err_msg="NumPy definition vs torch")
        testing.assert_close(want_vjp, grads, err_msg="NumPy VJP vs torch.autograd")
    for method, out in got.items():
        testing.assert_close(out["value"], want, err_msg=f"{method}: value")
        testing.assert_close(out["vjp"], want_vjp, err_msg=f"{method}: VJP (dx, dw, db)")


@pytest.mark.slow
def test_every_formulation_on_random_configurations():
    _check_values_and_gradients(tuple(jaxdeconv.FORMULATIONS))


@given(config=configurations())
def test_output_shape_is_the_formula(config):
    """No compilation: eval_shape of every formulation equals the spec and the formula."""
    spec, kwargs, channels_last, _, _ = config
    x = jax.ShapeDtypeStruct(spec.input_shape, jnp.float32)
    w = jax.ShapeDtypeStruct(spec.weight_shape, jnp.float32)
    padding = kwargs["padding"]
    op = np.broadcast_to(kwargs["output_padding"], (spec.ndim,))
    k_eff = [d * (k - 1) + 1 for d, k in zip(spec.dilation, spec.kernel_size)]
    if padding == "SAME":
        out = tuple(i * s + o for i, s, o in zip(spec.input_size, spec.stride, op))
    elif padding == "VALID":
        out = tuple(
            i * s + max(ke - s, 0) + o
            for i, s, ke, o in zip(spec.input_size, spec.stride, k_eff, op)
        )
    else:
        pairs = (
            padding
            if isinstance(padding, tuple) and isinstance(padding[0], tuple)
            else [(p, p) for p in np.broadcast_to(padding, (spec.ndim,))]
        )
        out = tuple(
            (i - 1) * s - lo - hi + d * (k - 1) + o + 1
            for i, s, (lo, hi), d, k, o in zip(
                spec.input_size, spec.stride, pairs, spec.dilation, spec.kernel_size, op
            )
        )
    assert spec.output_size == tuple(out)
    for method in jaxdeconv.FORMULATIONS:
        y = jax.eval_shape(
            lambda x_, w_, m=method: jaxdeconv.conv_transpose(
                x_, w_, **kwargs, method=m, channels_last=channels_last
            ),
            x,
            w,
        )
        assert y.shape == spec.output_shape, method

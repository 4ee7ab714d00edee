"""jaxdeconv under jit: misuse of static arguments, retracing, the zero-insertion bound."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeconv
from jaxdeconv import conv_transpose
from jaxdeconv.formulations import lax_based as _api

METHODS = ("auto", *jaxdeconv.FORMULATIONS)
X = jnp.ones((1, 2, 4, 4))
W = jnp.ones((2, 3, 3, 3))
STATIC = ("stride", "padding", "output_padding", "groups", "dilation", "output_size")
STATIC_ARGNAMES = (*STATIC, "method", "channels_last")

# -- a traced value where a static one is needed ------------------------------------------


@pytest.mark.parametrize(
    ("name", "traced"),
    [
        ("stride", jnp.int32(2)),
        ("stride", jnp.array([2, 2])),
        ("padding", jnp.int32(1)),
        ("padding", jnp.array([[1, 1], [0, 0]])),
        ("output_padding", jnp.int32(1)),
        ("groups", jnp.int32(1)),
        ("dilation", jnp.array([1, 2])),
        ("output_size", jnp.array([9, 9])),
        ("output_size", jnp.int32(9)),
        ("method", jnp.int32(0)),
        ("channels_last", jnp.bool_(False)),
    ],
)
def test_traced_static_argument_is_a_type_error_that_says_mark_it_static(name, traced):
    kwargs = {"stride": 2} if name in ("output_padding", "output_size") else {}

    def f(v):
        return conv_transpose(X, W, **{**kwargs, name: v})

    with pytest.raises(TypeError, match=rf"^{name} got a traced value .*mark it static"):
        jax.jit(f)(traced)


@pytest.mark.parametrize("name", ["stride", "padding", "output_padding", "dilation", "output_size"])
def test_traced_element_of_a_static_sequence_is_named(name):
    def f(v):
        value = ((v, 1), (1, 1)) if name == "padding" else (v, 1)
        stride = {} if name == "stride" else {"stride": 2}
        return conv_transpose(X, W, **{**stride, name: value})

    with pytest.raises(TypeError, match=rf"^{name} got a traced value .*static_argnames"):
        jax.jit(f)(1)


def test_static_argnames_and_closures_both_work():
    jitted = jax.jit(conv_transpose, static_argnames=STATIC_ARGNAMES)
    eager = conv_transpose(X, W, stride=(2, 2), padding=1, output_size=(8, 8))
    y = jitted(X, W, stride=(2, 2), padding=1, output_size=(8, 8), method="zero_insertion")
    np.testing.assert_allclose(y, eager, rtol=1e-6)
    closure = jax.jit(lambda x: conv_transpose(x, W, stride=2, padding=1, output_padding=1))
    np.testing.assert_allclose(closure(X), eager, rtol=1e-6)


# -- retracing ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_same_shapes_do_not_retrace(method):
    traces = []

    @jax.jit
    def f(x, w, b):
        traces.append(x.shape)
        return conv_transpose(x, w, b, stride=2, padding=1, output_padding=1, method=method)

    b = jnp.zeros(3)
    for scale in (1.0, 2.0, 3.0):
        f(X * scale, W, b).block_until_ready()
    assert len(traces) == 1
    f(jnp.ones((2, 2, 5, 5)), W, b)
    assert len(traces) == 2
    f(jnp.ones((2, 2, 5, 5)), W, b)
    assert len(traces) == 2
    assert f._cache_size() == 2


def test_equal_static_arguments_hit_the_cache():
    traces = []

    def fn(*args, **kwargs):  # a fresh function: jit caches are shared per function
        traces.append(kwargs)
        return conv_transpose(*args, **kwargs)

    jitted = jax.jit(fn, static_argnames=STATIC_ARGNAMES)
    for _ in range(3):
        # Fresh but equal tuples each time: hashed by value, one trace.
        jitted(X, W, stride=(2, 2), padding=((1, 1), (0, 0)), output_size=(8, 10))
    assert len(traces) == 1
    assert jitted._cache_size() == 1
    jitted(X, W, stride=(2, 2), padding=((1, 1), (0, 0)), output_size=(7, 10))
    assert len(traces) == 2


def test_spec_is_hashable_and_equal_for_equal_arguments():
    a = jaxdeconv.make_spec((1, 2, 4, 4), (2, 3, 3, 3), [2, 2], np.int64(1), (1,), 1, 1)
    b = jaxdeconv.make_spec((1, 2, 4, 4), (2, 3, 3, 3), 2, 1, 1, np.int32(1), (1, 1))
    assert a == b
    assert hash(a) == hash(b)


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        if "ompil" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.mark.parametrize("method", METHODS)
def test_repeated_eager_calls_do_not_recompile(method):
    x2 = X * 2.0
    conv_transpose(X, W, stride=2, padding=1, method=method).block_until_ready()
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            conv_transpose(x2, W, stride=2, padding=1, method=method).block_until_ready()
    finally:
        logger.removeHandler(handler)
    assert handler.messages == []


# -- the zero-insertion memory bound --------------------------------------------------------


def _needed_bytes(x_shape, w_shape, stride, itemsize=4, dilation=1, padding=0):
    """Independent count: zero-inserted, padded input plus dilated kernel."""
    n, c, *size = x_shape
    _, c_out_g, *kernel = w_shape
    k_eff = [dilation * (k - 1) + 1 for k in kernel]
    inserted = [(i - 1) * stride + 1 + 2 * max(ke - 1 - padding, 0) for i, ke in zip(size, k_eff)]
    return (n * c * int(np.prod(inserted)) + c * c_out_g * int(np.prod(k_eff))) * itemsize


def test_zero_insertion_default_bound_is_one_gib(monkeypatch):
    monkeypatch.delenv(_api.ZERO_INSERTION_ENV, raising=False)
    assert _api.ZERO_INSERTION_MAX_BYTES == 2**30
    assert _api.zero_insertion_max_bytes() == 2**30


def test_zero_insertion_refuses_tensors_over_the_bound(monkeypatch):
    x, w = jnp.ones((2, 3, 16, 16)), jnp.ones((3, 2, 3, 3))
    needed = _needed_bytes(x.shape, w.shape, stride=8)
    assert needed == (2 * 3 * 125**2 + 3 * 2 * 9) * 4
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, str(needed))
    assert conv_transpose(x, w, stride=8, method="zero_insertion").shape == (2, 2, 123, 123)
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, str(needed - 1))
    message = (
        rf'method="zero_insertion" would materialize {needed} bytes .* spatial size '
        rf"\(125, 125\) .* over the bound of {needed - 1} bytes.*{_api.ZERO_INSERTION_ENV}"
    )
    with pytest.raises(ValueError, match=message):
        conv_transpose(x, w, stride=8, method="zero_insertion")
    with pytest.raises(ValueError, match=message):  # under jit too, at trace time
        jax.jit(lambda x: conv_transpose(x, w, stride=8, method="zero_insertion"))(x)
    # Formulations that insert no zeros are not bounded.
    for method in ("auto", "vjp", "lhs_dilated"):
        assert conv_transpose(x, w, stride=8, method=method).shape == (2, 2, 123, 123)


def test_zero_insertion_bound_counts_the_dtype_and_dilation(monkeypatch):
    x, w = jnp.ones((1, 2, 5), jnp.float16), jnp.ones((2, 3, 4), jnp.float16)
    needed = _needed_bytes(x.shape, w.shape, stride=3, itemsize=2, dilation=2, padding=1)
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, str(needed))
    conv_transpose(x, w, stride=3, dilation=2, padding=1, method="zero_insertion")
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, str(needed - 1))
    with pytest.raises(ValueError, match=f"materialize {needed} bytes"):
        conv_transpose(x, w, stride=3, dilation=2, padding=1, method="zero_insertion")


def test_zero_insertion_bound_can_be_lifted_or_changed_in_code(monkeypatch):
    x, w = jnp.ones((1, 1, 8)), jnp.ones((1, 1, 2))
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, "none")
    assert _api.zero_insertion_max_bytes() is None
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, "0")
    with pytest.raises(ValueError, match="over the bound of 0 bytes"):
        conv_transpose(x, w, method="zero_insertion")
    monkeypatch.delenv(_api.ZERO_INSERTION_ENV)
    monkeypatch.setattr(_api, "ZERO_INSERTION_MAX_BYTES", 16)
    with pytest.raises(ValueError, match="over the bound of 16 bytes"):
        conv_transpose(x, w, method="zero_insertion")


@pytest.mark.parametrize("value", ["-1", "1GB", "1.5"])
def test_zero_insertion_bound_rejects_a_bad_environment_value(monkeypatch, value):
    monkeypatch.setenv(_api.ZERO_INSERTION_ENV, value)
    with pytest.raises(ValueError, match=rf"{_api.ZERO_INSERTION_ENV}='{value}' must be"):
        conv_transpose(jnp.ones((1, 1, 3)), jnp.ones((1, 1, 2)), method="zero_insertion")

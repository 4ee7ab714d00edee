"""Edge cases, each named, against PyTorch wherever PyTorch has an answer.

Where jaxdeconv deliberately differs from torch (README, "Errors and edge
cases"), the test asserts both sides, so a change in torch shows up here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cases import torch_conv_transpose

import jaxdeconv
from jaxdeconv import conv_transpose, conv_transpose1d, conv_transpose2d

METHODS = ("auto", *jaxdeconv.FORMULATIONS)


def assert_matches_torch(x, w, b=None, *, methods=METHODS, **kwargs):
    ref = torch_conv_transpose(x, w, b, **kwargs)
    for method in methods:
        y = conv_transpose(x, w, b, **kwargs, method=method)
        assert y.shape == ref.shape, method
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5, err_msg=method)
    return ref


@pytest.fixture
def arrays(rng):
    def make(*shape, dtype=np.float32):
        return rng.standard_normal(shape).astype(dtype)

    return make


# -- sizes ----------------------------------------------------------------------------------


def test_batch_of_zero(arrays):
    ref = assert_matches_torch(arrays(0, 4, 3, 5), arrays(4, 3, 2, 3), arrays(3), stride=2)
    assert ref.shape == (0, 3, 6, 11)


def test_one_by_one_input(arrays):
    ref = assert_matches_torch(arrays(2, 3, 1, 1), arrays(3, 2, 3, 3), arrays(2), stride=2)
    assert ref.shape == (2, 2, 3, 3)


def test_kernel_larger_than_output(arrays):
    # A 5x5 kernel on a 1x1 input, cropped by padding=2 to a 1x1 output: only the centre tap.
    x, w = arrays(1, 2, 1, 1), arrays(2, 3, 5, 5)
    ref = assert_matches_torch(x, w, padding=2)
    assert ref.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(ref[0, :, 0, 0], x[0, :, 0, 0] @ w[:, :, 2, 2], rtol=1e-5)


def test_stride_larger_than_kernel(arrays):
    # Gaps of stride - kernel positions that no input reaches: they hold the bias only.
    b = arrays(3)
    ref = assert_matches_torch(arrays(1, 2, 4), arrays(2, 3, 2), b, stride=5)
    assert ref.shape == (1, 3, 17)
    np.testing.assert_allclose(ref[0, :, 2:5], np.repeat(b[:, None], 3, axis=1), rtol=1e-6)


def test_very_large_stride(arrays):
    ref = assert_matches_torch(arrays(1, 1, 3), arrays(1, 2, 2), stride=1000, output_padding=999)
    assert ref.shape == (1, 2, 3001)
    assert np.count_nonzero(ref) <= 3 * 2 * 2


@pytest.mark.parametrize(
    ("stride", "dilation"),
    [(3, 1), (2, 4), (1, 3)],
    ids=["stride>dilation", "dilation>stride", "stride=1"],
)
def test_output_padding_at_its_maximum(arrays, stride, dilation):
    op = max(stride, dilation) - 1
    assert_matches_torch(
        arrays(2, 2, 4), arrays(2, 3, 3), stride=stride, dilation=dilation, output_padding=op
    )
    with pytest.raises(ValueError, match=r"output_padding=\(\d+,\) must be smaller"):
        conv_transpose(arrays(2, 2, 4), arrays(2, 3, 3), None, stride, 0, op + 1, 1, dilation)


def test_padding_that_crops_all_but_one_pixel(arrays):
    # full size (4 - 1) * 2 + 3 = 9; padding 4 leaves exactly one pixel per dimension.
    ref = assert_matches_torch(arrays(1, 2, 4, 4), arrays(2, 2, 3, 3), stride=2, padding=4)
    assert ref.shape == (1, 2, 1, 1)
    with pytest.raises(ValueError, match="every size must be positive"):
        conv_transpose(arrays(1, 2, 4, 4), arrays(2, 2, 3, 3), stride=2, padding=5)


def test_output_size_zero_raises_where_torch_2d_returns_empty(arrays):
    """Deliberate difference: an output size < 1 is always a ValueError.

    Torch is inconsistent: the same arguments (the lead's sweep found them) give
    an empty tensor through one CPU kernel (groups > 1, or an empty batch) and
    "Output size is too small" through another (groups == 1).
    """
    kwargs = dict(stride=2, padding=(4, 3), output_padding=(0, 1), dilation=(1, 3))
    grouped = torch_conv_transpose(arrays(2, 4, 4, 4), arrays(4, 3, 2, 3), groups=2, **kwargs)
    assert grouped.shape == (2, 6, 0, 8)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        torch_conv_transpose(arrays(1, 1, 4, 4), arrays(1, 1, 2, 3), **kwargs)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        torch_conv_transpose(arrays(1, 1, 4), arrays(1, 1, 2), stride=2, padding=4)
    for method in METHODS:
        for x, w, g in [
            (arrays(2, 4, 4, 4), arrays(4, 3, 2, 3), 2),
            (arrays(1, 1, 4, 4), arrays(1, 1, 2, 3), 1),
        ]:
            with pytest.raises(ValueError, match=r"spatial size \(0, 8\)"):
                conv_transpose(x, w, groups=g, **kwargs, method=method)


def test_empty_batch_is_validated_like_any_other(arrays):
    """Deliberate difference: torch skips the output_padding check for an empty batch."""
    x, w = arrays(0, 2, 3), arrays(2, 1, 2)
    assert torch_conv_transpose(x, w, output_padding=1).shape == (0, 1, 5)
    with pytest.raises(RuntimeError, match="output padding must be smaller"):
        torch_conv_transpose(arrays(1, 2, 3), w, output_padding=1)
    with pytest.raises(ValueError, match=r"output_padding=\(1,\) must be smaller"):
        conv_transpose(x, w, output_padding=1)


# -- argument and array forms -------------------------------------------------------------


def test_non_contiguous_and_transposed_inputs(arrays):
    big, wbig = arrays(2, 3, 10, 12), arrays(3, 4, 6, 5)
    views = {
        "strided slice": (big[:, :, ::2, 1::3], wbig[:, :2, ::2, ::2]),
        "x.T-style": (
            np.transpose(arrays(9, 7, 3, 2), (3, 2, 1, 0)),
            np.transpose(arrays(3, 3, 2, 3), (3, 2, 1, 0)),
        ),
        "Fortran order": (np.asfortranarray(big), np.asfortranarray(wbig)),
        "negative strides": (big[:, ::-1, ::-1], wbig[::-1, :, ::-1]),
    }
    for name, (x, w) in views.items():
        assert not (x.flags.c_contiguous and w.flags.c_contiguous), name
        ref = torch_conv_transpose(
            np.ascontiguousarray(x), np.ascontiguousarray(w), stride=2, padding=1
        )
        # Layout is settled by jnp.asarray before any formulation runs: one method suffices.
        y = conv_transpose(x, w, stride=2, padding=1)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=name)
    # A transposed jax array too.
    xt = jnp.asarray(arrays(8, 5, 2, 1)).T
    ref = torch_conv_transpose(np.asarray(xt), wbig[:2, :, :3, :3])
    np.testing.assert_allclose(conv_transpose(xt, wbig[:2, :, :3, :3]), ref, rtol=1e-5, atol=1e-5)


def test_python_lists_as_arrays():
    x = [[[1.0, 2.0, 3.0]]]
    w = [
        [[1.0, -1.0]],
    ]
    ref = torch_conv_transpose(
        np.array(x, np.float32), np.array(w, np.float32), np.array([0.5], np.float32)
    )
    y = conv_transpose1d(x, w, [0.5])
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, ref)


def test_numpy_scalars_and_arrays_as_arguments(arrays):
    x, w = arrays(1, 2, 5, 5), arrays(2, 2, 3, 3)
    ref = torch_conv_transpose(
        x, w, stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2)
    )
    numpy_args = [
        dict(
            stride=np.int64(2),
            padding=np.int32(1),
            output_padding=np.uint8(1),
            groups=np.int64(2),
            dilation=(np.int16(1), 2),
        ),
        dict(
            stride=np.array([2, 2]),
            padding=np.array(1),
            output_padding=[np.int64(1)],
            groups=np.array(2),
            dilation=np.array([1, 2]),
        ),
        dict(
            stride=jnp.array(2),
            padding=jnp.array([1, 1]),
            output_padding=1,
            groups=jnp.int32(2),
            dilation=jnp.array([1, 2]),
        ),
    ]
    for kwargs in numpy_args:
        np.testing.assert_allclose(conv_transpose2d(x, w, **kwargs), ref, rtol=1e-5, atol=1e-5)
    size = conv_transpose2d(x, w, stride=2, groups=2, output_size=np.array([11, 11]))
    assert size.shape == (1, 4, 11, 11)
    # torch accepts numpy ints for stride too (the reference for the first form)
    assert torch_conv_transpose(x, w, stride=np.int64(2), groups=2).shape == (1, 4, 11, 11)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(stride=2.0), r"stride must be an int .* got 2\.0"),
        (dict(stride=True), "stride must be an int, got bool True"),
        (dict(padding=np.array([1.5, 1.5])), r"padding must be an int .* got .*1\.5"),
        (dict(groups=2.0), "groups must be an int, got 2.0"),
        (dict(stride=np.ones((2, 2), int)), "stride must be an int or a sequence of ints"),
        (dict(output_size="7"), "output_size must be an int or a sequence of ints"),
    ],
    ids=[
        "float stride",
        "bool stride",
        "float array padding",
        "float groups",
        "2-d stride",
        "str output_size",
    ],
)
def test_wrong_argument_types_are_type_errors(arrays, kwargs, match):
    with pytest.raises(TypeError, match=match):
        conv_transpose(arrays(1, 2, 3, 3), arrays(2, 2, 2, 2), **kwargs)


def test_output_size_leading_sizes_follow_torch_module(arrays):
    x, w = arrays(2, 3, 4, 4), arrays(3, 5, 3, 3)
    module = torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
    for size in ([8, 8], [2, 5, 8, 8], (7, 8)):
        ref = module(torch.from_numpy(x), output_size=size).detach().numpy()
        y = conv_transpose(x, w, stride=2, padding=1, output_size=size)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    ref = module(torch.from_numpy(x[0]), output_size=[5, 8, 8]).detach().numpy()
    np.testing.assert_allclose(
        conv_transpose(x[0], w, stride=2, padding=1, output_size=[5, 8, 8]),
        ref,
        rtol=1e-5,
        atol=1e-5,
    )
    for xx, bad in ((x, [5, 8, 8]), (x[0], [2, 5, 8, 8])):
        with pytest.raises(ValueError, match="output_size must have"):
            module(torch.from_numpy(xx), output_size=bad)
        with pytest.raises(ValueError, match=r"output_size=\[.*\] must have 2 or"):
            conv_transpose(xx, w, stride=2, padding=1, output_size=bad)


def test_output_size_with_output_padding_is_refused(arrays):
    """Deliberate difference: torch's module silently ignores its output_padding."""
    x, w = arrays(1, 3, 4, 4), arrays(3, 5, 3, 3)
    module = torch.nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1)
    assert module(torch.from_numpy(x), output_size=[7, 7]).shape[-2:] == (7, 7)
    with pytest.raises(ValueError, match=r"give output_size=\[7, 7\] or output_padding=1"):
        conv_transpose(x, w, stride=2, padding=1, output_padding=1, output_size=[7, 7])


def test_output_size_as_int_is_an_extension(arrays):
    x, w = arrays(1, 3, 4, 4), arrays(3, 5, 3, 3)
    assert conv_transpose(x, w, stride=2, padding=1, output_size=8).shape == (1, 5, 8, 8)


# -- values -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, -np.inf])
@pytest.mark.parametrize(
    "kwargs",
    [dict(stride=2), dict(stride=3, padding=1, output_padding=2), dict(stride=2, dilation=2)],
    ids=["s2", "s3p1op2", "s2d2"],
)
def test_non_finite_input_propagates_like_torch(arrays, value, kwargs):
    x, w = arrays(1, 2, 5, 5), arrays(2, 3, 3, 3)
    x[0, 1, 2, 3] = value
    x[0, 0, 4, 0] = value
    ref = torch_conv_transpose(x, w, **kwargs)
    assert not np.isfinite(ref).all()
    for method in METHODS:
        y = np.asarray(conv_transpose(x, w, **kwargs, method=method))
        if method == "zero_insertion" and kwargs.get("dilation", 1) > 1:
            # The materialized dilated kernel multiplies its inserted zeros with the
            # non-finite pixel: NaN where torch has a number (documented).
            assert (
                np.isnan(y[~np.isfinite(ref)]).all() or (~np.isfinite(y[~np.isfinite(ref)])).all()
            )
            assert (~np.isfinite(y)).sum() > (~np.isfinite(ref)).sum()
            continue
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref), err_msg=method)
        np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ref), err_msg=method)
        np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref), err_msg=method)
        finite = np.isfinite(ref)
        np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-5, atol=1e-5, err_msg=method)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weight_reaches_a_superset_of_torch(arrays, value):
    """Documented: a non-finite weight tap also meets the zeros XLA pads with.

    Torch never multiplies padding, so outputs that only padding reaches through
    that tap stay finite in torch; here they become NaN. Every output torch makes
    non-finite is non-finite here too, and every finite one is equal.
    """
    x, w = arrays(1, 2, 4, 4), arrays(2, 3, 3, 3)
    w[0, 1, 1, 1] = value
    ref = torch_conv_transpose(x, w, stride=2)
    bad = ~np.isfinite(ref)
    assert bad.any()
    for method in METHODS:
        y = np.asarray(conv_transpose(x, w, stride=2, method=method))
        assert (~np.isfinite(y[bad])).all(), method
        ok = np.isfinite(y)
        np.testing.assert_allclose(y[ok], ref[ok], rtol=1e-5, atol=1e-5, err_msg=method)


# -- dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64])
def test_integer_bool_and_complex_inputs_are_refused(dtype):
    """Deliberate difference: torch's CPU kernel computes int64 (and complex) inputs."""
    x, w = np.ones((1, 2, 3), dtype), np.ones((2, 1, 2), dtype)
    if dtype in (np.int64, np.complex64):
        assert torch_conv_transpose(x, w).dtype == dtype
    with pytest.raises(TypeError, match=r"input must have a floating dtype .* got"):
        conv_transpose(x, w)
    with pytest.raises(TypeError, match=r"weight must have a floating dtype .* got"):
        conv_transpose(x.astype(np.float32), w)
    with pytest.raises(TypeError, match=r"bias must have a floating dtype .* got"):
        conv_transpose(x.astype(np.float32), w.astype(np.float32), np.ones(1, dtype))


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "expected"),
    [
        (jnp.float16, jnp.float32, jnp.float32),
        (jnp.float32, jnp.bfloat16, jnp.float32),
        (jnp.bfloat16, jnp.float16, jnp.float32),
        (jnp.float16, jnp.float16, jnp.float16),
    ],
)
def test_mixed_float_dtypes_are_promoted(arrays, x_dtype, w_dtype, expected):
    """Deliberate difference: torch refuses mixed dtypes; jaxdeconv promotes them."""
    x, w = arrays(1, 2, 4, 4), arrays(2, 3, 3, 3)
    if x_dtype != w_dtype:
        with pytest.raises(RuntimeError):
            F.conv_transpose2d(torch.from_numpy(x).half(), torch.from_numpy(w))
    jx, jw = jnp.asarray(x, x_dtype), jnp.asarray(w, w_dtype)
    bias = jnp.ones(3, jnp.float16)  # the bias takes the output's dtype, as in torch
    ref = torch_conv_transpose(
        np.asarray(jx.astype(jnp.float32)),
        np.asarray(jw.astype(jnp.float32)),
        np.ones(3, np.float32),
        stride=2,
    )
    for method in METHODS:
        y = conv_transpose(jx, jw, bias, stride=2, method=method)
        assert y.dtype == expected
        tol = 1e-5 if expected == jnp.float32 else 1e-2
        np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=tol, atol=tol)


def test_preferred_element_type_sets_the_output_dtype(arrays):
    x, w = jnp.asarray(arrays(1, 2, 4), jnp.float16), jnp.asarray(arrays(2, 3, 3), jnp.float16)
    for method in METHODS:
        y = conv_transpose(x, w, method=method, preferred_element_type=jnp.float32)
        assert y.dtype == jnp.float32, method


def _overflow_case():
    # Every output is 200 * 200 * (number of taps that reach it) >= 40000 * 4.
    return np.full((1, 4, 2), 200.0, np.float32), np.full((4, 1, 2), 200.0, np.float32)


def test_float16_overflow_gives_inf_like_torch():
    """Documented: float16 results beyond 65504 are inf, as in torch."""
    x, w = _overflow_case()
    ref = F.conv_transpose1d(torch.from_numpy(x).half(), torch.from_numpy(w).half()).numpy()
    assert np.isposinf(ref).all()
    for method in METHODS:
        y = conv_transpose(jnp.asarray(x, jnp.float16), jnp.asarray(w, jnp.float16), method=method)
        assert y.dtype == jnp.float16
        assert np.isposinf(np.asarray(y, np.float32)).all(), method
        wide = conv_transpose(
            jnp.asarray(x, jnp.float16),
            jnp.asarray(w, jnp.float16),
            method=method,
            preferred_element_type=jnp.float32,
        )
        np.testing.assert_array_equal(wide, [[[160000.0, 320000.0, 160000.0]]])


def test_bfloat16_keeps_the_float32_range_like_torch():
    """Documented: bfloat16 does not overflow here but keeps 8 bits of mantissa."""
    x, w = _overflow_case()
    ref = F.conv_transpose1d(torch.from_numpy(x).bfloat16(), torch.from_numpy(w).bfloat16())
    ref = ref.float().numpy()
    np.testing.assert_array_equal(ref, [[[159744.0, 319488.0, 159744.0]]])
    for method in METHODS:
        y = conv_transpose(
            jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), method=method
        )
        assert y.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(y, np.float32), ref, err_msg=method)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(precision="ultra"), ValueError, r"precision='ultra' must be None, a jax.lax"),
        (dict(precision=("highest", "x")), ValueError, r"precision=\('highest', 'x'\)"),
        (dict(preferred_element_type=jnp.int32), TypeError, r"preferred_element_type=.*int32"),
        (dict(preferred_element_type="complex64"), TypeError, r"must be a floating dtype"),
        (dict(preferred_element_type="nope"), TypeError, r"preferred_element_type='nope'"),
    ],
)
def test_precision_and_preferred_element_type_are_validated(kwargs, error, pattern):
    """Both reach lax only once checked: one-line errors naming the argument (issue 15)."""
    x, w = np.ones((1, 2, 3), np.float32), np.ones((2, 1, 2), np.float32)
    for method in METHODS:
        with pytest.raises(error, match=pattern):
            conv_transpose(x, w, method=method, **kwargs)


def test_valid_precisions_pass_through():
    x, w = np.ones((1, 2, 3), np.float32), np.ones((2, 1, 2), np.float32)
    for precision in (None, "highest", jax.lax.Precision.HIGH, ("default", "highest")):
        y = conv_transpose(x, w, precision=precision, preferred_element_type=np.float32)
        np.testing.assert_array_equal(y, [[[2.0, 4.0, 4.0, 2.0]]])  # two input channels

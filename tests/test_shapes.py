"""Shape arithmetic: output sizes, output_padding from output_size, lax padding, the spec."""

import numpy as np
import pytest
import torch

import jaxdeconv
from jaxdeconv import (
    conv_transpose_output_size,
    make_spec,
    output_padding_for_size,
    resolve_padding,
    to_lax_padding,
)


@pytest.mark.parametrize(
    ("in_size", "k", "s", "p", "op", "d"),
    [
        (3, 2, 1, 0, 0, 1),
        (3, 2, 1, 1, 0, 1),
        (4, 4, 2, 1, 0, 1),
        (5, 3, 2, 1, 1, 1),
        (5, 3, 3, 0, 2, 2),
        (6, 2, 3, 3, 0, 1),  # padding > dilation * (k - 1): torch crops
        (7, 16, 8, 4, 0, 1),
        (4, 3, 2, 1, 3, 5),  # output_padding >= stride, allowed by dilation
    ],
)
def test_output_size_matches_torch(in_size, k, s, p, op, d):
    x = torch.zeros(1, 1, in_size)
    w = torch.zeros(1, 1, k)
    want = torch.nn.functional.conv_transpose1d(x, w, None, s, p, op, 1, d).shape[-1]
    assert conv_transpose_output_size(in_size, k, s, p, op, d) == (want,)


def test_output_size_formula_per_dimension():
    # (in - 1) * s - 2p + d (k - 1) + op + 1, each dimension separately.
    got = conv_transpose_output_size(
        (4, 5, 6), (3, 2, 1), (2, 1, 3), (1, 0, 0), (1, 0, 2), (1, 3, 1)
    )
    assert got == (3 * 2 - 2 + 2 + 1 + 1, 4 + 3 + 1, 5 * 3 + 2 + 1)


def test_output_size_padding_modes():
    assert conv_transpose_output_size(5, 3, 2, "SAME") == (10,)
    assert conv_transpose_output_size(5, 2, 3, "SAME") == (15,)
    assert conv_transpose_output_size(5, 3, 2, "VALID") == (11,)
    assert conv_transpose_output_size(5, 2, 3, "VALID") == (15,)
    assert conv_transpose_output_size(5, 3, 2, ((2, 0),)) == (9,)


@pytest.mark.parametrize(
    ("k", "s", "d", "want"),
    [
        (3, 2, 1, ((0, 1),)),  # k_eff - s = 1: the odd pixel is cropped at the high end
        (4, 2, 1, ((1, 1),)),
        (4, 1, 1, ((1, 2),)),
        (2, 3, 1, ((0, -1),)),  # k < s: extend by s - k at the high end
        (3, 2, 2, ((1, 2),)),  # k_eff = 5
    ],
)
def test_same_crops(k, s, d, want):
    assert resolve_padding("SAME", (5,), (k,), s, d) == want


def test_valid_crops():
    assert resolve_padding("VALID", (5,), (3,), 2) == ((0, 0),)
    assert resolve_padding("VALID", (5,), (2,), 3) == ((0, -1),)


def test_output_padding_folds_into_high_crop():
    assert resolve_padding(2, (5, 5), (3, 3), 2, 1, (1, 0)) == ((2, 1), (2, 2))


@pytest.mark.parametrize(("want", "op"), [((8, 8), (1, 1)), ((7, 8), (0, 1)), ((7, 7), (0, 0))])
def test_output_padding_for_size(want, op):
    assert output_padding_for_size(want, (4, 4), 3, 2, 1) == op
    # and torch's module agrees
    mod = torch.nn.ConvTranspose2d(1, 1, 3, 2, 1)
    assert tuple(mod(torch.zeros(1, 1, 4, 4), output_size=want).shape[-2:]) == want


def test_output_padding_for_size_accepts_leading_dims():
    assert output_padding_for_size((2, 3, 8, 8), (4, 4), 3, 2, 1) == (1, 1)


@pytest.mark.parametrize("bad", [(6, 8), (9, 8), (8, 10)])
def test_output_padding_for_size_rejects_unreachable(bad):
    with pytest.raises(ValueError, match=r"output_size=.* is not reachable"):
        output_padding_for_size(bad, (4, 4), 3, 2, 1)
    mod = torch.nn.ConvTranspose2d(1, 1, 3, 2, 1)
    with pytest.raises(ValueError):
        mod(torch.zeros(1, 1, 4, 4), output_size=bad)


def test_to_lax_padding_reproduces_torch_through_lax(rng):
    import jax

    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    w = rng.standard_normal((2, 3, 4, 3)).astype(np.float32)
    pad = to_lax_padding((1, 2), (4, 5), (4, 3), stride=2, output_padding=(1, 0))
    got = jax.lax.conv_transpose(
        x,
        np.moveaxis(w, (0, 1), (-1, -2)),
        (2, 2),
        pad,
        dimension_numbers=("NCHW", "HWIO", "NCHW"),
        transpose_kernel=True,
        precision="highest",
    )
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=(1, 2), output_padding=(1, 0)
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_spec_is_hashable_and_consistent():
    spec = make_spec((2, 4, 5, 6), (4, 3, 3, 2), 2, 1, 1, groups=2, dilation=(1, 2))
    assert hash(spec) == hash(make_spec((2, 4, 5, 6), (4, 3, 3, 2), 2, 1, 1, 2, (1, 2)))
    assert spec.out_channels == 6 and spec.groups == 2
    assert spec.output_size == conv_transpose_output_size((5, 6), (3, 2), 2, 1, 1, (1, 2))
    assert spec.output_shape == (2, 6, *spec.output_size)
    assert spec.effective_kernel_size == (3, 3)
    assert spec.lhs_dilated_padding == ((1, 2), (1, 2))
    assert spec.flops == 2 * 2 * 5 * 6 * 4 * 3 * 3 * 2


def test_spec_channels_last_layout():
    spec = make_spec((2, 5, 6, 4), (3, 2, 4, 3), 2, channels_last=True)
    assert spec.in_channels == 4 and spec.out_channels == 3
    assert spec.kernel_size == (3, 2)
    assert spec.output_shape == (2, 11, 12, 3)
    assert spec.weight_shape == (3, 2, 4, 3)


def test_public_names_exported():
    for name in jaxdeconv.__all__:
        assert hasattr(jaxdeconv, name), name

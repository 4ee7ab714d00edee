"""One named test for each peer-library bug listed in shared/ANCHORS.md that applies here."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cases import torch_conv_transpose

import jaxdeconv
from jaxdeconv import conv_transpose, conv_transpose_output_size

METHODS = ["auto", *jaxdeconv.FORMULATIONS]


def test_seed_worked_example_exact():
    """The blog post the project grew from, both results, exactly, every formulation."""
    x = np.array([[[[4, 4, 3], [0, 3, 4], [2, 3, 2]]]], np.float32)
    w = np.array([[[[1, 2], [0, 1]]]], np.float32)
    p0 = [[4, 12, 11, 6], [0, 7, 14, 11], [2, 7, 11, 8], [0, 2, 3, 2]]
    p1 = [[7, 14], [7, 11]]
    # the seed's input is torch.manual_seed(0); randint(5, (1, 1, 3, 3))
    torch.manual_seed(0)
    np.testing.assert_array_equal(torch.randint(5, size=(1, 1, 3, 3)).numpy(), x)
    for method in METHODS:
        np.testing.assert_array_equal(conv_transpose(x, w, method=method)[0, 0], p0)
        np.testing.assert_array_equal(conv_transpose(x, w, padding=1, method=method)[0, 0], p1)
        np.testing.assert_array_equal(jaxdeconv.numpy_conv_transpose(x, w)[0, 0], p0)


@pytest.mark.parametrize("method", METHODS)
def test_lax_consistent_padding_rejects_list_of_lists(rng, method):
    """lax (use_consistent_padding=True) rejects padding as a list of lists; we accept it."""
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    as_lists = conv_transpose(x, w, stride=2, padding=[[1, 0], [0, 2]], method=method)
    as_tuples = conv_transpose(x, w, stride=2, padding=((1, 0), (0, 2)), method=method)
    np.testing.assert_array_equal(as_lists, as_tuples)
    want = jaxdeconv.numpy_conv_transpose(x, w, stride=2, padding=((1, 0), (0, 2)))
    np.testing.assert_allclose(as_lists, want, rtol=1e-5, atol=1e-5)


def test_lax_shape_tuple_ignores_dilation():
    """lax.conv_transpose_shape_tuple reports 11 where the real size is 13 (dilation 2)."""
    in_size, k, s, d = 5, 3, 2, 2
    assert conv_transpose_output_size(in_size, k, s, 0, 0, d) == (13,)
    x = np.ones((1, 1, in_size), np.float32)
    w = np.ones((1, 1, k), np.float32)
    assert conv_transpose(x, w, stride=s, dilation=d).shape == (1, 1, 13)
    assert (
        F.conv_transpose1d(
            torch.ones(1, 1, in_size), torch.ones(1, 1, k), stride=s, dilation=d
        ).shape[-1]
        == 13
    )


def test_flax_integer_padding_is_not_torch_padding(rng):
    """flax: k=4, s=2, p=1 gives length 10 instead of torch's 12; ours gives torch's."""
    x = rng.standard_normal((1, 2, 6)).astype(np.float32)
    w = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = conv_transpose(x, w, stride=2, padding=1)
    want = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1)
    assert y.shape[-1] == 12 == want.shape[-1]
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-5, atol=1e-5)


def test_haiku_never_flips_the_kernel(rng):
    """haiku does not flip the kernel; PyTorch weights must give PyTorch's numbers unchanged."""
    x = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    w = np.array([[[[1, 2], [0, 1]]]], np.float32)  # asymmetric: flipping matters
    y = conv_transpose(x, w)
    np.testing.assert_allclose(y, torch_conv_transpose(x, w), rtol=1e-6)
    unflipped = jax.lax.conv_transpose(
        x,
        np.moveaxis(w, (0, 1), (-2, -1)),
        (1, 1),
        "VALID",
        dimension_numbers=("NCHW", "HWIO", "NCHW"),
    )
    assert not np.allclose(unflipped, y)  # the trap is real for this kernel


@pytest.mark.parametrize("method", METHODS)
def test_equinox_recipe_wrong_for_groups(rng, method):
    """flip(w).swapaxes(0, 1) is wrong for groups > 1; the in/out swap must be per group."""
    x = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)  # C_in/g = 2, C_out/g = 4
    y = conv_transpose(x, w, stride=2, padding=1, groups=3, method=method, precision="highest")
    np.testing.assert_allclose(
        y, torch_conv_transpose(x, w, stride=2, padding=1, groups=3), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("method", METHODS)
def test_equinox_rejects_output_padding_allowed_by_dilation(rng, method):
    """output_padding >= stride is valid when dilation > stride (torch accepts it)."""
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    kw = dict(stride=2, dilation=3, output_padding=2)
    y = conv_transpose(x, w, method=method, precision="highest", **kw)
    np.testing.assert_allclose(y, torch_conv_transpose(x, w, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("c_in_per_group", [1, 2, 3])
def test_torchax_grouped_reshape(rng, method, c_in_per_group):
    """torchax is wrong whenever in_channels / groups > 1 (it reshapes (C_in, C_out/g) directly)."""
    groups = 2
    x = rng.standard_normal((1, c_in_per_group * groups, 3, 3)).astype(np.float32)
    w = rng.standard_normal((c_in_per_group * groups, 3, 2, 2)).astype(np.float32)
    y = conv_transpose(x, w, stride=2, groups=groups, method=method, precision="highest")
    np.testing.assert_allclose(
        y, torch_conv_transpose(x, w, stride=2, groups=groups), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("method", METHODS)
def test_padding_beyond_dilated_kernel_crops_like_torch(rng, method):
    """PyTorch crops when padding > dilation * (kernel - 1); a port must crop, not error."""
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)
    w = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    kw = dict(stride=3, padding=(3, 4))
    y = conv_transpose(x, w, method=method, precision="highest", **kw)
    np.testing.assert_allclose(y, torch_conv_transpose(x, w, **kw), rtol=1e-5, atol=1e-5)

"""init_conv_transpose against PyTorch's ConvTranspose.reset_parameters."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdeconv
from jaxdeconv import init_conv_transpose

CASES = [
    # (module class, in, out, kernel, groups)
    (torch.nn.ConvTranspose1d, 6, 9, (5,), 3),
    (torch.nn.ConvTranspose2d, 8, 6, (3, 4), 2),
    (torch.nn.ConvTranspose3d, 4, 2, (2, 3, 2), 1),
]


def _torch_bound(module):
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
    return 1 / math.sqrt(fan_in)


@pytest.mark.parametrize(("cls", "cin", "cout", "k", "g"), CASES)
def test_shapes_and_bound_match_torch(cls, cin, cout, k, g):
    t = cls(cin, cout, k, groups=g)
    w, b = init_conv_transpose(jax.random.key(1), cin, cout, k, g)
    assert w.shape == tuple(t.weight.shape)
    assert b.shape == tuple(t.bias.shape)
    assert w.dtype == jnp.float32 and b.dtype == jnp.float32
    bound = _torch_bound(t)
    # fan_in is the OUTPUT channels per group times the kernel (weight.shape[1]).
    assert bound == pytest.approx(1 / math.sqrt(cout // g * math.prod(k)))
    for ours, theirs in ((w, t.weight), (b, t.bias)):
        assert float(jnp.abs(ours).max()) <= bound
        assert float(theirs.detach().abs().max()) <= bound


def test_statistics_match_torch():
    """Both draw U(-b, b): same range, mean 0, variance b^2/3, flat histogram."""
    cin, cout, k, g = 64, 48, (5, 5), 2
    torch.manual_seed(0)
    t = torch.nn.ConvTranspose2d(cin, cout, k, groups=g)
    tw = t.weight.detach().numpy().ravel()
    w, _ = init_conv_transpose(jax.random.key(0), cin, cout, k, g)
    w = np.asarray(w).ravel()
    bound = _torch_bound(t)
    n = w.size  # 64 * 24 * 25 = 38400 samples each
    for sample in (w, tw):
        assert abs(sample.mean()) < 4 * bound / math.sqrt(3 * n)
        assert sample.var() == pytest.approx(bound**2 / 3, rel=0.03)
        assert sample.min() > -bound and sample.max() < bound
        assert sample.max() > 0.99 * bound and sample.min() < -0.99 * bound
        hist, _ = np.histogram(sample, bins=10, range=(-bound, bound))
        assert hist.min() > 0.9 * n / 10
    # two-sample Kolmogorov-Smirnov distance between ours and torch's draw
    grid = np.linspace(-bound, bound, 201)
    cdf = lambda s: np.searchsorted(np.sort(s), grid) / s.size  # noqa: E731
    assert np.abs(cdf(w) - cdf(tw)).max() < 0.02


def test_channels_last_dtype_no_bias_and_keys():
    w, b = init_conv_transpose(jax.random.key(0), 4, 6, (3, 2), 2, False, channels_last=True)
    assert w.shape == (3, 2, 4, 3) and b is None
    w64, _ = init_conv_transpose(jax.random.key(0), 4, 6, 3, num_spatial_dims=1, dtype=jnp.bfloat16)
    assert w64.shape == (4, 6, 3) and w64.dtype == jnp.bfloat16
    w1, b1 = init_conv_transpose(jax.random.key(0), 4, 6, (3,))
    w2, _ = init_conv_transpose(jax.random.key(1), 4, 6, (3,))
    assert not jnp.array_equal(w1, w2)
    # the bias is drawn with its own key, not a copy of the weight's first values
    assert not jnp.allclose(b1, w1.ravel()[:6])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(in_channels=0), ValueError, "in_channels=0"),
        (dict(out_channels=-2), ValueError, "out_channels=-2"),
        (dict(groups=4), ValueError, "groups=4 must divide in_channels=6"),
        (dict(out_channels=5, groups=2), ValueError, "groups=2 must divide out_channels=5"),
        (dict(kernel_size=3), ValueError, "kernel_size=3 is a single int"),
        (dict(kernel_size=(3, 0)), ValueError, "kernel_size"),
        (dict(kernel_size=(3,), num_spatial_dims=2), ValueError, "num_spatial_dims=2"),
        (dict(kernel_size=3, num_spatial_dims=0), ValueError, "num_spatial_dims=0"),
        (dict(in_channels=2.5), TypeError, "in_channels"),
        (dict(bias="yes"), TypeError, "bias"),
        (dict(dtype=jnp.int32), TypeError, "dtype"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = dict(in_channels=6, out_channels=4, kernel_size=(3, 3), groups=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        init_conv_transpose(jax.random.key(0), **args)


def test_ndim_is_a_deprecated_alias_of_num_spatial_dims():
    with pytest.warns(DeprecationWarning, match="num_spatial_dims"):
        w, _ = init_conv_transpose(jax.random.key(0), 4, 6, 3, ndim=2)
    assert w.shape == (4, 6, 3, 3)
    with pytest.raises(TypeError, match="not both"):
        init_conv_transpose(jax.random.key(0), 4, 6, 3, ndim=2, num_spatial_dims=2)


def test_import_needs_only_jax_and_numpy():
    """``import jaxdeconv`` (init and layouts included) pulls in no optional dependency."""
    code = (
        "import sys, jaxdeconv, jaxdeconv.layouts; "
        "print(sorted(m for m in ('flax', 'equinox', 'torch', 'matplotlib', 'optax', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(jaxdeconv.layouts.torch_to_equinox)

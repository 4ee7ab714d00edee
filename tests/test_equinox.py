"""jaxdeconv.equinox.ConvTranspose against torch.nn.ConvTranspose{1,2,3}d."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxdeconv.equinox import ConvTranspose

MODULES = {
    "1d": lambda: torch.nn.ConvTranspose1d(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2
    ),
    # output_padding=2 >= stride is legal because dilation=3 (equinox's own layer rejects it)
    "2d": lambda: torch.nn.ConvTranspose2d(6, 4, (3, 2), 2, (1, 0), (2, 1), 2, True, (3, 1)),
    "3d": lambda: torch.nn.ConvTranspose3d(
        2, 3, 2, stride=(1, 2, 1), padding=(0, 1, 0), bias=False
    ),
}
SIZES = {"1d": (5,), "2d": (4, 3), "3d": (3, 3, 2)}


def _make(name, seed=0):
    torch.manual_seed(seed)
    t = MODULES[name]()
    x = torch.randn(2, t.in_channels, *SIZES[name])
    return t, x


@pytest.mark.parametrize("name", MODULES)
def test_from_torch_reproduces_outputs(name):
    t, x = _make(name)
    layer = ConvTranspose.from_torch(t)
    assert isinstance(layer, eqx.Module)
    assert (layer.stride, layer.padding, layer.groups) == (t.stride, t.padding, t.groups)
    assert (layer.bias is None) == (t.bias is None)
    want = t(x).detach().numpy()
    np.testing.assert_allclose(layer(x.numpy()), want, rtol=1e-5, atol=1e-5)
    # unbatched [C, *spatial], as torch's layers accept
    np.testing.assert_allclose(layer(x[0].numpy()), want[0], rtol=1e-5, atol=1e-5)


def test_output_size_channels_last_and_methods():
    torch.manual_seed(1)
    # output_size overrides the module's output_padding, as in torch's forward
    t = torch.nn.ConvTranspose2d(4, 2, 3, stride=3, padding=1, output_padding=1, groups=2)
    x = torch.randn(1, 4, 3, 4)
    want = t(x, output_size=(9, 11)).detach().numpy()
    assert want.shape == (1, 2, 9, 11)
    layer = ConvTranspose.from_torch(t)
    np.testing.assert_allclose(layer(x.numpy(), output_size=(9, 11)), want, atol=1e-5)
    np.testing.assert_allclose(layer(x.numpy()), t(x).detach().numpy(), atol=1e-5)  # 8x11
    np.testing.assert_allclose(layer(x.numpy(), (1, 2, 9, 11)), want, atol=1e-5)
    last = ConvTranspose.from_torch(t, channels_last=True, method="vjp")
    assert last.weight.shape == (3, 3, 4, 1)
    y = last(np.moveaxis(x.numpy(), 1, -1), output_size=(9, 11))
    np.testing.assert_allclose(np.moveaxis(y, -1, 1), want, atol=1e-5)


def test_default_init_and_constructor():
    layer = ConvTranspose(8, 6, (3, 4), stride=2, groups=2, key=jax.random.key(0))
    assert layer.weight.shape == (8, 3, 3, 4) and layer.bias.shape == (6,)
    bound = 1 / math.sqrt(3 * 3 * 4)  # torch's fan_in: C_out / groups * prod(kernel)
    assert float(jnp.abs(layer.weight).max()) <= bound
    assert float(jnp.abs(layer.weight).max()) > 0.9 * bound
    one = ConvTranspose(
        2, 2, 3, num_spatial_dims=1, bias=False, dtype=jnp.bfloat16, key=jax.random.key(1)
    )
    assert one.weight.shape == (2, 2, 3) and one.bias is None
    assert one(jnp.ones((2, 4), jnp.bfloat16)).dtype == jnp.bfloat16
    leaves = jax.tree_util.tree_leaves(eqx.filter(layer, eqx.is_array))
    assert [leaf.shape for leaf in leaves] == [(8, 3, 3, 4), (6,)]  # static config is no leaf


def test_jit_and_grad():
    t, x = _make("2d")
    layer = ConvTranspose.from_torch(t)

    @eqx.filter_jit
    def loss(model, x):
        return jnp.sum(model(x) ** 2)

    xj = jnp.asarray(x.numpy())
    assert float(loss(layer, xj)) == pytest.approx(float(jnp.sum(layer(xj) ** 2)), rel=1e-5)
    grads = eqx.filter_grad(loss)(layer, xj)
    (t(x) ** 2).sum().backward()
    np.testing.assert_allclose(grads.weight, t.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads.bias, t.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(output_padding=2), ValueError, "output_padding"),
        (dict(groups=3), ValueError, "groups=3 must divide in_channels=4"),
        (dict(kernel_size=3), ValueError, "num_spatial_dims"),
        (dict(kernel_size=(3, 3), num_spatial_dims=3), ValueError, "sequence of 3 ints"),
        (dict(method="fft"), ValueError, "method='fft'"),
        (dict(stride=0), ValueError, "stride"),
        (dict(bias=1), TypeError, "bias"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(in_channels=4, out_channels=2, kernel_size=(3, 3), stride=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ConvTranspose(**args, key=jax.random.key(0))


def test_bad_inputs_and_modules():
    layer = ConvTranspose(4, 2, (3, 3), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"input.shape=\(4, 5\)"):
        layer(jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="channels"):
        layer(jnp.ones((1, 3, 5, 5)))
    with pytest.raises(TypeError, match="ConvTranspose1d/2d/3d, got Conv2d"):
        ConvTranspose.from_torch(torch.nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        t = torch.nn.ConvTranspose2d(2, 2, 3)
        t.padding_mode = "reflect"  # torch's constructor refuses it; a loaded module may not
        ConvTranspose.from_torch(t)


def test_vmap_sequential_and_equinox_output_padding_trap():
    """ANCHORS.md: equinox.nn.ConvTranspose rejects output_padding >= stride even where
    dilation > stride makes torch accept it; this layer loads such a module."""
    t, x = _make("2d")  # output_padding=(2, 1), stride=(2, 1), dilation=(3, 1)
    with pytest.raises(ValueError, match="output_padding < stride"):
        eqx.nn.ConvTranspose(
            2, 6, 4, (3, 2), (2, 1), (1, 0), (2, 1), (3, 1), 2, key=jax.random.key(0)
        )
    layer = ConvTranspose.from_torch(t)
    want = t(x).detach().numpy()
    np.testing.assert_allclose(jax.vmap(layer)(x.numpy()), want, rtol=1e-5, atol=1e-5)
    model = eqx.nn.Sequential([layer, eqx.nn.Lambda(jax.nn.relu)])
    got = model(x.numpy(), key=jax.random.key(0))
    np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-5, atol=1e-5)

"""jaxdeconv.linen.ConvTranspose (Flax Linen) against torch.nn.ConvTranspose{1,2,3}d."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax.errors import ScopeParamShapeError

from jaxdeconv.linen import ConvTranspose

MODULES = {
    "1d": lambda: torch.nn.ConvTranspose1d(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2
    ),
    # output_padding=2 >= stride is legal because dilation=3
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
    layer, variables = ConvTranspose.from_torch(t)
    assert isinstance(layer, nn.Module)
    assert (layer.stride, layer.padding, layer.groups) == (t.stride, t.padding, t.groups)
    assert ("bias" in variables["params"]) == (t.bias is not None)
    want = t(x).detach().numpy()
    np.testing.assert_allclose(layer.apply(variables, x.numpy()), want, rtol=1e-5, atol=1e-5)
    # unbatched [C, *spatial], as torch's layers accept
    np.testing.assert_allclose(layer.apply(variables, x[0].numpy()), want[0], atol=1e-5)


def test_output_size_channels_last_and_methods():
    torch.manual_seed(1)
    t = torch.nn.ConvTranspose2d(4, 2, 3, stride=3, padding=1, output_padding=1, groups=2)
    x = torch.randn(1, 4, 3, 4)
    want = t(x, output_size=(9, 11)).detach().numpy()
    layer, variables = ConvTranspose.from_torch(t)
    np.testing.assert_allclose(layer.apply(variables, x.numpy(), (9, 11)), want, atol=1e-5)
    np.testing.assert_allclose(layer.apply(variables, x.numpy()), t(x).detach().numpy(), atol=1e-5)
    last, lv = ConvTranspose.from_torch(t, channels_last=True, method="vjp")
    assert lv["params"]["weight"].shape == (3, 3, 4, 1)
    y = last.apply(lv, np.moveaxis(x.numpy(), 1, -1), output_size=(9, 11))
    np.testing.assert_allclose(np.moveaxis(y, -1, 1), want, atol=1e-5)


def test_default_init_positional_torch_order_and_int_kernel():
    layer = ConvTranspose(8, 6, (3, 4), 2, 0, 0, 2)  # torch's positional order
    variables = layer.init(jax.random.key(0), jnp.ones((1, 8, 5, 5)))
    w, b = variables["params"]["weight"], variables["params"]["bias"]
    assert w.shape == (8, 3, 3, 4) and b.shape == (6,) and layer.groups == 2
    bound = 1 / math.sqrt(3 * 3 * 4)  # torch's fan_in: C_out / groups * prod(kernel)
    assert 0.9 * bound < float(jnp.abs(w).max()) <= bound
    one = ConvTranspose(2, 2, 3, num_spatial_dims=1, bias=False, dtype=jnp.bfloat16)
    v = one.init(jax.random.key(1), jnp.ones((2, 4), jnp.bfloat16))
    assert list(v["params"]) == ["weight"] and v["params"]["weight"].shape == (2, 2, 3)
    assert one.apply(v, jnp.ones((2, 4), jnp.bfloat16)).dtype == jnp.bfloat16


def test_inside_a_linen_model_jit_and_grad():
    t, x = _make("2d")
    layer, variables = ConvTranspose.from_torch(t)

    class Model(nn.Module):
        up: nn.Module  # a submodule field: its parameters live under "up"

        def __call__(self, x):
            return jnp.tanh(self.up(x))

    model = Model(layer)
    params = {"params": {"up": variables["params"]}}
    loss = jax.jit(lambda p, x: jnp.sum(model.apply(p, x) ** 2))
    grads = jax.grad(loss)(params, jnp.asarray(x.numpy()))["params"]["up"]
    (torch.tanh(t(x)) ** 2).sum().backward()
    np.testing.assert_allclose(grads["weight"], t.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["bias"], t.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(output_padding=2), ValueError, "output_padding"),
        (dict(groups=3), ValueError, "groups=3 must divide in_channels=4"),
        (dict(kernel_size=3), ValueError, "num_spatial_dims"),
        (dict(kernel_size=(3, 3), num_spatial_dims=3), ValueError, "kernel_size"),
        (dict(method="fft"), ValueError, "method='fft'"),
        (dict(stride=0), ValueError, "stride"),
        (dict(bias=1), TypeError, "bias"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(in_channels=4, out_channels=2, kernel_size=(3, 3), stride=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ConvTranspose(**args)  # at construction, before any input


def test_bad_inputs_variables_and_modules():
    layer = ConvTranspose(4, 2, (3, 3))
    variables = layer.init(jax.random.key(0), jnp.ones((1, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"input.shape=\(4, 5\)"):
        layer.apply(variables, jnp.ones((4, 5)))
    bad = {"params": {**variables["params"], "weight": jnp.ones((4, 2, 3, 2))}}
    with pytest.raises(ScopeParamShapeError, match=r"has shape \(4, 2, 3, 2\)"):
        layer.apply(bad, jnp.ones((1, 4, 5, 5)))
    with pytest.raises(TypeError, match="ConvTranspose1d/2d/3d, got Conv2d"):
        ConvTranspose.from_torch(torch.nn.Conv2d(2, 2, 3))

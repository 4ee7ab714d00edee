"""Porting a PyTorch decoder through ``from_torch``: same outputs and same gradients.

A torch decoder of several ConvTranspose layers mixing stride, padding,
output_padding, groups and dilation (including output_padding >= stride, legal
because dilation > stride) is loaded layer by layer into the Flax NNX and the
Equinox ``ConvTranspose``; the forward pass and the gradients with respect to
the input and every weight and bias must match torch's autograd.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxdeconv.equinox
import jaxdeconv.flax


def _decoder_2d():
    return torch.nn.ModuleList(
        [
            torch.nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=4),
            torch.nn.ConvTranspose2d(12, 6, 4, stride=2, padding=1, groups=3),
            torch.nn.ConvTranspose2d(6, 4, 3, stride=1, padding=2, dilation=2, bias=False),
            torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=3, output_padding=2, dilation=3),
        ]
    ), (2, 8, 3, 3)


def _decoder_1d():
    return torch.nn.ModuleList(
        [
            torch.nn.ConvTranspose1d(6, 4, 8, stride=4, padding=2, groups=2),
            torch.nn.ConvTranspose1d(4, 4, 5, stride=3, padding=(1,), output_padding=2, groups=4),
            torch.nn.ConvTranspose1d(4, 1, 3, stride=1, padding=1, dilation=2),
        ]
    ), (3, 6, 5)


def _torch_run(layers, x, g):
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = torch.tanh(x)
    return x, (x * g).sum()


def _jax_run(layers, x, g):
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = jnp.tanh(x)
    return x, jnp.sum(x * g)


@pytest.mark.parametrize("framework", ["flax", "equinox"])
@pytest.mark.parametrize("build", [_decoder_2d, _decoder_1d], ids=["2d", "1d"])
def test_ported_decoder_matches_torch_outputs_and_gradients(framework, build):
    torch.manual_seed(0)
    t_layers, in_shape = build()
    x = torch.randn(*in_shape, requires_grad=True)
    y, _ = _torch_run(t_layers, x, 0.0)
    g = torch.randn(y.shape)
    y, t_loss = _torch_run(t_layers, x, g)
    t_loss.backward()

    xj, gj = jnp.asarray(x.detach().numpy()), jnp.asarray(g.numpy())

    # one jitted value_and_grad per decoder: a single compilation, not many small eager ones
    def loss_and_out(model, x):
        out, loss = _jax_run(model, x, gj)
        return loss, out

    if framework == "flax":
        model = nnx.List([jaxdeconv.flax.ConvTranspose.from_torch(t) for t in t_layers])
        graphdef, params = nnx.split(model)
        fn = jax.value_and_grad(
            lambda p, x: loss_and_out(nnx.merge(graphdef, p), x), argnums=(0, 1), has_aux=True
        )
        (loss, out), (grad_model, grad_x) = jax.jit(fn)(params, xj)
        per_layer = [grad_model[i] for i in range(len(t_layers))]
        grad_w = [gl["weight"][...] for gl in per_layer]
        grad_b = [gl["bias"][...] if "bias" in gl else None for gl in per_layer]
    else:
        model = [jaxdeconv.equinox.ConvTranspose.from_torch(t) for t in t_layers]
        fn = eqx.filter_value_and_grad(lambda mx: loss_and_out(*mx), has_aux=True)
        (loss, out), (grad_model, grad_x) = eqx.filter_jit(fn)((model, xj))
        grad_w = [m.weight for m in grad_model]
        grad_b = [m.bias for m in grad_model]

    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(grad_x, x.grad.numpy(), rtol=1e-4, atol=1e-4)
    for t, gw, gb in zip(t_layers, grad_w, grad_b):
        np.testing.assert_allclose(gw, t.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        if t.bias is None:
            assert gb is None
        else:
            np.testing.assert_allclose(gb, t.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_ported_decoder_under_jit():
    torch.manual_seed(1)
    t_layers, in_shape = _decoder_2d()
    x = torch.randn(*in_shape)
    with torch.no_grad():
        want, _ = _torch_run(t_layers, x, 0.0)
    model = [jaxdeconv.equinox.ConvTranspose.from_torch(t) for t in t_layers]
    run = eqx.filter_jit(lambda m, x: _jax_run(m, x, 0.0)[0])
    np.testing.assert_allclose(run(model, x.numpy()), want.numpy(), rtol=1e-4, atol=1e-5)

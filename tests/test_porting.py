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


# ---------------------------------------------------------------------------
# Whole-model porting: jaxdeconv.porting.torch_to_pytree


def _model():
    """Mixed model: legacy and parametrized weight norm, a plain ConvTranspose, a Conv,
    BatchNorm buffers (int64 num_batches_tracked)."""
    import warnings

    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(6, 4, 4, stride=2))
    return torch.nn.Sequential(
        torch.nn.Conv1d(3, 6, 3),
        torch.nn.Sequential(legacy, torch.nn.BatchNorm1d(4)),
        parametrizations.weight_norm(torch.nn.Conv1d(4, 4, 3, dilation=2), dim=None),
        torch.nn.ConvTranspose1d(4, 2, 3, groups=2, bias=False),
    )


def _trained_copy():
    src, dst = _model(), _model()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.3 * torch.randn_like(p))
        src(torch.randn(1, 3, 9))  # a forward refreshes src's own legacy weight from g and v
        src[1][1].running_mean.add_(1.0)
        src[1][1].num_batches_tracked.fill_(2**40)  # beyond int32
    dst.load_state_dict(src.state_dict())  # legacy weight_norm: dst[1][0].weight is now stale
    return src, dst


def test_torch_to_pytree_names_folds_and_layouts():
    from jaxdeconv.porting import torch_to_pytree

    src, dst = _trained_copy()
    tree = torch_to_pytree(dst)
    assert sorted(tree) == ["0", "1", "2", "3"]
    assert sorted(tree["1"]) == ["0", "1"]
    assert sorted(tree["1"]["1"]) == [
        "bias",
        "num_batches_tracked",
        "running_mean",
        "running_var",
        "weight",
    ]
    assert sorted(tree["2"]) == ["bias", "weight"]  # parametrization folded, renamed to weight
    # the legacy weight is folded from g and v (dst's module.weight is stale)
    np.testing.assert_array_equal(tree["1"]["0"]["weight"], src[1][0].weight.detach().numpy())
    assert not np.allclose(dst[1][0].weight.detach().numpy(), src[1][0].weight.detach().numpy())
    np.testing.assert_array_equal(tree["2"]["weight"], src[2].weight.detach().numpy())
    np.testing.assert_array_equal(tree["0"]["weight"], src[0].weight.detach().numpy())
    # int64 buffer: kept exact as NumPy int64 (JAX's x64 is off), not narrowed to int32
    nbt = tree["1"]["1"]["num_batches_tracked"]
    assert isinstance(nbt, np.ndarray) and nbt.dtype == np.int64 and int(nbt) == 2**40
    assert tree["1"]["1"]["running_mean"].dtype == jnp.float32

    last = torch_to_pytree(dst, conv_transpose_layout="channels_last")
    assert last["1"]["0"]["weight"].shape == (4, 6, 4)  # [k, C_in, C_out]
    assert last["3"]["weight"].shape == (3, 4, 1)  # grouped: [k, C_in, C_out / groups]
    assert last["0"]["weight"].shape == (6, 3, 3)  # a Conv weight is left as it is
    x = torch.randn(2, 4, 5)
    want = src[3](x).detach().numpy()
    got = jaxdeconv.conv_transpose(
        np.moveaxis(x.numpy(), 1, -1), last["3"]["weight"], groups=2, channels_last=True
    )
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, rtol=1e-5, atol=1e-6)


def test_torch_to_pytree_keeps_weight_norm_for_the_layers():
    from jaxdeconv.porting import torch_to_pytree

    src, dst = _trained_copy()
    kept = torch_to_pytree(dst, weight_norm="keep", conv_transpose_layout="channels_last")
    assert sorted(kept["1"]["0"]) == ["bias", "weight_g", "weight_v"]
    assert sorted(kept["2"]) == ["bias", "weight_g", "weight_v"]
    assert kept["2"]["weight_g"].shape == ()  # dim=None: one magnitude
    assert kept["1"]["0"]["weight_g"].shape == (1, 6, 1)  # per C_in, channels-last
    layer = jaxdeconv.equinox.ConvTranspose(
        6, 4, (4,), 2, channels_last=True, weight_norm=True, key=jax.random.key(0)
    )
    layer = eqx.tree_at(
        lambda m: (m.weight_g, m.weight_v, m.bias),
        layer,
        (kept["1"]["0"]["weight_g"], kept["1"]["0"]["weight_v"], kept["1"]["0"]["bias"]),
    )
    x = torch.randn(2, 6, 5)
    want = src[1][0](x).detach().numpy()
    got = np.moveaxis(layer(np.moveaxis(x.numpy(), 1, -1)), -1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_torch_to_pytree_from_a_bare_state_dict():
    from jaxdeconv.porting import torch_to_pytree

    src, _ = _trained_copy()
    state = src.state_dict()
    from_module = torch_to_pytree(src)
    from_state = torch_to_pytree(state)  # weight-norm dims read off g's shape
    for path, a in jax.tree_util.tree_leaves_with_path(from_module):
        b = from_state
        for key in path:
            b = b[key.key]
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="conv_transpose_names"):
        torch_to_pytree(state, conv_transpose_layout="channels_last")
    last = torch_to_pytree(state, conv_transpose_layout="channels_last", conv_transpose_names=["3"])
    assert last["3"]["weight"].shape == (3, 4, 1) and last["1"]["0"]["weight"].shape == (6, 4, 4)
    with pytest.raises(ValueError, match=r"'1\.1'.*rank >= 3"):
        torch_to_pytree(state, conv_transpose_layout="channels_last", conv_transpose_names=["1.1"])
    bad = dict(state)
    bad["1.0.weight_g"] = torch.ones(6, 4, 1)  # two kept axes: not a weight-norm magnitude
    with pytest.raises(ValueError, match="not a torch weight-norm magnitude"):
        torch_to_pytree(bad)


def test_torch_to_pytree_dtypes_are_explicit():
    import warnings

    from jaxdeconv.porting import torch_to_pytree

    net = _model().double()
    with pytest.raises(ValueError, match=r"0.weight is float64 .* dtype=jnp.float32"):
        torch_to_pytree(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw JAX truncation warning
        tree = torch_to_pytree(net, dtype=jnp.float32)
    assert tree["0"]["weight"].dtype == jnp.float32
    assert tree["1"]["1"]["num_batches_tracked"].dtype == np.int64  # dtype= is for floats only
    with jax.enable_x64(True):
        tree = torch_to_pytree(net)
        assert tree["0"]["weight"].dtype == jnp.float64
        nbt = tree["1"]["1"]["num_batches_tracked"]
        assert isinstance(nbt, jax.Array) and nbt.dtype == jnp.int64
    half = torch_to_pytree(_model().bfloat16())
    assert half["3"]["weight"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="x64"):
        torch_to_pytree(_model(), dtype=jnp.float64)
    with pytest.raises(TypeError, match="floating"):
        torch_to_pytree(_model(), dtype=jnp.int32)


def test_torch_to_pytree_bad_arguments_and_unreadable_norms():
    import warnings

    from torch.nn.utils import parametrizations

    from jaxdeconv.porting import torch_to_pytree

    with pytest.raises(ValueError, match="conv_transpose_layout='NHWC'"):
        torch_to_pytree(_model(), conv_transpose_layout="NHWC")
    with pytest.raises(ValueError, match="weight_norm='drop'"):
        torch_to_pytree(_model(), weight_norm="drop")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module or a state_dict"):
        torch_to_pytree([1, 2])
    with pytest.raises(TypeError, match="not one string"):
        torch_to_pytree(_model(), conv_transpose_names="3")
    spectral = torch.nn.Sequential(parametrizations.spectral_norm(torch.nn.Conv1d(2, 2, 3)))
    with pytest.raises(ValueError, match="remove_parametrizations"):
        torch_to_pytree(spectral)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = torch.nn.Sequential(torch.nn.utils.spectral_norm(torch.nn.Conv1d(2, 2, 3)))
    with pytest.raises(ValueError, match="remove_spectral_norm"):
        torch_to_pytree(legacy)
    with pytest.raises(ValueError, match="remove_spectral_norm"):
        torch_to_pytree(legacy.state_dict())


def test_porting_imports_torch_only_when_called(monkeypatch):
    import subprocess
    import sys

    code = "import sys, jaxdeconv.porting; print('torch' in sys.modules, 'flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    from jaxdeconv.porting import torch_to_pytree

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match=r"pip install 'jaxdeconv\[torch\]'"):
        torch_to_pytree({})

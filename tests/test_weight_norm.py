"""Weight norm: from_torch reads g and v (both torch APIs), and trainable weight norm in
the Flax NNX, Flax Linen and Equinox layers follows torch's values and gradients."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.nn.utils import parametrizations

import jaxdeconv.equinox
import jaxdeconv.flax
import jaxdeconv.linen

FRAMEWORKS = ["nnx", "linen", "equinox"]


def _legacy(module, dim=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the legacy API
        return torch.nn.utils.weight_norm(module, dim=dim)


def _port(framework, t, **kw):
    """A forward function and a gradient function of (params) for a ported module."""
    if framework == "nnx":
        layer = jaxdeconv.flax.ConvTranspose.from_torch(t, **kw)
        run = layer.__call__

        def grads(loss):
            g = nnx.grad(lambda m: loss(m.__call__))(layer)
            return {k: v[...] for k, v in g.items()}

    elif framework == "equinox":
        layer = jaxdeconv.equinox.ConvTranspose.from_torch(t, **kw)
        run = layer

        def grads(loss):
            g = eqx.filter_grad(lambda m: loss(m))(layer)
            names = ("weight", "weight_g", "weight_v", "bias")
            return {n: getattr(g, n) for n in names if getattr(g, n) is not None}

    else:
        layer, variables = jaxdeconv.linen.ConvTranspose.from_torch(t, **kw)

        def run(x):
            return layer.apply(variables, x)

        def grads(loss):
            return jax.grad(lambda p: loss(lambda x: layer.apply({"params": p}, x)))(
                variables["params"]
            )

    return layer, run, grads


def _loaded_legacy_hifigan_up():
    """The HiFi-GAN bug: a legacy weight-norm upsampler whose state is loaded from a
    checkpoint; torch's module.weight stays stale until the next forward."""
    torch.manual_seed(0)
    trained = _legacy(torch.nn.ConvTranspose1d(8, 4, 16, stride=8, padding=4))
    with torch.no_grad():
        trained.weight_g.mul_(3.0)  # training moved g and v away from the initial weight
        trained.weight_v.add_(0.1 * torch.randn_like(trained.weight_v))
    fresh = _legacy(torch.nn.ConvTranspose1d(8, 4, 16, stride=8, padding=4))
    fresh.load_state_dict(trained.state_dict())
    return fresh, trained


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_legacy_weight_norm_loaded_with_load_state_dict_ports_exactly(framework):
    fresh, trained = _loaded_legacy_hifigan_up()
    stale = fresh.weight.detach().numpy().copy()
    x = torch.randn(2, 8, 5)
    want = trained(x).detach().numpy()
    # what from_torch used to copy: module.weight, stale after load_state_dict
    assert np.abs(stale - trained.weight.detach().numpy()).max() > 0.1
    _, run, _ = _port(framework, fresh)
    np.testing.assert_allclose(run(x.numpy()), want, rtol=1e-6, atol=1e-6)
    layer = jaxdeconv.flax.ConvTranspose.from_torch(fresh)
    # folded by torch's own _weight_norm: the weight torch's forward uses, bit for bit
    np.testing.assert_array_equal(layer.weight[...], trained.weight.detach().numpy())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_parametrized_weight_norm_folds_to_torchs_weight(framework):
    torch.manual_seed(3)
    t = parametrizations.weight_norm(torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2))
    with torch.no_grad():
        t.parametrizations.weight.original0.mul_(2.0)
    x = torch.randn(1, 4, 3, 3)
    _, run, grads = _port(framework, t)
    np.testing.assert_allclose(run(x.numpy()), t(x).detach().numpy(), rtol=1e-6, atol=1e-6)
    assert sorted(grads(lambda f: jnp.sum(f(x.numpy())))) == ["bias", "weight"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("api", "dim", "channels_last"),
    [
        ("legacy", 0, False),
        ("parametrizations", 0, True),
        ("legacy", None, True),
        ("parametrizations", 2, False),
        ("legacy", -2, False),
    ],
)
def test_kept_weight_norm_matches_torch_values_and_gradients(framework, api, dim, channels_last):
    torch.manual_seed(1)
    base = torch.nn.ConvTranspose2d(6, 4, (3, 2), stride=2, padding=1, groups=2)
    t = _legacy(base, dim) if api == "legacy" else parametrizations.weight_norm(base, dim=dim)
    x = torch.randn(2, 6, 4, 3)
    y = t(x)
    gout = torch.randn(y.shape)
    (y * gout).sum().backward()
    if api == "legacy":
        g, v = t.weight_g, t.weight_v
    else:
        g, v = t.parametrizations.weight.original0, t.parametrizations.weight.original1

    _, run, grads = _port(framework, t, weight_norm="keep", channels_last=channels_last)
    xj, gj, want = x.numpy(), gout.numpy(), y.detach().numpy()
    if channels_last:
        xj, gj, want = (np.moveaxis(a, 1, -1) for a in (xj, gj, want))
    np.testing.assert_allclose(run(xj), want, rtol=1e-5, atol=1e-5)
    got = grads(lambda f: jnp.sum(f(xj) * gj))
    assert "weight" not in got
    gg, gv = np.asarray(got["weight_g"]), np.asarray(got["weight_v"])
    if channels_last:  # back to torch's layout
        gv = np.moveaxis(gv, (-2, -1), (0, 1))
        gg = gg if gg.ndim == 0 else np.moveaxis(gg, (-2, -1), (0, 1))
    assert gg.shape == tuple(g.shape) and gv.shape == tuple(v.shape)
    np.testing.assert_allclose(gg, g.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gv, v.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["bias"], t.bias.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_dim_0_is_per_input_channel_and_fresh_layers_start_like_torch():
    layer = jaxdeconv.equinox.ConvTranspose(
        6, 4, (3,), groups=2, weight_norm=True, key=jax.random.key(0)
    )
    assert layer.weight is None and layer.weight_norm_dim == 0
    assert layer.weight_g.shape == (6, 1, 1) and layer.weight_v.shape == (6, 2, 3)
    # torch.nn.utils.weight_norm starts from g = ||w|| (over all axes but dim): weight unchanged
    t = torch.nn.ConvTranspose1d(6, 4, 3, groups=2)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(np.array(layer.weight_v)))
    t = parametrizations.weight_norm(t)
    g = t.parametrizations.weight.original0.detach().numpy()
    np.testing.assert_allclose(layer.weight_g, g, rtol=1e-6)
    np.testing.assert_allclose(layer.compute_weight(), layer.weight_v, rtol=1e-6)
    last = jaxdeconv.flax.ConvTranspose(
        6, 4, (3, 2), channels_last=True, weight_norm=True, rngs=nnx.Rngs(0)
    )
    assert last.weight is None and last.weight_g.shape == (1, 1, 6, 1)  # still per C_in
    whole = jaxdeconv.flax.ConvTranspose(
        6, 4, (3,), weight_norm=True, weight_norm_dim=None, rngs=nnx.Rngs(0)
    )
    assert whole.weight_g.shape == ()
    assert sorted(nnx.state(whole, nnx.Param).keys()) == ["bias", "weight_g", "weight_v"]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(weight_norm=True, weight_norm_dim=-1), ValueError, "whole tensor"),
        (dict(weight_norm=True, weight_norm_dim=4), ValueError, "weight_norm_dim=4"),
        (dict(weight_norm_dim=1), ValueError, "needs weight_norm=True"),
        (dict(weight_norm=1), TypeError, "weight_norm must be a bool"),
        (dict(weight_norm=True, weight_norm_dim=1.5), TypeError, "weight_norm_dim"),
    ],
)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bad_weight_norm_arguments(framework, kwargs, exc, match):
    args = dict(in_channels=4, out_channels=2, kernel_size=(3, 3))
    with pytest.raises(exc, match=match):
        if framework == "nnx":
            jaxdeconv.flax.ConvTranspose(**args, **kwargs, rngs=nnx.Rngs(0))
        elif framework == "equinox":
            jaxdeconv.equinox.ConvTranspose(**args, **kwargs, key=jax.random.key(0))
        else:
            jaxdeconv.linen.ConvTranspose(**args, **kwargs)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_from_torch_refuses_what_it_cannot_read(framework):
    plain = torch.nn.ConvTranspose1d(2, 2, 3)
    with pytest.raises(ValueError, match="weight_norm='keep' but this ConvTranspose1d has no"):
        _port(framework, plain, weight_norm="keep")
    with pytest.raises(ValueError, match="weight_norm='both' is not one of"):
        _port(framework, plain, weight_norm="both")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectral = torch.nn.utils.spectral_norm(torch.nn.ConvTranspose1d(2, 2, 3))
    with pytest.raises(ValueError, match="remove_spectral_norm"):
        _port(framework, spectral)
    orphan = torch.nn.ConvTranspose1d(2, 2, 3)  # g and v but no hook: weight may be stale
    orphan.weight_g = torch.nn.Parameter(torch.ones(2, 1, 1))
    orphan.weight_v = torch.nn.Parameter(torch.ones(2, 2, 3))
    with pytest.raises(ValueError, match="cannot be told"):
        _port(framework, orphan)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_float64_module_is_explicit(framework):
    torch.manual_seed(2)
    t = torch.nn.ConvTranspose1d(3, 2, 3, stride=2).double()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"float64 but JAX's x64 mode is off.*dtype=jnp.float32"):
        _port(framework, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw JAX warning about float64 truncation
        _, run, _ = _port(framework, t, dtype=jnp.float32)
        y = run(x.float().numpy())
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, t(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        _, run, _ = _port(framework, t)
        y = run(x.numpy())
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, t(x).detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("module", "extra"),
    [("jaxdeconv.flax", "flax"), ("jaxdeconv.linen", "flax"), ("jaxdeconv.equinox", "equinox")],
)
def test_missing_extra_gives_the_install_command(monkeypatch, module, extra):
    import importlib
    import sys

    for name in [m for m in sys.modules if m == extra or m.startswith(extra + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, extra, None)
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=rf"pip install 'jaxdeconv\[{extra}\]'"):
        importlib.import_module(module)

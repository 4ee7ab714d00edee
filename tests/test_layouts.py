"""jaxdeconv.layouts against the peer layers (Flax, Equinox) and torch.

Flax and Equinox are installed in CI, so their own ``ConvTranspose`` layers are
run with the converted kernels. Haiku and Keras are not installed: their
converters are checked by replaying exactly the ``lax.conv_transpose`` call
each library's source makes (haiku/_src/conv.py ``ConvNDTranspose.__call__``
with ``to_dimension_numbers(transpose=True)``; keras/src/backend/jax/nn.py
``conv_transpose`` with ``_convert_to_lax_conv_dimension_numbers(transpose=False)``
and ``transpose_kernel=True``), in the layouts those libraries create
(Haiku ``kernel_shape + (output_channels, input_channels)``, Keras
``kernel_size + (filters, input_channel)``), against torch.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxdeconv
from jaxdeconv import layouts

# (in, out, kernel, stride, padding, output_padding, groups, dilation, input size)
CASES = {
    "1d-groups": (4, 6, (3,), (2,), (1,), (1,), 2, (1,), (5,)),
    "2d-groups-dilation": (6, 4, (3, 2), (2, 1), (1, 0), (1, 0), 2, (1, 2), (4, 3)),
    "3d": (2, 3, (2, 2, 3), (1, 2, 1), (0, 1, 1), (0, 1, 0), 1, (1, 1, 1), (3, 2, 3)),
}


def _torch_case(name, seed=0):
    cin, cout, k, s, p, op, g, d, size = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cin, cout // g, *k, generator=gen)
    b = torch.randn(cout, generator=gen)
    x = torch.randn(2, cin, *size, generator=gen)
    fn = getattr(torch.nn.functional, f"conv_transpose{len(k)}d")
    y = fn(x, w, b, stride=s, padding=p, output_padding=op, groups=g, dilation=d)
    lax_pad = jaxdeconv.to_lax_padding(p, size, k, s, d, op)
    return dict(
        w=w.numpy(), b=b.numpy(), x=x.numpy(), y=y.numpy(), cin=cin, cout=cout, k=k,
        s=s, p=p, op=op, g=g, d=d, lax_pad=lax_pad,
    )  # fmt: skip


def _to_last(a):
    return np.moveaxis(np.asarray(a), 1, -1)


def _to_first(a):
    return np.moveaxis(np.asarray(a), -1, 1)


def _close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "transpose_kernel"), [(name, False) for name in CASES] + [("2d-groups-dilation", True)]
)
def test_flax_layer_reproduces_torch(name, transpose_kernel):
    c = _torch_case(name)
    # eval_shape: the layer's own random init is replaced, so never compute it
    layer = nnx.eval_shape(
        lambda: nnx.ConvTranspose(
            c["cin"],
            c["cout"],
            c["k"],
            strides=c["s"],
            padding=c["lax_pad"],
            kernel_dilation=c["d"],
            transpose_kernel=transpose_kernel,
            rngs=nnx.Rngs(0),
        )
    )
    kernel = layouts.torch_to_flax(c["w"], groups=c["g"], transpose_kernel=transpose_kernel)
    assert kernel.shape == layer.kernel.shape
    layer.kernel = nnx.Param(kernel)
    layer.bias = nnx.Param(jnp.asarray(c["b"]))
    _close(_to_first(layer(_to_last(c["x"]))), c["y"])
    back = layouts.flax_to_torch(kernel, groups=c["g"], transpose_kernel=transpose_kernel)
    np.testing.assert_array_equal(back, c["w"])


@pytest.mark.parametrize("name", CASES)
def test_lax_conv_transpose_reproduces_torch(name):
    c = _torch_case(name)
    nd = len(c["k"])
    spatial = "DHW"[-nd:]
    y = jax.lax.conv_transpose(
        _to_last(c["x"]),
        layouts.torch_to_lax(c["w"], groups=c["g"]),
        c["s"],
        c["lax_pad"],
        rhs_dilation=c["d"],
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )
    _close(_to_first(y) + c["b"].reshape(-1, *[1] * nd), c["y"])


@pytest.mark.parametrize("name", CASES)
def test_equinox_layer_reproduces_torch(name):
    c = _torch_case(name)
    nd = len(c["k"])
    layer = eqx.filter_eval_shape(
        eqx.nn.ConvTranspose,
        nd,
        c["cin"],
        c["cout"],
        c["k"],
        stride=c["s"],
        padding=c["p"],
        output_padding=c["op"],
        dilation=c["d"],
        groups=c["g"],
        key=jax.random.key(0),
    )
    weight = layouts.torch_to_equinox(c["w"], groups=c["g"])
    assert weight.shape == layer.weight.shape
    layer = eqx.tree_at(lambda m: m.weight, layer, weight)
    layer = eqx.tree_at(lambda m: m.bias, layer, jnp.asarray(c["b"]).reshape(-1, *[1] * nd))
    _close(jax.vmap(layer)(c["x"]), c["y"])
    np.testing.assert_array_equal(layouts.equinox_to_torch(weight, groups=c["g"]), c["w"])


def test_equinox_documented_recipe_is_wrong_for_groups():
    """ANCHORS.md: equinox's ``flip(w).swapaxes(0, 1)`` recipe breaks for groups > 1."""
    c = _torch_case("2d-groups-dilation")  # C_in=6, C_out=4, groups=2
    recipe = jnp.flip(jnp.asarray(c["w"]), axis=(2, 3)).swapaxes(0, 1)
    ours = layouts.torch_to_equinox(c["w"], groups=2)
    assert recipe.shape == (2, 6, 3, 2)  # [C_out/g, C_in, *k]: not equinox's [C_out, C_in/g, *k]
    assert ours.shape == (4, 3, 3, 2)
    # with groups=1 the recipe and the converter agree
    w1 = np.random.default_rng(0).normal(size=(3, 5, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(
        layouts.torch_to_equinox(w1), jnp.flip(jnp.asarray(w1), axis=(2, 3)).swapaxes(0, 1)
    )


def _haiku_dimension_numbers(nd):
    # haiku/_src/conv.py to_dimension_numbers(nd, channels_last=True, transpose=True)
    num_dims = nd + 2
    image = (0, num_dims - 1, *range(1, num_dims - 1))
    kernel = (num_dims - 2, num_dims - 1, *range(num_dims - 2))
    return jax.lax.ConvDimensionNumbers(image, kernel, image)


def _keras_dimension_numbers(nd):
    # keras/src/backend/jax/nn.py _convert_to_lax_conv_dimension_numbers(nd, "channels_last",
    # transpose=False), as its conv_transpose uses
    num_dims = nd + 2
    image = (0, num_dims - 1, *range(1, num_dims - 1))
    kernel = (num_dims - 1, num_dims - 2, *range(num_dims - 2))
    return jax.lax.ConvDimensionNumbers(image, kernel, image)


@pytest.mark.parametrize("name", ["1d-groups", "3d"])  # haiku has no dilation
def test_haiku_semantics_reproduce_torch(name):
    c = _torch_case(name)
    nd = len(c["k"])
    w = layouts.torch_to_haiku(c["w"], groups=c["g"])
    assert w.shape == (*c["k"], c["cout"], c["cin"])  # kernel_shape + (output_channels, C_in)
    # ConvNDTranspose.__call__: lax.conv_transpose(inputs, w, strides, padding, dn), no flip
    y = jax.lax.conv_transpose(
        _to_last(c["x"]), w, c["s"], c["lax_pad"], dimension_numbers=_haiku_dimension_numbers(nd)
    )
    _close(_to_first(y + c["b"]), c["y"])
    np.testing.assert_array_equal(layouts.haiku_to_torch(w, groups=c["g"]), c["w"])


@pytest.mark.parametrize("name", CASES)
def test_keras_semantics_reproduce_torch(name):
    c = _torch_case(name)
    nd = len(c["k"])
    kernel = layouts.torch_to_keras(c["w"], groups=c["g"])
    assert kernel.shape == (*c["k"], c["cout"], c["cin"])  # kernel_size + (filters, C_in)
    # keras' jax backend conv_transpose: lax.conv_transpose(..., transpose_kernel=True)
    y = jax.lax.conv_transpose(
        _to_last(c["x"]),
        kernel,
        c["s"],
        c["lax_pad"],
        rhs_dilation=c["d"],
        dimension_numbers=_keras_dimension_numbers(nd),
        transpose_kernel=True,
    )
    _close(_to_first(y + c["b"]), c["y"])
    np.testing.assert_array_equal(layouts.keras_to_torch(kernel, groups=c["g"]), c["w"])


def test_haiku_without_flip_is_wrong():
    """ANCHORS.md: haiku never flips, so a torch kernel loaded unflipped gives other numbers."""
    c = _torch_case("1d-groups")
    unflipped = jnp.flip(layouts.torch_to_haiku(c["w"], groups=2), axis=0)
    dn = _haiku_dimension_numbers(1)
    y = jax.lax.conv_transpose(
        _to_last(c["x"]), unflipped, c["s"], c["lax_pad"], dimension_numbers=dn
    )
    assert not np.allclose(_to_first(y + c["b"]), c["y"], atol=1e-3)


def test_dense_kernel_is_block_diagonal():
    w = np.arange(1, 1 + 6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)  # C_in=6, C_out=6, g=3
    d = np.asarray(layouts.torch_to_keras(w, groups=3))  # [k, C_out, C_in]
    for gi in range(3):
        for gj in range(3):
            block = d[:, 2 * gj : 2 * gj + 2, 2 * gi : 2 * gi + 2]
            if gi == gj:
                np.testing.assert_array_equal(block, w[2 * gi : 2 * gi + 2].transpose(2, 1, 0))
            else:
                assert not block.any()


def test_torch_tensor_input_and_round_trips():
    w = torch.randn(4, 3, 2, 3, 2, requires_grad=True)  # 3-d, C_in=4, C_out=6, g=2
    for to, back in [
        (layouts.torch_to_lax, layouts.lax_to_torch),
        (layouts.torch_to_flax, layouts.flax_to_torch),
        (layouts.torch_to_equinox, layouts.equinox_to_torch),
        (layouts.torch_to_haiku, layouts.haiku_to_torch),
        (layouts.torch_to_keras, layouts.keras_to_torch),
    ]:
        np.testing.assert_array_equal(back(to(w, groups=2), groups=2), w.detach().numpy())


@pytest.mark.parametrize(
    ("fn", "arg", "kwargs", "exc", "match"),
    [
        (layouts.torch_to_lax, np.zeros((4, 2)), {}, ValueError, r"weight.shape=\(4, 2\)"),
        (layouts.torch_to_equinox, np.zeros((4, 2, 3)), dict(groups=3), ValueError, "C_in=4"),
        (layouts.torch_to_flax, np.zeros((4, 2, 3)), dict(groups=0), ValueError, "groups=0"),
        (layouts.lax_to_torch, np.zeros((3, 4, 6)), dict(groups=4), ValueError, "C_out=6"),
        (layouts.haiku_to_torch, "w", {}, TypeError, "weight must be an array"),
        (layouts.keras_to_torch, np.zeros((3, 4, 6)), dict(groups=1.5), TypeError, "groups"),
    ],
)
def test_bad_arguments(fn, arg, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(arg, **kwargs)

"""Every formulation against PyTorch (values) and the NumPy definition (extensions)."""

import jax
import numpy as np
import pytest
import torch
from cases import CASES, torch_conv_transpose

import jaxdeconv
from jaxdeconv import conv_transpose, numpy_conv_transpose

METHODS = list(jaxdeconv.FORMULATIONS)  # method="auto" is tested on its own below
TORCH_MODULE = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}


def _arrays(rng, x_shape, w_shape, groups=1, bias=True):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[1] * groups).astype(np.float32) if bias else None
    return x, w, b


def _call(jit, *args, **kw):
    if jit:
        return jax.jit(lambda *a: conv_transpose(*a, **kw))(*args)
    return conv_transpose(*args, **kw)


def _with_and_without_jit(cases):
    """Every case under jit; every other case eagerly too (eager compiles op by op)."""
    return [
        pytest.param(*c[1:], jit, id=f"{c[0]}-{'jit' if jit else 'eager'}")
        for i, c in enumerate(cases)
        for jit in ((True, False) if i % 2 == 0 else (True,))
    ]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("x_shape", "w_shape", "kw", "jit"), _with_and_without_jit(CASES))
def test_matches_torch(rng, x_shape, w_shape, kw, method, jit):
    x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
    want = torch_conv_transpose(x, w, b, **kw)
    got = np.asarray(_call(jit, x, w, b, method=method, precision="highest", **kw))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_auto_matches_torch(rng, x_shape, w_shape, kw):
    x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
    got = np.asarray(_call(True, x, w, b, precision="highest", **kw))
    np.testing.assert_allclose(got, torch_conv_transpose(x, w, b, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kw"), [c[1:] for c in CASES[::3]], ids=[c[0] for c in CASES[::3]]
)
def test_channels_last_matches_torch(rng, x_shape, w_shape, kw, method):
    x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
    want = torch_conv_transpose(x, w, b, **kw)
    n = w.ndim - 2
    x_cl = np.moveaxis(x, 1, -1)
    w_cl = np.moveaxis(w, (0, 1), (-2, -1))
    got = conv_transpose(
        x_cl, w_cl, b, method=method, channels_last=True, precision="highest", **kw
    )
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), -1, 1), want, rtol=1e-5, atol=1e-5)
    assert got.shape[1 : n + 1] == want.shape[2:]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_unbatched_matches_torch(rng, method, channels_last):
    x, w, b = _arrays(rng, (3, 4, 5), (3, 2, 3, 2), bias=True)
    want = torch_conv_transpose(x, w, b, stride=2, padding=1, output_padding=1)
    if channels_last:
        x, w = np.moveaxis(x, 0, -1), np.moveaxis(w, (0, 1), (-2, -1))
    got = np.asarray(
        conv_transpose(
            x, w, b, 2, 1, 1, method=method, channels_last=channels_last, precision="highest"
        )
    )
    if channels_last:
        got = np.moveaxis(got, -1, 0)
    assert want.ndim == 3
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("in_size", "kernel", "stride", "padding", "dilation", "output_size"),
    [
        ((4, 4), 3, 2, 1, 1, (8, 8)),
        ((4, 4), 3, 2, 1, 1, [7, 8]),
        ((5,), 4, 3, 1, 1, (14,)),
        ((3, 2, 2), 2, 2, 0, 2, (1, 2, 7, 5, 6)),  # leading batch/channel sizes are ignored
    ],
)
def test_output_size_matches_torch_module(
    rng, method, in_size, kernel, stride, padding, dilation, output_size
):
    n = len(in_size)
    x = rng.standard_normal((1, 2, *in_size)).astype(np.float32)
    mod = TORCH_MODULE[n](2, 3, kernel, stride, padding, dilation=dilation)
    with torch.no_grad():
        want = mod(torch.from_numpy(x), output_size=list(output_size)).numpy()
        w, b = mod.weight.numpy(), mod.bias.numpy()
    got = np.asarray(
        conv_transpose(
            x,
            w,
            b,
            stride,
            padding,
            dilation=dilation,
            output_size=output_size,
            method=method,
            precision="highest",
        )
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


EXTENDED = [
    ("per-side 1d", (2, 2, 5), (2, 3, 4), dict(stride=3, padding=((2, 0),))),
    (
        "per-side 2d",
        (1, 2, 4, 4),
        (2, 2, 3, 4),
        dict(stride=2, padding=((1, 0), (0, 2)), output_padding=1),
    ),
    ("per-side lists", (1, 2, 4, 4), (2, 2, 3, 3), dict(stride=2, padding=[[0, 2], [1, 1]])),
    (
        "per-side grouped 3d",
        (1, 4, 2, 3, 2),
        (4, 2, 2, 3, 2),
        dict(stride=2, padding=((1, 0), (0, 1), (1, 1)), groups=2),
    ),
    ("SAME k3 s2", (2, 2, 5, 4), (2, 3, 3, 3), dict(stride=2, padding="SAME")),
    ("SAME k4 s2", (1, 2, 5), (2, 2, 4), dict(stride=2, padding="SAME")),
    ("SAME k2 s3 (extends)", (1, 2, 4, 4), (2, 2, 2, 2), dict(stride=3, padding="same")),
    ("SAME odd total", (1, 1, 4), (1, 1, 4), dict(stride=1, padding="SAME")),
    ("SAME dilated", (1, 2, 4, 5), (2, 2, 3, 2), dict(stride=(2, 1), padding="SAME", dilation=2)),
    ("VALID k3 s2", (1, 2, 4, 4), (2, 2, 3, 3), dict(stride=2, padding="VALID")),
    ("VALID k2 s3 (extends)", (1, 2, 4), (2, 3, 2), dict(stride=3, padding="valid")),
    ("VALID grouped", (2, 4, 3, 3), (4, 2, 3, 3), dict(stride=2, padding="VALID", groups=2)),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("x_shape", "w_shape", "kw", "jit"), _with_and_without_jit(EXTENDED))
def test_extensions_match_numpy_definition(rng, x_shape, w_shape, kw, method, jit):
    x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
    want = numpy_conv_transpose(x, w, b, **kw)
    got = np.asarray(_call(jit, x, w, b, method=method, precision="highest", **kw))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_numpy_definition_matches_torch(rng):
    """The oracle itself against torch, on the hard cases."""
    for _, x_shape, w_shape, kw in CASES:
        x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
        np.testing.assert_allclose(
            numpy_conv_transpose(x, w, b, **kw),
            torch_conv_transpose(x, w, b, **kw),
            rtol=1e-5,
            atol=1e-5,
        )


def test_same_matches_lax_conv_transpose(rng):
    """SAME/VALID mean what they mean in lax.conv_transpose (gradient convention)."""
    for stride, k, padding in [
        (2, 3, "SAME"),
        (3, 2, "SAME"),
        (2, 4, "SAME"),
        (1, 4, "SAME"),
        (2, 3, "VALID"),
        (3, 2, "VALID"),
    ]:
        x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
        w = rng.standard_normal((2, 3, k, k)).astype(np.float32)
        # lax, HWIO kernel with I/O swapped and flipped by transpose_kernel=True.
        want = jax.lax.conv_transpose(
            x,
            np.moveaxis(w, (0, 1), (-1, -2)),
            (stride, stride),
            padding,
            dimension_numbers=("NCHW", "HWIO", "NCHW"),
            transpose_kernel=True,
            precision="highest",
        )
        got = conv_transpose(x, w, stride=stride, padding=padding, precision="highest")
        assert got.shape == want.shape, (stride, k, padding)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

"""Every formulation against PyTorch (values) and the NumPy definition (extensions)."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jaxdeconv
from jaxdeconv import conv_transpose, numpy_conv_transpose

METHODS = list(jaxdeconv.FORMULATIONS)  # method="auto" is tested on its own below
TORCH_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
TORCH_MODULE = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}

# (id, input shape [N, C_in, *S], weight shape [C_in, C_out/g, *k], kwargs)
CASES = [
    ("1d k3 s2 p1 op1", (2, 3, 7), (3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    ("1d vocoder k16 s8 p4", (1, 4, 6), (4, 3, 16), dict(stride=8, padding=4)),
    ("1d dilated", (2, 2, 5), (2, 2, 3), dict(stride=2, dilation=3, output_padding=2)),
    ("2d seed-like", (1, 1, 3, 3), (1, 1, 2, 2), dict()),
    ("2d dcgan k4 s2 p1", (2, 4, 4, 5), (4, 3, 4, 4), dict(stride=2, padding=1)),
    ("2d unet k2 s2", (2, 3, 5, 4), (3, 2, 2, 2), dict(stride=2)),
    ("2d k3 s2 p1 op1", (1, 2, 5, 5), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    (
        "2d per-dim args",
        (2, 2, 4, 6),
        (2, 2, 3, 2),
        dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2)),
    ),
    ("2d groups cin/g>1 cout/g>1", (2, 6, 4, 4), (6, 4, 3, 3), dict(stride=2, padding=1, groups=3)),
    ("2d depthwise", (1, 4, 5, 5), (4, 1, 3, 3), dict(stride=2, padding=1, groups=4)),
    (
        "2d dilation>stride op>=stride",
        (1, 2, 4, 4),
        (2, 2, 3, 3),
        dict(stride=2, dilation=3, output_padding=2),
    ),
    ("2d stride>kernel", (2, 2, 3, 4), (2, 2, 2, 2), dict(stride=3)),
    ("2d very large stride", (1, 1, 2, 3), (1, 2, 2, 1), dict(stride=(7, 5))),
    ("2d padding>dilation*(k-1)", (1, 2, 6, 5), (2, 2, 2, 3), dict(stride=3, padding=(3, 4))),
    (
        "2d list-of-ints args",
        (1, 2, 4, 4),
        (2, 2, 3, 3),
        dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2]),
    ),
    (
        "2d grouped dilated padded",
        (2, 4, 3, 4),
        (4, 3, 3, 2),
        dict(stride=2, padding=2, output_padding=1, groups=2, dilation=2),
    ),
    (
        "3d k3 s2 p1 op1",
        (1, 2, 3, 3, 2),
        (2, 2, 3, 3, 3),
        dict(stride=2, padding=1, output_padding=1),
    ),
    ("3d k2 s2 groups", (2, 4, 2, 3, 2), (4, 1, 2, 2, 2), dict(stride=2, groups=2)),
    (
        "3d mixed",
        (1, 2, 2, 3, 2),
        (2, 3, 2, 3, 1),
        dict(stride=(1, 2, 3), padding=(0, 1, 0), dilation=(2, 1, 1), output_padding=(1, 0, 2)),
    ),
]


def _torch(x, w, b, **kw):
    n = w.ndim - 2
    with torch.no_grad():
        return TORCH_FN[n](
            torch.from_numpy(x),
            torch.from_numpy(w),
            None if b is None else torch.from_numpy(b),
            **kw,
        ).numpy()


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
    want = _torch(x, w, b, **kw)
    got = np.asarray(_call(jit, x, w, b, method=method, precision="highest", **kw))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_auto_matches_torch(rng, x_shape, w_shape, kw):
    x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
    got = np.asarray(_call(True, x, w, b, precision="highest", **kw))
    np.testing.assert_allclose(got, _torch(x, w, b, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kw"), [c[1:] for c in CASES[::3]], ids=[c[0] for c in CASES[::3]]
)
def test_channels_last_matches_torch(rng, x_shape, w_shape, kw, method):
    x, w, b = _arrays(rng, x_shape, w_shape, kw.get("groups", 1))
    want = _torch(x, w, b, **kw)
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
    want = _torch(x, w, b, stride=2, padding=1, output_padding=1)
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
            numpy_conv_transpose(x, w, b, **kw), _torch(x, w, b, **kw), rtol=1e-5, atol=1e-5
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

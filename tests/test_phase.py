"""The zero-free phase formulation: values, plan, differentiation rules, vmap, torch grads."""

import itertools
import math
import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

import jaxdeconv
from jaxdeconv import FORMULATIONS, conv_transpose, make_spec, numpy_conv_transpose
from jaxdeconv._phases import phase_plan
from jaxdeconv.formulations.lax_based import lhs_dilated
from jaxdeconv.formulations.phase import phase
from jaxdeconv.formulations.phase import primitives as _phase


def _arrays(spec, rng, dtype=np.float64):
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    return x, w


def _reference(x, w, spec):
    """NumPy scatter-add oracle, in torch layout."""
    if spec.channels_last:
        n = spec.ndim
        x = np.moveaxis(x, -1, 1)
        w = np.moveaxis(w, (n, n + 1), (0, 1))
    y = numpy_conv_transpose(
        x,
        w,
        stride=spec.stride,
        padding=[tuple(c) for c in spec.crop],
        groups=spec.groups,
        dilation=spec.dilation,
    )
    return np.moveaxis(y, 1, -1) if spec.channels_last else y


@st.composite
def specs(draw, max_ndim=3):
    ndim = draw(st.integers(1, max_ndim))
    small = st.integers(1, 4)
    kernel = tuple(draw(small) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    in_size = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    groups = draw(st.sampled_from([1, 2, 3]))
    cig, cog = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    channels_last = draw(st.booleans())
    mode = draw(st.sampled_from(["int", "pairs", "SAME", "VALID"]))
    if mode == "int":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(ndim))
    elif mode == "pairs":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(ndim))
    else:
        padding = mode
    op = 0
    if mode in ("int", "pairs"):
        op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    batch = draw(st.integers(1, 2))
    if channels_last:
        xs, ws = (batch, *in_size, groups * cig), (*kernel, groups * cig, cog)
    else:
        xs, ws = (batch, groups * cig, *in_size), (groups * cig, cog, *kernel)
    try:
        return make_spec(xs, ws, stride, padding, op, groups, dilation, channels_last=channels_last)
    except ValueError:
        hypothesis.assume(False)


@hypothesis.settings(max_examples=max(10, hypothesis.settings().max_examples // 2))
@hypothesis.given(spec=specs(), seed=st.integers(0, 2**16))
def test_phase_matches_numpy_definition(spec, seed):
    """Any configuration (dilation vs stride, groups, SAME/VALID, extension, layouts)."""
    x, w = _arrays(spec, np.random.default_rng(seed))
    with jax.enable_x64(True):
        y = phase(jnp.asarray(x), jnp.asarray(w), spec)
        np.testing.assert_allclose(np.asarray(y), _reference(x, w, spec), rtol=1e-10, atol=1e-10)


@hypothesis.settings(max_examples=max(6, hypothesis.settings().max_examples // 4))
@hypothesis.given(spec=specs(), seed=st.integers(0, 2**16))
def test_phase_gradients_match_lhs_dilated_autodiff(spec, seed):
    x, w = _arrays(spec, np.random.default_rng(seed))
    with jax.enable_x64(True):
        x, w = jnp.asarray(x), jnp.asarray(w)
        ct = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(spec.output_shape))

        def grads(fn):
            return jax.grad(lambda x, w: jnp.vdot(fn(x, w, spec), ct), (0, 1))(x, w)

        for a, b in zip(grads(phase), grads(lhs_dilated)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize(
    "xs, cog, k, stride, padding, op, dilation, path",
    [
        ((2, 3, 6, 5), 1, 4, 2, 1, 0, 1, "upsampled"),  # bilinear x2
        ((2, 3, 5), 2, 8, 4, 2, 0, 1, "upsampled"),  # several outputs per group
        ((1, 3, 4, 3, 3), 1, 3, 1, 1, 0, 1, "upsampled"),  # stride 1, 3-d
        ((2, 3, 4, 5), 3, (4, 3), (2, 3), (1, 0), (1, 2), 1, "upsampled"),  # k < s in one dim
        ((2, 3, 6, 5), 1, 2, 2, 0, 0, 1, "per_phase"),  # no overlap
        ((2, 3, 6, 5), 2, 3, 2, 1, 1, 1, "per_phase"),  # 16 products for 9 taps
        ((2, 3, 6, 5), 1, 3, 2, 2, 1, 2, "per_phase"),  # dilation 2, stride 2: 4x
    ],
)
def test_depthwise_forward_paths_match_numpy(
    xs, cog, k, stride, padding, op, dilation, path, cl, monkeypatch
):
    """Both forms of the depthwise forward (up-sampled, per phase), where each is chosen."""
    from jaxdeconv.formulations.phase import conv

    nd, g = len(xs) - 2, xs[1]
    ks = k if isinstance(k, tuple) else (k,) * nd
    spec = make_spec(xs, (g, cog, *ks), stride, padding, op, g, dilation)
    x, w = _arrays(spec, np.random.default_rng(5))
    want = _reference(x, w, spec)
    if cl:
        x, w = np.moveaxis(x, 1, -1), np.moveaxis(w, (0, 1), (-2, -1))
        spec = make_spec(x.shape, w.shape, stride, padding, op, g, dilation, channels_last=True)
    taken = []

    def spy(name):
        orig = getattr(conv, name)
        return lambda *a, **kw: taken.append(name) or orig(*a, **kw)

    for name in ("_forward_upsampled", "_forward_per_phase"):
        monkeypatch.setattr(conv, name, spy(name))
    with jax.enable_x64(True):
        y = conv.forward_elementwise(
            jnp.asarray(x), jnp.asarray(w), spec=spec, preferred_element_type=None
        )
    y = np.moveaxis(np.asarray(y), -1, 1) if cl else np.asarray(y)
    assert taken == [f"_forward_{path}"]
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "xs, cog, k, stride, padding, op, detour",
    [
        ((1, 3, 4, 3, 3), 1, 4, 2, 1, 0, True),  # 3-d k4 s2: 8 terms
        ((2, 3, 4, 4), 2, 8, 3, 2, 1, True),  # k8 s3: 9 terms
        ((2, 3, 6, 5), 1, 4, 2, 1, 0, False),  # bilinear: 4 terms
        ((2, 3, 6, 5), 1, 3, 1, 1, 0, False),  # stride 1: the last axis is not interleaved
    ],
)
def test_depthwise_forward_channels_last_detour(
    xs, cog, k, stride, padding, op, detour, monkeypatch
):
    """With ``nhwc`` (one CPU device) a channels-first depthwise forward with 8 or more
    up-sampled terms and a strided last axis is computed channels-last, the same values."""
    from jaxdeconv.formulations.phase import conv

    nd, g = len(xs) - 2, xs[1]
    spec = make_spec(xs, (g, cog, *(k,) * nd), stride, padding, op, g)
    x, w = _arrays(spec, np.random.default_rng(7))
    calls = []
    orig = conv._apart
    monkeypatch.setattr(conv, "_apart", lambda *a: calls.append(1) or orig(*a))
    with jax.enable_x64(True):
        y = conv.forward_elementwise(
            jnp.asarray(x), jnp.asarray(w), spec=spec, preferred_element_type=None, nhwc=True
        )
    assert bool(calls) == detour
    np.testing.assert_allclose(np.asarray(y), _reference(x, w, spec), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize(
    "xs, cog, k, stride, padding, op, dilation, path",
    [
        ((2, 3, 6, 5), 1, 4, 2, 1, 0, 1, "dot"),  # bilinear x2
        ((1, 2, 3, 4, 3), 1, 4, 2, 1, 1, 1, "dot"),  # 3-d
        ((2, 3, 5), 2, 8, 4, 2, 0, 1, "dot"),  # several outputs per group
        ((2, 3, 12, 14), 1, (4, 5), (2, 3), (1, 0), (1, 2), (1, 2), "dot"),  # mixed, dilated
        ((2, 3, 6, 5), 1, 3, 2, 1, 1, 1, "loop"),  # 8 against 9 inputs' worth
        ((2, 3, 6, 5), 1, 3, 1, 1, 0, 1, "loop"),  # stride 1: one offset per tap
        ((2, 3, 6, 5), 2, 3, 2, 2, 1, 2, "loop"),  # dilation 2, stride 2
        ((1, 2, 3, 4, 3), 1, 3, 1, 1, 0, 1, "loop"),  # 3-d, stride 1
        ((2, 3, 6, 5), 1, 2, 2, 0, 0, 1, "per_tap"),  # k = s: one tap per residue
        ((2, 3, 5), 2, 4, 4, 0, 0, 1, "per_tap"),
    ],
)
def test_depthwise_weight_grad_paths_match_autodiff(
    xs, cog, k, stride, padding, op, dilation, path, cl, monkeypatch
):
    """Every form of the depthwise weight gradient (batched products, loop, per tap)."""
    from jaxdeconv.formulations.phase import conv

    nd, g = len(xs) - 2, xs[1]
    ks = k if isinstance(k, tuple) else (k,) * nd
    spec = make_spec(xs, (g, cog, *ks), stride, padding, op, g, dilation)
    rng = np.random.default_rng(6)
    x, w = _arrays(spec, rng)
    ct = rng.standard_normal(spec.output_shape)
    with jax.enable_x64(True):
        _, vjp = jax.vjp(lambda w: lhs_dilated(jnp.asarray(x), w, spec), jnp.asarray(w))
        (want,) = vjp(jnp.asarray(ct))
    if cl:
        x, ct = np.moveaxis(x, 1, -1), np.moveaxis(ct, 1, -1)
        want = np.moveaxis(np.asarray(want), (0, 1), (-2, -1))
        spec = make_spec(x.shape, want.shape, stride, padding, op, g, dilation, channels_last=True)
    taken = []

    def spy(name):
        orig = getattr(conv, name)
        return lambda *a, **kw: taken.append(name) or orig(*a, **kw)

    for name in ("_weight_grad_dot", "_weight_grad_loop", "_weight_grad_per_tap"):
        monkeypatch.setattr(conv, name, spy(name))
    # these layers are small: the loop is taken on size too (test_depthwise_weight_grad_form)
    monkeypatch.setattr(conv, "WEIGHT_GRAD_LOOP_MIN_BYTES", 0)
    with jax.enable_x64(True):
        got = conv.weight_grad_elementwise(
            jnp.asarray(x), jnp.asarray(ct), spec=spec, preferred_element_type=None
        )
    assert taken == [f"_weight_grad_{path}"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "xs, k, stride, padding, op, dilation",
    [
        ((2, 3, 1, 12), 5, 2, 1, 1, 1),
        ((2, 3, 1, 1), 4, 3, 1, 0, 2),
        ((1, 3, 1, 6, 1), 3, 2, 1, 1, 1),
    ],
)
def test_depthwise_weight_grad_forms_on_one_input_position(xs, k, stride, padding, op, dilation):
    """Every form of the depthwise weight gradient, where a dimension has one input
    position (the residue regrouping then takes an effective stride of its own)."""
    from jaxdeconv.formulations.phase import conv

    nd = len(xs) - 2
    spec = make_spec(xs, (3, 1, *(k,) * nd), stride, padding, op, 3, dilation)
    rng = np.random.default_rng(8)
    x, _ = _arrays(spec, rng)
    ct = rng.standard_normal(spec.output_shape)
    with jax.enable_x64(True):
        _, vjp = jax.vjp(
            lambda w: lhs_dilated(jnp.asarray(x), w, spec), jnp.zeros(spec.weight_shape)
        )
        (want,) = vjp(jnp.asarray(ct))
        for form in (conv._weight_grad_dot, conv._weight_grad_loop, conv._weight_grad_per_tap):
            got = form(jnp.asarray(x), jnp.asarray(ct), spec=spec, preferred_element_type=None)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10)


def test_depthwise_weight_grad_form():
    """The loop over taps only where the per-tap slices would be large (its overhead
    shows on small layers), the batched products by their bytes at any size."""
    from jaxdeconv.formulations.phase.conv import _weight_grad_form

    def form(xs, k, s, **kw):
        return _weight_grad_form(make_spec(xs, (xs[1], 1, k, k), s, groups=xs[1], **kw), 4)

    assert form((8, 128, 32, 32), 3, 1, padding=1) == "loop"  # 9 x 4 MiB
    assert form((1, 16, 8, 8), 3, 1, padding=1) == "per_tap"  # 9 x 4 KiB
    assert form((8, 64, 32, 32), 3, 2, padding=1, output_padding=1) == "loop"
    assert form((8, 128, 32, 32), 4, 2, padding=1) == "dot"
    assert form((1, 16, 8, 8), 4, 2, padding=1) == "dot"
    assert form((8, 128, 32, 32), 2, 2) == "per_tap"  # k = s: as few bytes
    # the products' operands are padded: 16 offsets + 4 planes of 11x11 against 49 taps
    # of 8x8 is 0.77x, too close (batched products 23 ms, the loop 8)
    assert form((16, 128, 8, 8), 7, 2, padding=1, output_padding=1) == "loop"


@pytest.mark.parametrize(
    "xs, ws, stride, padding, op, groups, dilation, cl",
    [
        ((2, 3, 5, 4), (3, 2, 3, 3), 2, 1, 1, 1, 1, False),  # k3 s2 p1 op1
        ((2, 4, 5), (4, 1, 4), 3, 2, 0, 4, 2, False),  # depthwise, dilated
        ((1, 4, 3, 2), (2, 3, 2, 2), (2, 3), ((1, 0), (0, 2)), 0, 2, (1, 2), True),
        ((1, 2, 3, 3, 2), (2, 2, 1, 2, 2), (2, 1, 3), 1, 0, 1, 1, False),  # 3-d
        ((2, 2, 3), (2, 2, 2), 4, 0, 3, 1, 1, False),  # stride > kernel: zero phases
        ((2, 2, 4), (2, 1, 3), 4, 1, 0, 2, 6, False),  # dilation > stride, gcd 2
    ],
)
def test_check_grads_second_order_both_modes(xs, ws, stride, padding, op, groups, dilation, cl):
    spec = make_spec(xs, ws, stride, padding, op, groups, dilation, channels_last=cl)
    with jax.enable_x64(True):
        x, w = (jnp.asarray(a) for a in _arrays(spec, np.random.default_rng(0)))
        check_grads(lambda x, w: phase(x, w, spec), (x, w), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("cl", [False, True])
def test_vmap_of_value_grad_and_jacfwd(cl):
    """vmap over the input, the weight or both (the weight folds into groups)."""
    xs, ws = ((2, 4, 5), (4, 1, 3)) if not cl else ((2, 3, 4, 4), (2, 3, 4, 1))
    spec = make_spec(xs, ws, 2, 1, 1, 2, channels_last=cl)
    with jax.enable_x64(True):
        x, w = (jnp.asarray(a) for a in _arrays(spec, np.random.default_rng(1)))
        xb, wb = jnp.stack([x, 2 * x]), jnp.stack([w, -w])
        fns = (
            lambda x, w: phase(x, w, spec),
            jax.grad(lambda x, w: jnp.sum(jnp.sin(phase(x, w, spec))), (0, 1)),
            jax.jacfwd(lambda x, w: phase(x, w, spec).sum(), (0, 1)),
        )
        for axes in [(0, None), (None, 0), (0, 0)]:
            args = (xb if axes[0] == 0 else x, wb if axes[1] == 0 else w)
            for f in fns:
                got = jax.vmap(f, axes)(*args)
                want = [f(*(a[i] if ax == 0 else a for a, ax in zip(args, axes))) for i in (0, 1)]
                for g_, w0, w1 in zip(
                    jax.tree.leaves(got), jax.tree.leaves(want[0]), jax.tree.leaves(want[1])
                ):
                    np.testing.assert_allclose(g_, np.stack([w0, w1]), rtol=1e-10, atol=1e-10)


def test_gradients_match_torch_autograd():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 4)).astype(np.float32)
    kw = dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=2, dilation=(1, 2))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, **kw)
    (yt**2).sum().backward()

    def loss(x, w):
        return jnp.sum(conv_transpose(x, w, method="phase", **kw) ** 2)

    y = conv_transpose(x, w, method="phase", **kw)
    gx, gw = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-4, atol=1e-3)


def _dilations(hlo):
    """Every lhs/rhs dilation factor of the convolutions in a StableHLO module."""
    found = re.findall(r"[lr]hs_dilate = \[([0-9, ]*)\]", hlo)
    return {int(v) for group in found for v in group.split(",")}


@pytest.mark.parametrize("lowering", ["conv", "gemm"])
def test_gradient_avoids_dilated_convolutions(lowering):
    """The slow XLA patterns never appear: no lhs-dilated or window-dilated conv."""
    spec = make_spec((2, 8, 6, 6), (8, 4, 4, 4), 2, 1)
    x, w = (jnp.asarray(a) for a in _arrays(spec, np.random.default_rng(0), np.float32))

    strategy = "convs" if lowering == "conv" else "cols"
    kernels = jaxdeconv.plan(x, w, stride=2, padding=1, strategy=strategy, method="phase").kernels
    assert kernels.lowering == lowering

    def fwd(x, w):
        params = dict(spec=spec, precision=None, preferred_element_type=None)
        return _phase.forward_p.bind(x, w, kernels=kernels, **params)

    f = jax.grad(lambda x, w: jnp.sum(fwd(x, w) ** 2), (0, 1))
    hlo = jax.jit(f).lower(x, w).as_text()
    # The conv lowering runs stride-1 convolutions; the GEMM lowering only dots.
    assert ("convolution" in hlo) == (lowering == "conv")
    assert "dot_general" in hlo
    assert _dilations(hlo) <= {1}
    # Compare: JAX's own autodiff of the lhs-dilated form uses them.
    g = jax.grad(lambda x, w: jnp.sum(lhs_dilated(x, w, spec) ** 2), (0, 1))
    assert 2 in _dilations(jax.jit(g).lower(x, w).as_text())


@pytest.mark.parametrize(
    "kernel, stride, dilation, padding",
    [
        (4, 2, 1, 1),
        (3, 2, 1, 1),
        (16, 8, 1, 4),
        (2, 2, 1, 0),
        (3, 2, 2, 1),
        (5, 3, 2, 0),
        (2, 4, 1, 0),
        (5, 4, 6, 2),
    ],
)
def test_plan_is_zero_free(kernel, stride, dilation, padding):
    """Every tap is used by exactly one phase; sub-kernels have ceil or floor(k/s') taps."""
    spec = make_spec((1, 1, 9), (1, 1, kernel), stride, padding, 0, 1, dilation)
    (phases,) = phase_plan(spec).phases
    taps = sorted(itertools.chain.from_iterable(p.taps for p in phases))
    assert taps == list(range(kernel))
    s_eff = stride // math.gcd(stride, dilation)
    for p in phases:
        assert len(p.taps) in (0, kernel // s_eff, -(-kernel // s_eff))
    if dilation == 1:
        assert sum(1 for p in phases if not p.taps) == max(stride - kernel, 0)


def test_stride_larger_than_kernel_gives_zero_phases():
    x = jnp.ones((1, 1, 3))
    w = jnp.ones((1, 1, 2))
    y = conv_transpose(x, w, stride=4, method="phase")
    np.testing.assert_array_equal(y[0, 0], [1, 1, 0, 0, 1, 1, 0, 0, 1, 1])


def test_four_spatial_dimensions():
    spec = make_spec((1, 2, 3, 2, 2, 3), (2, 1, 2, 3, 2, 2), (2, 1, 3, 2), 1, 0, 2)
    x, w = _arrays(spec, np.random.default_rng(5))
    with jax.enable_x64(True):
        y = phase(jnp.asarray(x), jnp.asarray(w), spec)
    # (lhs_dilated is no oracle here: XLA:CPU aborts on a 4-d lhs-dilated conv.)
    np.testing.assert_allclose(y, _reference(x, w, spec), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_and_preferred_element_type(dtype):
    spec = make_spec((2, 4, 5, 5), (4, 3, 4, 4), 2, 1)
    x, w = (jnp.asarray(a, dtype) for a in _arrays(spec, np.random.default_rng(0), np.float32))
    y = phase(x, w, spec)
    assert y.dtype == dtype
    y32 = phase(x, w, spec, preferred_element_type=jnp.float32)
    assert y32.dtype == jnp.float32
    want = lhs_dilated(x.astype(jnp.float32), w.astype(jnp.float32), spec)
    np.testing.assert_allclose(y32, want, rtol=1e-2, atol=1e-2)
    gx, gw = jax.grad(lambda x, w: jnp.sum(phase(x, w, spec).astype(jnp.float32)), (0, 1))(x, w)
    assert gx.dtype == dtype and gw.dtype == dtype


def test_registered_and_auto_picks_phase_on_cpu():
    assert FORMULATIONS["phase"] is phase
    spec = make_spec((1, 1, 3), (1, 1, 2), 2, 0)
    assert jax.default_backend() == "cpu"
    x, w = jnp.ones(spec.input_shape), jnp.ones(spec.weight_shape)
    assert jaxdeconv.plan(x, w, stride=2).formulation == "phase"

"""No program grows with the kernel's taps or the stride's phases.

Past ``MAX_UNROLLED`` taps or phases every kernel runs a form whose program is bounded:
the sub-pixel convolution instead of the phase convolutions, the weight gradient as one
convolution instead of a dot per tap, the depthwise kernels' loops. Checked on the
lowered programs (their size, without compiling) on every route a plan can take, and
on values against the NumPy definition with the bound forced down to 1.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeconv import _cost, make_spec, plan
from jaxdeconv._plan import PhaseKernels, _bounded, phase_kernels
from jaxdeconv.formulations.phase import conv
from jaxdeconv.formulations.phase import primitives as _phase
from jaxdeconv.testing import numpy_conv_transpose_vjp, numpy_reference

# (input, weight per kernel size, keyword arguments): a family whose taps grow with k
FAMILIES = {
    "dense 3-d k=s": ((2, 4, 2, 2, 2), (4, 4), lambda k: dict(stride=k)),
    "depthwise 3-d k=s": ((2, 4, 2, 2, 2), (4, 1), lambda k: dict(stride=k, groups=4)),
    "depthwise 2-d stride 1": ((1, 4, 12, 12), (4, 1), lambda k: dict(padding=k // 2, groups=4)),
    "depthwise 2-d k=2s": ((1, 3, 6, 6), (3, 1), lambda k: dict(stride=k // 2, groups=3)),
}
# per family: a kernel past the bound (MAX_UNROLLED taps or phases), and a far larger one
SIZES = {
    "dense 3-d k=s": (8, 16),
    "depthwise 3-d k=s": (8, 16),
    "depthwise 2-d stride 1": (9, 31),
    "depthwise 2-d k=2s": (15, 31),
}


def _spec(family, k):
    xs, (ci, cog), kw = FAMILIES[family]
    nd = len(xs) - 2
    return make_spec(xs, (ci, cog, *(k,) * nd), **kw(k))


def _lines(spec, kernels):
    """Lines of the three primitives' lowered programs (StableHLO text)."""
    x, w, g = (
        jax.ShapeDtypeStruct(s, jnp.float32)
        for s in (spec.input_shape, spec.weight_shape, spec.output_shape)
    )
    params = dict(spec=spec, precision=None, preferred_element_type=None, kernels=kernels)
    total = 0
    for prim, a, b in (
        (_phase.forward_p, x, w),
        (_phase.input_grad_p, g, w),
        (_phase.weight_grad_p, x, g),
    ):
        total += (
            jax.jit(lambda a, b, prim=prim: prim.bind(a, b, **params))
            .lower(a, b)
            .as_text()
            .count("\n")
        )
    return total


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_program_size_does_not_grow_with_the_taps(family, backend):
    """Past the bound, from hundreds to thousands of taps, the programs stay the same
    size (3-d k16 s16 is a case from PyTorch's own tests: 4096 taps and phases). The
    per-tap and per-phase programs they replace grew to 2600-6800 lines at 512 taps."""
    sizes = []
    for k in SIZES[family]:
        spec = _spec(family, k)
        assert math.prod(spec.kernel_size) > _cost.MAX_UNROLLED
        sizes.append(_lines(spec, phase_kernels(spec, np.float32, backend=backend)))
    assert sizes[1] <= 1.1 * sizes[0] + 50, sizes
    assert max(sizes) < 1000, sizes


def test_plan_bounds_the_convolution_kernels():
    """On the convolution lowering (GPU/TPU, a mesh), the plan swaps the unrolled kernels
    past the bound and says so in its label."""
    big = _spec("dense 3-d k=s", 16)
    k = phase_kernels(big, np.float32, backend="gpu")
    assert (k.forward, k.input_grad, k.weight_grad) == ("subpixel", "convs", "filter_conv")
    assert "filter-conv weight grad" in k.label
    small = make_spec((2, 4, 5, 5), (4, 4, 4, 4), stride=2, padding=1)
    k = phase_kernels(small, np.float32, backend="gpu")
    assert (k.forward, k.input_grad, k.weight_grad) == ("phase_convs", "convs", "convs")
    # the CPU fallback when the GEMM lowering cannot serve (no batch): the same bound
    empty = make_spec((0, 4, 2, 2, 2), (4, 4, 16, 16, 16), stride=16)
    assert phase_kernels(empty, np.float32).weight_grad == "filter_conv"
    assert (
        "filter-conv"
        in plan(jnp.zeros(empty.input_shape), jnp.zeros(empty.weight_shape), stride=16).label
    )


CASES = [
    # input, weight, keyword arguments
    ((2, 3, 4, 5), (3, 2, 4, 3), dict(stride=(2, 3), padding=1, output_padding=(1, 0))),
    ((2, 4, 3, 4), (4, 1, 3, 3), dict(stride=2, padding=2, output_padding=1, dilation=2, groups=4)),
    ((1, 3, 5), (3, 2, 5), dict(padding=2, groups=3)),  # stride 1
    ((2, 2, 2, 3, 2), (2, 1, 4, 3, 2), dict(stride=2, padding=1, groups=2)),
    ((2, 4, 3, 3), (4, 2, 4, 4), dict(stride=4, padding=(1, 0), groups=2)),  # k = s
]


@pytest.mark.parametrize("cl", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0]) - 2}d-{c[2]}")
def test_bounded_forms_match_numpy(case, cl, monkeypatch, rng):
    """With the bound at 1 every kernel takes its bounded form (the sub-pixel forward,
    the filter-conv weight gradient; depthwise: the looped up-sampled forward, the looped
    input and weight gradients); all agree with the float64 NumPy definition."""
    monkeypatch.setattr(_cost, "MAX_UNROLLED", 1)
    xs, ws, kw = case
    spec = make_spec(xs, ws, **kw)
    x, w, g = (
        rng.standard_normal(s) for s in (spec.input_shape, spec.weight_shape, spec.output_shape)
    )
    y_ref = numpy_reference(x, w, spec)
    dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
    if cl:
        n = spec.ndim
        x, g, y_ref, dx_ref = (np.moveaxis(a, 1, -1) for a in (x, g, y_ref, dx_ref))
        w, dw_ref = (np.moveaxis(a, (0, 1), (n, n + 1)) for a in (w, dw_ref))
        spec = make_spec(x.shape, w.shape, **kw, channels_last=True)
    depthwise = spec.groups == spec.in_channels
    kind = ("elementwise",) * 3 if depthwise else ("phase_convs", "convs", "convs")
    kernels = _bounded(PhaseKernels("conv", *kind), spec)
    if depthwise:
        assert kernels.forward == "elementwise" and kernels.weight_grad == "elementwise"
        assert conv._forward_form(spec) == "upsampled"
        assert conv._weight_grad_form(spec, 8) == "loop"
    else:
        assert (kernels.forward, kernels.weight_grad) == ("subpixel", "filter_conv")
    params = dict(spec=spec, precision=None, preferred_element_type=None, kernels=kernels)
    with jax.enable_x64(True):
        y = _phase.forward_p.bind(jnp.asarray(x), jnp.asarray(w), **params)
        dx = _phase.input_grad_p.bind(jnp.asarray(g), jnp.asarray(w), **params)
        dw = _phase.weight_grad_p.bind(jnp.asarray(x), jnp.asarray(g), **params)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)


def test_filter_conv_keeps_low_precision_and_preferred_element_type(rng):
    spec = make_spec((2, 4, 3, 3), (4, 2, 3, 3), stride=2, padding=1)
    x = jnp.asarray(rng.standard_normal(spec.input_shape), jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal(spec.output_shape), jnp.bfloat16)
    kw = dict(spec=spec, precision=None)
    assert (
        conv.weight_grad_filter_conv(x, g, preferred_element_type=None, **kw).dtype == jnp.bfloat16
    )
    dw = conv.weight_grad_filter_conv(x, g, preferred_element_type=jnp.float32, **kw)
    assert dw.dtype == jnp.float32
    ref = conv.weight_grad_convs(x, g, preferred_element_type=jnp.float32, **kw)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(ref), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cl", [False, True], ids=["cf", "cl"])
def test_depthwise_forward_form_keeps_live_phases(cl, monkeypatch, rng):
    """Past MAX_UNROLLED taps the per-phase depthwise forward loops over each live phase's
    taps and runs with up to PER_PHASE_MAX_LOOPS live phases (dilation 2, stride 4: 8 of
    64 phases live, where the up-sampled terms multiply 8x as many products); with more
    live phases, or past MAX_UNROLLED phases, the up-sampled form."""
    dilated = make_spec((1, 2, 3, 3, 3), (2, 1, 8, 8, 8), 4, 0, 1, 2, 2)
    assert math.prod(dilated.kernel_size) > _cost.MAX_UNROLLED
    assert conv._forward_form(dilated) == "per_phase"
    assert conv._forward_form(_spec("depthwise 2-d k=2s", 15)) == "upsampled"  # 49 live
    assert conv._forward_form(_spec("depthwise 3-d k=s", 16)) == "upsampled"  # 4096 phases
    x, w = rng.standard_normal(dilated.input_shape), rng.standard_normal(dilated.weight_shape)
    want = numpy_reference(x, w, dilated)
    if cl:
        x, w, want = (
            np.moveaxis(x, 1, -1),
            np.moveaxis(w, (0, 1), (-2, -1)),
            np.moveaxis(want, 1, -1),
        )
        dilated = make_spec(x.shape, w.shape, 4, 0, 1, 2, 2, channels_last=True)
    taken = []
    real = conv._forward_per_phase
    monkeypatch.setattr(
        conv, "_forward_per_phase", lambda *a, **k: taken.append(1) or real(*a, **k)
    )
    with jax.enable_x64(True):
        y = conv.forward_elementwise(
            jnp.asarray(x), jnp.asarray(w), spec=dilated, preferred_element_type=None
        )
    assert taken
    np.testing.assert_allclose(
        np.asarray(y), numpy_reference(x, w, dilated), rtol=1e-10, atol=1e-10
    )

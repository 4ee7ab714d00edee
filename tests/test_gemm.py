"""The GEMM lowerings of the phase primitives (``jaxdeconv.formulations.phase.gemm``).

On one device, channels-first layers with one group lower to GEMMs; both strategies
("cols" and "phase") and the convolution lowering must give the NumPy definition's
values and gradients, in every dimension and for every argument.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeconv
from jaxdeconv import PhaseKernels, _cost, make_spec
from jaxdeconv._cost import MAX_COLS_BYTES, batch_chunks, candidates, cols_bytes, gemm_applies
from jaxdeconv._phases import phase_plan
from jaxdeconv._plan import phase_kernels
from jaxdeconv.formulations.phase import gemm as _gemm
from jaxdeconv.formulations.phase import primitives as _phase
from jaxdeconv.testing import numpy_conv_transpose_vjp, numpy_reference
from jaxdeconv.tools.bench import LAYERS

# (input shape, weight shape, stride, padding, output_padding, dilation)
CASES = [
    ((2, 3, 5), (3, 2, 4), 2, 1, 0, 1),  # 1-d k4 s2 p1 (DCGAN-like)
    ((1, 2, 6), (2, 3, 16), 8, 4, 0, 1),  # 1-d vocoder-like, k16 s8
    ((2, 3, 4, 5), (3, 2, 4, 4), 2, 1, 0, 1),  # 2-d k4 s2 p1
    ((2, 3, 4, 4), (3, 2, 2, 2), 2, 0, 0, 1),  # k == s: no overlap
    ((1, 4, 5, 3), (4, 2, 3, 3), 2, 1, 1, 1),  # k3 s2 p1 op1: uneven phases
    ((1, 2, 4, 4), (2, 3, 3, 3), 2, 3, 1, 3),  # dilation
    ((1, 2, 3, 4), (2, 2, 2, 3), (4, 3), 0, (1, 2), 1),  # stride > kernel: empty phases
    ((1, 2, 3, 3), (2, 2, 3, 2), (2, 1), (0, 1), 0, (1, 2)),  # mixed per dimension
    ((1, 2, 3, 3, 2), (2, 2, 3, 3, 3), 2, 1, 1, 1),  # 3-d k3 s2 p1 op1
    ((2, 2, 2, 3, 2), (2, 3, 2, 2, 2), 2, 0, 0, 1),  # 3-d k2 s2
    ((1, 3, 4, 4), (3, 2, 4, 4), 2, 3, 0, 1),  # padding > output halo: negative windows
    ((2, 3, 4, 3), (3, 2, 5, 4), 1, 2, 0, 1),  # stride 1, 20 shifts: im2col per dimension
    ((1, 2, 2, 2, 2), (2, 2, 5, 4, 5), 1, 1, 0, (1, 2, 1)),  # 100 shifts: col2im too
    # over IM2COL_WINDOWS_SHIFTS shifts in a dimension: im2col by reshapes there
    ((2, 2, 7), (2, 3, 20), 1, 3, 0, 1),  # 1-d k20 s1: 5 x 4 taps
    ((1, 2, 6), (2, 2, 11), 2, 4, 1, 3),  # k11 s2 d3 op1: 4 x 3 taps, one past k
    ((1, 2, 3, 4), (2, 3, 10, 3), (1, 2), (2, 1), (0, 1), (2, 1)),  # one dimension of two
]


def _spec(case, channels_last=False):
    xs, ws, s, p, op, d = case
    if channels_last:
        xs = (xs[0], *xs[2:], xs[1])
        ws = (*ws[2:], ws[0], ws[1])
        return make_spec(xs, ws, s, p, op, 1, d, channels_last=True)
    return make_spec(xs, ws, s, p, op, 1, d)


# Each route as the plan's kernels (the planner's override, not a patched private).
ROUTES = {
    "conv": PhaseKernels("conv", "phase_convs", "convs", "convs"),
    "gemm-cols": PhaseKernels("gemm", "gemm_cols", "gemm_cols", "gemm_cols"),
    "gemm-cols-via-cl": PhaseKernels("gemm", "gemm_cols", "gemm_cols_nhwc", "gemm_cols_nhwc"),
    "gemm-cols-fwd-via-cl": PhaseKernels("gemm", "gemm_cols_nhwc", "gemm_cols", "gemm_cols"),
    "gemm-cols-per-image": PhaseKernels(
        "gemm", "gemm_cols_batched", "gemm_cols_batched", "gemm_cols_batched"
    ),
    "gemm-phase": PhaseKernels("gemm", "phase_convs", "gemm_phase", "gemm_phase"),
    "subpixel": PhaseKernels("gemm", "subpixel", "gemm_cols", "gemm_cols"),
}


def _strategy(spec, dtype=np.float32) -> str:
    """The planner's CPU kernels for ``spec``: "forward / grads"."""
    k = phase_kernels(spec, np.dtype(dtype))
    return f"{k.forward} / {k.input_grad}"


def _bind(prim, a, b, spec, kernels):
    params = dict(spec=spec, precision=None, preferred_element_type=None, kernels=kernels)
    return prim.bind(a, b, **params)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0]) - 2}d-k{c[1][2:]}-s{c[2]}")
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_values_and_gradients_match_numpy(case, route, channels_last, rng):
    spec = _spec(case, channels_last)
    lowering = ROUTES[route]
    if lowering.lowering == "gemm":
        assert gemm_applies(spec, np.float64), spec
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    g = rng.standard_normal(spec.output_shape)
    with jax.enable_x64(True):
        y = jax.jit(lambda x, w: _bind(_phase.forward_p, x, w, spec, lowering))(x, w)
        dx = jax.jit(lambda g, w: _bind(_phase.input_grad_p, g, w, spec, lowering))(g, w)
        dw = jax.jit(lambda x, g: _bind(_phase.weight_grad_p, x, g, spec, lowering))(x, g)
    assert y.dtype == dx.dtype == dw.dtype == np.float64
    np.testing.assert_allclose(y, numpy_reference(x, w, spec), rtol=1e-10, atol=1e-10)
    dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("how", ["windows", "slices"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_im2col_either_way_matches_numpy(how, channels_last, monkeypatch, rng):
    """im2col by reshapes (every dimension) or one slice per shift (every dimension):
    the gradients on every case above, whichever way the defaults pick per dimension."""
    monkeypatch.setattr(_gemm, "IM2COL_WINDOWS_SHIFTS", 0 if how == "windows" else 10**9)
    for case in CASES:
        spec = _spec(case, channels_last)
        x = rng.standard_normal(spec.input_shape)
        w = rng.standard_normal(spec.weight_shape)
        g = rng.standard_normal(spec.output_shape)
        for route in ("gemm-cols", "gemm-cols-via-cl", "gemm-cols-per-image"):
            kernels = ROUTES[route]
            with jax.enable_x64(True):  # called at once: the loop variables are current
                dx = jax.jit(lambda g, w: _bind(_phase.input_grad_p, g, w, spec, kernels))(g, w)  # noqa: B023
                dw = jax.jit(lambda x, g: _bind(_phase.weight_grad_p, x, g, spec, kernels))(x, g)  # noqa: B023
            dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10, err_msg=str(case))
            np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10, err_msg=str(case))


@pytest.mark.parametrize("route", ["cols", "phase", "cols-per-image"])
def test_half_precision_accumulates_in_float32(route, rng):
    spec = make_spec((2, 8, 6, 6), (8, 4, 4, 4), 2, 1)
    kernels = ROUTES[f"gemm-{route}"]
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    ref = numpy_reference(x, w, spec)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    y = _bind(_phase.forward_p, xb, wb, spec, kernels)
    assert y.dtype == jnp.bfloat16
    # The inputs' own rounding (2^-8 relative) bounds the error, not the 16 taps' sums.
    exact = numpy_reference(np.asarray(xb, np.float64), np.asarray(wb, np.float64), spec)
    np.testing.assert_allclose(np.asarray(y, np.float64), exact, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=5e-2, atol=1e-1)
    dx, dw = jax.grad(
        lambda x, w: jnp.sum(_bind(_phase.forward_p, x, w, spec, kernels).astype(jnp.float32) ** 2),
        (0, 1),
    )(xb, wb)
    assert dx.dtype == dw.dtype == jnp.bfloat16


def test_preferred_element_type_is_the_output_dtype(rng):
    spec = make_spec((1, 2, 4, 4), (2, 3, 2, 2), 2)
    x = jnp.asarray(rng.standard_normal(spec.input_shape), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal(spec.weight_shape), jnp.bfloat16)
    y = _phase.phase(x, w, spec, preferred_element_type=jnp.float32)
    assert y.dtype == jnp.float32
    exact = numpy_reference(np.asarray(x, np.float64), np.asarray(w, np.float64), spec)
    np.testing.assert_allclose(y, exact, rtol=1e-6, atol=1e-6)


def test_strategy_rule_on_the_bench_layers():
    """The planner's CPU kernels (``jaxdeconv._cost``'s model, built-in figures) on the
    suite's layers: GEMM + col2im forward (computed channels-last where col2im's loop
    would interleave the output's last axis with several shifts and enough channels to
    vectorize: 3d_k3, dilated) unless col2im would move far more bytes than
    the GEMM takes (large inputs with few channels: DCGAN's 64->32 at 64x64), the
    sub-pixel convolution there (k4 s2: one convolution, no padded tap); the
    im2col'd GEMM gradients, the phase GEMM gradients where the phase windows merge
    into one dense convolution with few channels. (The strided-convolution gradients
    measured 1.0-8.6x slower than the im2col'd GEMMs on the issue-13 layers.)"""
    applies = {name: gemm_applies(layer.spec(), np.float32) for name, layer in LAYERS.items()}
    assert all(applies.values())  # grouped layers too, group by group
    picks = {name: _strategy(LAYERS[name].spec()) for name in LAYERS}
    assert picks == {
        "dcgan": "gemm_cols / gemm_cols",
        "dcgan_late": "subpixel / gemm_phase",
        # k == s: col2im is a reshape. unet and 3d_k2 (batches of 8 and 2) run one GEMM
        # per image: forward a tie with the whole-batch GEMM (44.5 against 44.0 ms, 0.88
        # against 0.84), gradients faster (60.8 against 70.8 ms, 2.6 against 3.7; so
        # are 3d_k3's and dilated's, 7.9 against 9.1 ms and a tie; 2026-12-01)
        "unet": "gemm_cols_batched / gemm_cols_batched",
        "vae": "gemm_cols / gemm_cols",
        "k3_op1": "gemm_cols / gemm_cols",
        "vocoder": "gemm_cols / gemm_cols",  # C_in = 512
        "3d_k2": "gemm_cols_batched / gemm_cols_batched",
        "3d_k3": "gemm_cols_nhwc / gemm_cols_batched",  # col2im interleaves: see test_cost
        "depthwise": "elementwise / elementwise",  # structural: fused elementwise products
        "dilated": "gemm_cols_nhwc / gemm_cols_batched",
    }


def test_what_the_gemm_lowering_does_not_serve():
    base = dict(input_shape=(2, 4, 8, 8), weight_shape=(4, 2, 3, 3), stride=2)
    assert gemm_applies(make_spec(**base), np.float32)
    assert gemm_applies(make_spec((2, 8, 8, 4), (3, 3, 4, 2), 2, channels_last=True), "f4")
    # grouped (either layout: group by group); not an empty batch
    grouped = make_spec((2, 4, 8, 8), (4, 1, 3, 3), 2, groups=2)
    assert gemm_applies(grouped, np.float32)
    assert gemm_applies(
        make_spec((2, 8, 8, 4), (3, 3, 4, 1), 2, groups=2, channels_last=True), "f4"
    )
    assert not gemm_applies(make_spec((0, 4, 8, 8), (4, 2, 3, 3), 2), np.float32)
    with pytest.raises(ValueError, match="groups=1"):
        phase_kernels(grouped, np.float32, strategy="phase")


def test_cols_bound():
    """The GEMM lowering's buffer is bounded: a batch whose buffers would pass the bound
    runs in chunks (the fewest that divide it), an image whose own buffers do is refused."""
    nbytes = 2 * 8 * 8 * 2 * 16 * 4  # N * in * C_out * K * itemsize
    assert nbytes < MAX_COLS_BYTES
    small = make_spec((2, 4, 8, 8), (4, 2, 4, 4), 2)
    assert gemm_applies(small, np.float32) and batch_chunks(small, np.float32) == 1
    over = MAX_COLS_BYTES // nbytes * 2 + 2  # a batch whose cols pass the bound
    big = make_spec((over, 4, 8, 8), (4, 2, 4, 4), 2)
    chunks = batch_chunks(big, np.float32)
    assert gemm_applies(big, np.float32) and chunks > 1 and over % chunks == 0
    assert cols_bytes(big, np.float32) // chunks <= MAX_COLS_BYTES
    assert phase_kernels(big, np.float32, strategy="cols").batch_chunks == chunks
    assert "batch chunks" in phase_kernels(big, np.float32, strategy="cols").label
    assert batch_chunks(make_spec((over - 2, 4, 8, 8), (4, 2, 4, 4), 2), np.float32) == 1
    # the phase GEMM gradients compile far slower in a chunk loop: not candidates there
    assert "gemm_phase" in candidates(small, np.float32)[1]
    assert "gemm_phase" not in candidates(big, np.float32)[1]
    image = make_spec((1, 1, 2048, 2048), (1, 64, 4, 4), 2)  # one image: 17 GB of cols
    assert not gemm_applies(image, np.float32)
    assert phase_kernels(image, np.float32).lowering == "conv"


@pytest.mark.parametrize("route", list(ROUTES))
def test_output_of_gaps_only(route, rng):
    """A crop that keeps only the gaps between the taps' footprints (k1 s3 p1): every
    route gives a zero output and zero gradients, as NumPy does (the phase GEMM input
    gradient used to have no convolution to start its sum from)."""
    spec = make_spec((2, 3, 2), (3, 2, 1), 3, 1)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    g = rng.standard_normal(spec.output_shape)
    k = ROUTES[route]
    y = _bind(_phase.forward_p, x, w, spec, k)
    dx = _bind(_phase.input_grad_p, g, w, spec, k)
    dw = _bind(_phase.weight_grad_p, x, g, spec, k)
    dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
    np.testing.assert_allclose(y, numpy_reference(x, w, spec), atol=1e-6)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-6)
    np.testing.assert_allclose(dw, dw_ref, atol=1e-6)


@pytest.mark.parametrize("chunks", [2, 3])
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_batch_chunks_match_numpy(chunks, cl, rng):
    """The GEMM kernels on chunks of the batch, one after another: the same values and
    gradients (the weight gradient summed over the chunks), grouped too."""
    spec = make_spec((6, 4, 5, 3), (4, 3, 4, 3), 2, 1, (1, 0), 2)
    if cl:
        spec = dataclasses.replace(spec, channels_last=True)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    g = rng.standard_normal(spec.output_shape)
    cf = lambda a: np.moveaxis(a, -1, 1) if cl else a  # noqa: E731
    cf_w = lambda a: np.moveaxis(a, (-2, -1), (0, 1)) if cl else a  # noqa: E731
    ref = dataclasses.replace(spec, channels_last=False)
    dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(cf(x), cf_w(w), cf(g), ref)
    for fwd, grads in [("gemm_cols", "gemm_cols"), ("gemm_cols_nhwc", "gemm_cols_nhwc")]:
        k = PhaseKernels("gemm", fwd, grads, grads, batch_chunks=chunks)
        with jax.enable_x64(True):
            y = jax.jit(lambda x, w, k=k: _bind(_phase.forward_p, x, w, spec, k))(x, w)
            dx = jax.jit(lambda g, w, k=k: _bind(_phase.input_grad_p, g, w, spec, k))(g, w)
            dw = jax.jit(lambda x, g, k=k: _bind(_phase.weight_grad_p, x, g, spec, k))(x, g)
        np.testing.assert_allclose(
            cf(y), numpy_reference(cf(x), cf_w(w), ref), rtol=1e-10, atol=1e-10
        )
        np.testing.assert_allclose(cf(dx), dx_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(cf_w(dw), dw_ref, rtol=1e-10, atol=1e-10)


def test_forward_chunks_past_32_mib_of_cols(rng, monkeypatch):
    """The GEMM forward runs in batch chunks where its cols would reach 32 MiB (each call
    would page in a fresh mapping); the gradients do not, and the values are the same."""
    wavegan = make_spec((16, 256, 256), (256, 128, 25), 4, 11, 1)  # 50 MiB of cols
    assert _cost.cols_bytes(wavegan, np.float32) > _cost.FORWARD_CHUNK_ABOVE
    assert _cost.forward_chunks(wavegan, np.float32) == 4  # 12.5 MiB each
    for batch, chunks in ((14, 7), (13, 13), (8, 1), (1, 1)):  # 25 MiB at N8: whole
        assert _cost.forward_chunks(dataclasses.replace(wavegan, batch=batch), "f4") == chunks
    assert _cost.forward_chunks(make_spec((16, 256, 8, 8), (256, 128, 4, 4), 2, 1), "f4") == 1
    centernet = make_spec((8, 256, 16, 16), (256, 256, 4, 4), 2, 1)  # exactly 32 MiB
    assert _cost.forward_chunks(centernet, np.float32) == 2
    k = _cost._kernels(wavegan, "gemm_cols_nhwc", "gemm_cols", np.float32)  # as planned
    assert (k.forward_chunks, k.batch_chunks) == (4, 1)
    assert "(in 4 batch chunks undifferentiated), im2col" in k.label
    assert _cost._kernels(wavegan, "subpixel", "gemm_cols", np.float32).forward_chunks == 1
    with pytest.raises(ValueError, match="forward_chunks=0"):
        PhaseKernels("gemm", "gemm_cols", "gemm_cols", "gemm_cols", forward_chunks=0)
    # the same rule on a small layer, its bounds made small
    monkeypatch.setattr(_cost, "FORWARD_CHUNK_ABOVE", 1000)
    monkeypatch.setattr(_cost, "FORWARD_CHUNK_BYTES", 600)
    spec = make_spec((6, 2, 5), (2, 3, 4), 2, 1)  # 6 * 5 * 3 * 4 * 8 bytes = 2880
    assert _cost.forward_chunks(spec, np.float64) == 6
    x, w = rng.standard_normal(spec.input_shape), rng.standard_normal(spec.weight_shape)
    for fwd in ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched"):
        kern = _cost._kernels(spec, fwd, "gemm_cols", np.float64)
        assert kern.forward_chunks == 6 and kern.batch_chunks == 1
        with jax.enable_x64(True):
            f = jax.jit(lambda x, w, k=kern: _bind(_phase.forward_p, x, w, spec, k))
            assert "while" in f.lower(x, w).as_text()  # lax.map over the chunks
            y = f(x, w)
        np.testing.assert_allclose(y, numpy_reference(x, w, spec), rtol=1e-10, atol=1e-10)
        # differentiated, the forward runs whole (chunked it would not fuse with the
        # gradients: slower, more temporaries); the gradients are the same
        g = rng.standard_normal(spec.output_shape)

        def value_and_vjp(x, w, g, k=kern):
            y, back = jax.vjp(lambda x, w: _bind(_phase.forward_p, x, w, spec, k), x, w)
            return y, back(g)

        with jax.enable_x64(True):
            assert "while" not in jax.jit(value_and_vjp).lower(x, w, g).as_text()
            y2, (dx, dw) = jax.jit(value_and_vjp)(x, w, g)
        np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
        dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
    # a plan whose forward chunks do not divide the batch is refused before tracing
    plan = jaxdeconv.plan(x, w, stride=2, padding=1)
    kern = dataclasses.replace(plan.kernels, lowering="gemm", forward="gemm_cols", forward_chunks=4)
    bad = dataclasses.replace(plan, kernels=kern)
    with pytest.raises(ValueError, match="the forward in 4"):
        jaxdeconv.conv_transpose(x, w, stride=2, padding=1, method=bad)


def _entry(hlo: str) -> list[str]:
    lines = hlo[hlo.index("\nENTRY") :].splitlines()[1:]
    return lines[: next(i for i, line in enumerate(lines) if line.startswith("}"))]


def _entry_ops(hlo: str):
    """Each entry-computation instruction: ``(name, element count or None for a tuple,
    op, operand names, line)``."""
    for line in _entry(hlo):
        m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = (\S+) (\S+?)\((.*)", line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        dims = re.match(r"\w+\[([0-9,]*)\]", shape)
        size = int(np.prod([int(d) for d in dims.group(1).split(",") if d])) if dims else None
        yield name, size, op, re.findall(r"%([\w.-]+)", rest.split(")")[0]), line


def _shared_dot_operands(hlo: str) -> dict[str, int]:
    """Entry-computation values read by two or more dots: name -> element count."""
    sizes, uses = {}, {}
    for name, size, op, operands, line in _entry_ops(hlo):
        if size is None:
            continue
        sizes[name] = size
        if "__ynn_fusion" in line or op == "dot":
            for o in operands:
                uses[o] = uses.get(o, 0) + 1
    return {name: sizes[name] for name, n in uses.items() if n > 1 and name in sizes}


@pytest.mark.parametrize("layer", ["dcgan", "unet", "k3_op1", "dcgan_late", "vae", "3d_k3"])
def test_training_step_program(layer):
    """What a jitted forward + backward compiles to (small versions of the bench layers).

    GEMM kernels run no convolution at all, the phase convolutions one stride-1
    convolution per group of phases, the sub-pixel kernel one, and nothing is dilated.
    The gradients' shared operand (the im2col'd cotangent G, or the cotangent's phases
    Y) is built once: the two gradient primitives emit the same operations and XLA
    merges them, so both gradient GEMMs read the same buffer.
    """
    spec = LAYERS[layer].spec()
    small = make_spec(
        (2, 8, *(min(i, 7) for i in spec.input_size)),
        (8, 4, *spec.kernel_size),
        spec.stride,
        [tuple(c) for c in spec.crop],
        0,
        1,
        spec.dilation,
    )
    kernels = phase_kernels(small, np.dtype(np.float32))
    x, w = jnp.ones(small.input_shape), jnp.ones(small.weight_shape)
    g = jnp.ones(small.output_shape)
    loss = lambda x, w: jnp.sum(_phase.phase(x, w, small) ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
    convs = kernels.forward in ("phase_convs", "subpixel") or kernels.input_grad == "convs"
    n_convs = len(re.findall(r" convolution\(", hlo))
    assert bool(n_convs) == convs
    assert "lhs_dilate" not in hlo and "rhs_dilate" not in hlo
    if kernels.input_grad.startswith("gemm_cols"):
        if kernels.input_grad == "gemm_cols_nhwc":
            g = jnp.moveaxis(g, 1, -1)
            small = _gemm._cl_spec(small)
        shared = jax.eval_shape(lambda g: _gemm.cotangent_cols(g, small), g)
    elif kernels.input_grad == "gemm_phase":
        ((combo, members),) = list(phase_plan(small).convolutions())
        shared = jax.eval_shape(
            lambda g: _gemm._cotangent_phases(_gemm._to_cn(g, small), combo, members, small), g
        )
    else:
        return
    assert shared.size in _shared_dot_operands(hlo).values(), _shared_dot_operands(hlo)


def test_the_gemm_lowering_is_for_one_cpu_device(rng):
    """phase() binds the GEMM lowering on one CPU device, the convs on GPU/TPU and a mesh."""
    spec = make_spec((2, 4, 4, 4), (4, 2, 4, 4), 2, 1)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)

    def bound_lowering(x, w):
        (eqn,) = jax.make_jaxpr(lambda x, w: _phase.phase(x, w, spec))(x, w).eqns
        return eqn.params["kernels"].lowering

    assert bound_lowering(x, w) == "gemm"
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("d",))
    xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
    assert bound_lowering(xs, w) == "conv"
    # The planner's answer for GPU, asked without pretending to be on one.
    on_gpu = jaxdeconv.plan(x, w, stride=2, padding=1, backend="gpu", method="phase")
    assert on_gpu.kernels.lowering == "conv"
    assert jaxdeconv.plan(x, w, stride=2, padding=1, backend="gpu").formulation == "lhs_dilated"


def _program_size(spec, kernels):
    x, w = jnp.ones(spec.input_shape), jnp.ones(spec.weight_shape)
    loss = lambda x, w: jnp.sum(_phase.phase(x, w, spec, kernels=kernels) ** 2)  # noqa: E731
    fwd = jax.jit(lambda x, w: _phase.phase(x, w, spec, kernels=kernels)).lower(x, w)
    grad = jax.jit(jax.grad(loss, (0, 1))).lower(x, w)
    return sum(len(_entry(c.compile().as_text())) for c in (fwd, grad))


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_program_size_does_not_grow_with_taps(channels_last):
    """col2im / im2col loop over prod(ceil(k / s)) shifts, not over the taps: a 3-d
    k = s = 8 layer (512 taps) compiles to about the program of k = s = 2 (8 taps)."""
    kernels = ROUTES["gemm-cols"]

    def spec(k):
        if channels_last:
            return make_spec((1, 3, 3, 3, 2), (k, k, k, 2, 2), k, channels_last=True)
        return make_spec((1, 2, 3, 3, 3), (2, 2, k, k, k), k)

    small, big = _program_size(spec(2), kernels), _program_size(spec(8), kernels)
    assert big <= 1.2 * small + 5, (small, big)


def test_stride_1_program_does_not_grow_with_the_taps():
    """At stride 1 every tap is a shift of its own: im2col expands such a dimension by
    reshapes, not one slice per tap (a 1-d k128 stride-1 layer's gradients compiled in
    4.5 s, lax's autodiff in 0.3 s)."""
    kernels = ROUTES["gemm-cols"]
    sizes = [_program_size(make_spec((1, 2, 8), (2, 2, k), 1, k // 2), kernels) for k in (16, 256)]
    assert sizes[1] <= sizes[0] + 2, sizes  # one slice per tap: 42 -> 282


def test_channels_last_col2im_is_not_fused_with_the_transpose():
    """GEMM + col2im via NHWC: the overlap-add runs channels-last (its own fusion, along
    C_out) and the result is transposed apart, in a conditional's branch; fused, XLA:CPU
    would run the overlap-add in the channels-first order, one scalar at a time."""
    spec = make_spec((2, 8, 6, 6), (8, 4, 3, 3), 2, 3, 1, 1, 3)
    x, w = np.ones(spec.input_shape, np.float32), np.ones(spec.weight_shape, np.float32)
    for fwd, conditionals in (("gemm_cols_nhwc", 1), ("gemm_cols", 0)):
        k = PhaseKernels("gemm", fwd, "gemm_cols", "gemm_cols")
        f = jax.jit(lambda x, w, k=k: _bind(_phase.forward_p, x, w, spec, k))
        hlo = f.lower(x, w).compile().as_text()
        assert len(re.findall(r"\bconditional\(", "\n".join(_entry(hlo)))) == conditionals, fwd


def _gemm_readers(hlo: str) -> int:
    """The most entry-computation instructions reading one GEMM's result (through
    bitcasts, which read nothing)."""
    gemms, alias, readers = set(), {}, {}
    for name, _, op, operands, line in _entry_ops(hlo):
        if op == "dot" or "kind=kCustom" in line:
            gemms.add(name)
        operands = [alias.get(o, o) for o in operands]
        if op == "bitcast":
            alias[name] = operands[0]
            continue
        for o in set(operands):
            readers[o] = readers.get(o, 0) + 1
    return max([readers.get(g, 0) for g in gemms] or [0])


@pytest.mark.parametrize(
    "layer",
    [
        ((4, 16, 16, 16), (4, 4, 16, 16), 1, 0, True, "gemm_cols", "gemm_cols", 1),
        ((4, 16, 16, 16), (16, 16, 4, 4), 1, 0, False, "gemm_cols", "gemm_cols", 1),
        ((1, 16, 16, 16), (5, 5, 16, 64), 4, 1, True, "gemm_cols", "gemm_phase", 1),
        ((1, 16, 16, 16), (16, 64, 5, 5), 4, 1, False, "gemm_cols_nhwc", "gemm_cols_nhwc", 2),
        ((2, 16, 16, 16), (16, 1, 4, 4), 2, 0, False, "elementwise", "elementwise", 1),
        # k = s: each element of the cotangent is read once, nothing to keep apart
        ((2, 16, 8, 8), (16, 8, 2, 2), 2, 0, False, "gemm_cols", "gemm_cols", 0),
        # too small for a conditional to pay (SETTLE_MIN_ELEMENTS)
        ((1, 4, 4, 4), (4, 4, 3, 3), 2, 0, False, "gemm_cols", "gemm_cols", 0),
    ],
    ids=["cl-cols", "cf-cols", "cl-phase", "cf-nhwc", "depthwise", "k=s", "tiny"],
)
def test_cotangent_producer_runs_once(layer):
    """In ``grad(sum(y**2))`` the cotangent's producer is the forward's col2im; XLA:CPU
    would fuse it into each of the gradients' slices of the cotangent (one per shift,
    phase or tap), reading the forward's GEMM result once per slice and summing its
    shifts each time (a channels-last k4 stride-1 layer: 16 readers, 36 ms against 16).
    The cotangent is materialized once instead (:func:`gemm.settled`), behind one
    conditional for both gradients."""
    xs, ws, stride, op, cl, fwd, grads, conditionals = layer
    groups = xs[-1 if cl else 1] if fwd == "elementwise" else 1
    spec = make_spec(xs, ws, stride, 0, op, groups, channels_last=cl)
    k = PhaseKernels("gemm" if fwd != "elementwise" else "conv", fwd, grads, grads)
    x, w = np.ones(spec.input_shape, np.float32), np.ones(spec.weight_shape, np.float32)

    def loss(x, w):
        return jnp.sum(_bind(_phase.forward_p, x, w, spec, k) ** 2)

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
    if fwd != "elementwise":
        assert _gemm_readers(hlo) <= 2
    # the two gradients' boundaries are one (via NHWC the forward has its own)
    assert len(re.findall(r"\bconditional\(", "\n".join(_entry(hlo)))) == conditionals


def test_cotangent_is_not_settled_group_by_group():
    """Grouped layers run group by group; a conditional per group would cost compile
    time (grouped.g4: about 0.2 s) for no measured gain, so none is added."""
    spec = make_spec((2, 16, 16, 16), (16, 4, 4, 4), 2, 1, 0, 4)
    k = PhaseKernels("gemm", "gemm_cols", "gemm_cols", "gemm_cols")
    x, w = np.ones(spec.input_shape, np.float32), np.ones(spec.weight_shape, np.float32)

    def loss(x, w):
        return jnp.sum(_bind(_phase.forward_p, x, w, spec, k) ** 2)

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
    assert not re.findall(r"\bconditional\(", "\n".join(_entry(hlo)))


def test_k16_s16_3d_compiles_fast():
    """A 3-d kernel 16, stride 16 layer (from PyTorch's tests): 4096 taps, one reshape."""
    import time

    spec = make_spec((1, 2, 4, 4, 4), (2, 2, 16, 16, 16), 16)
    assert _strategy(spec).startswith("gemm_cols / gemm_cols")
    start = time.perf_counter()
    _program_size(spec, phase_kernels(spec, np.dtype(np.float32)))
    assert time.perf_counter() - start < 5


# (input shape, weight shape, stride, padding, output_padding, groups, dilation)
GROUPED = [
    ((2, 4, 5), (4, 3, 4), 2, 1, 0, 2, 1),  # 1-d k4 s2 p1, 2 groups
    ((1, 4, 4, 3), (4, 1, 4, 4), 2, 1, 0, 4, 1),  # depthwise
    ((2, 6, 3, 4), (6, 2, 3, 3), 2, 1, 1, 3, 2),  # dilated, op1
    ((1, 4, 2, 3, 2), (4, 2, 3, 3, 3), (2, 3, 1), 1, 0, 2, 1),  # 3-d, stride 1 and > k
    ((2, 20, 3, 4), (20, 3, 3, 2), 2, 0, 1, 10, 1),  # more groups than are unrolled
]


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", GROUPED, ids=lambda c: f"{len(c[0]) - 2}d-g{c[5]}")
def test_grouped_cols_match_numpy(case, cl, rng):
    """Grouped layers group by group (unrolled, or under lax.map past UNROLL_GROUPS),
    both layouts, both gradient kernels, the sub-pixel forward and GEMM + col2im both
    ways."""
    xs, ws, s, p, op, groups, d = case
    spec = make_spec(xs, ws, s, p, op, groups, d)
    if cl:
        spec = dataclasses.replace(spec, channels_last=True)
    assert gemm_applies(spec, np.float64)
    assert phase_kernels(spec, np.float64, strategy="cols").forward == "gemm_cols"
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    g = rng.standard_normal(spec.output_shape)
    cf = lambda a: np.moveaxis(a, -1, 1) if cl else a  # noqa: E731
    cf_w = lambda a: np.moveaxis(a, (-2, -1), (0, 1)) if cl else a  # noqa: E731
    kernels = [
        ("gemm_cols", "gemm_cols"),
        ("subpixel", "gemm_cols_nhwc"),
        ("gemm_cols_nhwc", "gemm_cols"),
    ]
    for fwd, grads in kernels:
        k = PhaseKernels("gemm", fwd, grads, grads)
        with jax.enable_x64(True):
            y = jax.jit(lambda x, w, k=k: _bind(_phase.forward_p, x, w, spec, k))(x, w)
            dx = jax.jit(lambda g, w, k=k: _bind(_phase.input_grad_p, g, w, spec, k))(g, w)
            dw = jax.jit(lambda x, g, k=k: _bind(_phase.weight_grad_p, x, g, spec, k))(x, g)
        ref = dataclasses.replace(spec, channels_last=False)
        xr, wr, gr = cf(x), cf_w(w), cf(g)
        np.testing.assert_allclose(cf(y), numpy_reference(xr, wr, ref), rtol=1e-10, atol=1e-10)
        dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(xr, wr, gr, ref)
        np.testing.assert_allclose(cf(dx), dx_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(cf_w(dw), dw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_group", [1, 2, 8])
def test_depthwise_plans_and_values(per_group, rng):
    """Depthwise layers on CPU: fused elementwise products forward; their gradients with one
    output per group, else the im2col GEMM gradients group by group. Values and both
    gradients against NumPy in float64."""
    kw = dict(stride=2, padding=1, groups=6)
    x = rng.standard_normal((2, 6, 5, 4))
    w = rng.standard_normal((6, per_group, 4, 3))
    kernels = jaxdeconv.plan(x, w, **kw).kernels
    grads = "elementwise" if per_group == 1 else "gemm_cols_nhwc"
    assert (kernels.forward, kernels.input_grad, kernels.weight_grad) == (
        "elementwise",
        grads,
        grads,
    )
    spec = make_spec(x.shape, w.shape, **kw)
    g = rng.standard_normal(spec.output_shape)
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda x, w: jaxdeconv.conv_transpose(x, w, **kw), x, w)
        dx, dw = vjp(g)
    np.testing.assert_allclose(y, numpy_reference(x, w, spec), rtol=1e-10, atol=1e-10)
    dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_subpixel_forward_on_random_layers(seed):
    """The sub-pixel convolution against NumPy on random layers: rank 1-3, kernel 1-6,
    stride 1-4 (also above the kernel), dilation, any padding (cropping whole result
    rows), output_padding, groups, input size 1, both layouts."""
    rng = np.random.default_rng(seed)
    kernels = ROUTES["subpixel"]
    ran = 0
    while ran < 25:
        n = int(rng.integers(1, 4))
        k = [int(rng.integers(1, 7)) for _ in range(n)]
        s = [int(rng.integers(1, 5)) for _ in range(n)]
        d = [int(rng.integers(1, 3)) for _ in range(n)]
        size = [int(rng.integers(1, 6)) for _ in range(n)]
        groups = int(rng.choice([1, 2]))
        ci, co = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        p = [int(rng.integers(0, (kk - 1) * dd + 1)) for kk, dd in zip(k, d)]
        op = [int(rng.integers(0, max(ss, dd))) for ss, dd in zip(s, d)]
        cl = bool(rng.random() < 0.3)
        xs = (2, *size, ci) if cl else (2, ci, *size)
        ws = (*k, ci, co // groups) if cl else (ci, co // groups, *k)
        try:
            spec = make_spec(xs, ws, s, p, op, groups, d, channels_last=cl)
        except ValueError:  # e.g. an output of size 0
            continue
        ran += 1
        x = rng.standard_normal(spec.input_shape)
        w = rng.standard_normal(spec.weight_shape)
        with jax.enable_x64(True):
            y = jax.jit(lambda x, w, spec=spec: _bind(_phase.forward_p, x, w, spec, kernels))(x, w)
        np.testing.assert_allclose(y, numpy_reference(x, w, spec), rtol=1e-10, atol=1e-10)


def test_subpixel_is_one_convolution_without_zero_taps():
    """k16 s8 (FCN-8s): the sub-pixel kernel is one stride-1 convolution of 2x2 taps to
    every phase, no padded tap; its program is one convolution, not one per phase."""
    from jaxdeconv.formulations.phase import subpixel

    spec = make_spec((1, 21, 8, 8), (21, 21, 16, 16), 8)
    assert subpixel.window(spec) == (4, 64, 9 * 9)
    x, w = jnp.ones(spec.input_shape), jnp.ones(spec.weight_shape)
    hlo = (
        jax.jit(lambda x, w: _bind(_phase.forward_p, x, w, spec, ROUTES["subpixel"]))
        .lower(x, w)
        .compile()
        .as_text()
    )
    assert hlo.count("convolution(") == 1
    # k3 s2 p1 op1: 2 taps of 2 residues per dimension (one of the four padded); the
    # 10 outputs start at residue 1, so they span 6 rows per dimension
    assert subpixel.window(make_spec((1, 2, 5, 5), (2, 2, 3, 3), 2, 1, 1)) == (4, 4, 36)
    # stride 1, dilation 2: the kernel's 7 taps per dimension with the window dilated,
    # not 13 with zeros between them (10 s against 0.11 s for this 3-d layer)
    spec = make_spec((1, 2, 4, 4, 4), (2, 3, 7, 7, 7), 1, 1, 0, 1, 2)
    assert subpixel.window(spec) == (7**3, 1, 14**3)
    x, w = jnp.ones(spec.input_shape), jnp.ones(spec.weight_shape)
    hlo = jax.jit(lambda x, w: _bind(_phase.forward_p, x, w, spec, ROUTES["subpixel"]))
    assert "rhs_dilate = [2, 2]" in hlo.lower(x, w).as_text()  # 3-d folded to 2-d


@pytest.mark.parametrize("chunks", [1, 2])
def test_per_image_kernels_group_by_group_and_in_batch_chunks(chunks, rng):
    """The per-image GEMMs (forward and both gradients) on a grouped layer, whose groups
    run one by one, and on chunks of the batch, against the NumPy definition."""
    spec = make_spec((4, 6, 5, 4), (6, 2, 3, 4), 2, 1, 1, 3, (1, 2))
    kernels = PhaseKernels(
        "gemm", "gemm_cols_batched", "gemm_cols_batched", "gemm_cols_batched", batch_chunks=chunks
    )
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    g = rng.standard_normal(spec.output_shape)
    with jax.enable_x64(True):
        y = _bind(_phase.forward_p, x, w, spec, kernels)
        dx = _bind(_phase.input_grad_p, g, w, spec, kernels)
        dw = _bind(_phase.weight_grad_p, x, g, spec, kernels)
    np.testing.assert_allclose(y, numpy_reference(x, w, spec), rtol=1e-10, atol=1e-10)
    dx_ref, dw_ref, _ = numpy_conv_transpose_vjp(x, w, g, spec)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)

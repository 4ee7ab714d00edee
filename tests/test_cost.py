"""The planner's cost model, its calibration and its measured mode (``jaxdeconv._cost``)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeconv
from jaxdeconv import _cost, make_spec
from jaxdeconv._plan import phase_kernels


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, and planner caches that forget earlier plans."""
    monkeypatch.setenv("JAXDECONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JAXDECONV_AUTOTUNE", raising=False)
    from jaxdeconv import _plan

    _plan._phase_kernels.cache_clear()
    _plan._make_plan.cache_clear()
    _cost._machine_for.cache_clear()
    yield tmp_path
    _plan._phase_kernels.cache_clear()
    _plan._make_plan.cache_clear()
    _cost._machine_for.cache_clear()


DCGAN_FIRST = make_spec((64, 100, 1, 1), (100, 512, 4, 4), 1)


def test_dcgan_projection_is_one_gemm():
    """The 1x1 -> 4x4 projection: one GEMM, and col2im is a reshape (no pad, no add)."""
    k = phase_kernels(DCGAN_FIRST, np.float32)
    assert k.forward == "gemm_cols" and k.input_grad.startswith("gemm_cols"), k
    assert "cost model" in k.reason
    x, w = jnp.ones(DCGAN_FIRST.input_shape), jnp.ones(DCGAN_FIRST.weight_shape)
    jaxpr = jax.make_jaxpr(lambda x, w: jaxdeconv.conv_transpose(x, w))(x, w)
    hlo = jax.jit(lambda x, w: jaxdeconv.conv_transpose(x, w)).lower(x, w).compile().as_text()
    assert hlo.count(" dot(") + hlo.count("__ynn_fusion") >= 1
    assert " add(" not in hlo and "convolution(" not in hlo, jaxpr


def test_plan_says_why():
    x = jax.ShapeDtypeStruct(DCGAN_FIRST.input_shape, "float32")
    w = jax.ShapeDtypeStruct(DCGAN_FIRST.weight_shape, "float32")
    p = jaxdeconv.plan(x, w, backend="cpu", on_mesh=False)
    assert "cost model" in p.reason and "gemm_cols" in p.reason and " ms" in p.reason


@pytest.mark.parametrize("stride", [2, 3])
def test_phase_convolutions_are_a_candidate_up_to_8_phases(stride):
    """Past PHASE_CONVS_MAX_PHASES the phase convolutions compile 3-10x longer than the
    sub-pixel convolution (2-d stride 3: 9 phases, 0.6 s) for no speed; the phase GEMM
    gradients, which can run several times faster, stay."""
    spec = make_spec((4, 32, 12, 12), (32, 32, stride + 2, stride + 2), stride, 1)
    fwd, grads = _cost.candidates(spec, np.float32)
    assert ("phase_convs" in fwd) == (stride**2 <= _cost.PHASE_CONVS_MAX_PHASES < 9)
    assert "subpixel" in fwd and "gemm_phase" in grads
    k = phase_kernels(spec, np.float32, strategy="phase")  # asked for, it runs
    assert (k.forward, k.input_grad) == ("phase_convs", "gemm_phase")


def test_estimates_are_positive_and_every_candidate_is_costed():
    spec = make_spec((8, 64, 16, 16), (64, 32, 3, 3), 2, 1, 1)
    fwd, grads = _cost.candidates(spec, np.float32)
    assert fwd == ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched", "subpixel", "phase_convs")
    assert grads == ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched", "convs", "gemm_phase")
    for which, kinds in (("forward", fwd), ("grads", grads)):
        for kind in kinds:
            assert 0 < _cost.estimate(spec, np.float32, kind, which, _cost.DEFAULT_MACHINE) < 1


def test_many_taps_take_no_unrolled_kernel():
    """Kernels that unroll per tap or per phase are no candidates for 4096 taps."""
    spec = make_spec((1, 2, 4, 4, 4), (2, 2, 16, 16, 16), 16)
    fwd, grads = _cost.candidates(spec, np.float32)
    assert fwd == ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched", "subpixel")
    assert grads == ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched")


def test_interleaving_col2im_goes_channels_last():
    """Channels-first, col2im's fused loop runs along the output's last axis, which a
    stride interleaves: one scalar at a time. The model charges that, so a strided
    channels-first layer computes GEMM + col2im channels-last (dilated.d3: 7.8 ms as it
    is, 3.2 ms so), while k == s (one shift, col2im a reshape: the transposes cost more)
    and a stride of 1 along the last axis (contiguous, vectorized) stay as they are.
    Channels-last layers have only the one kernel."""
    m_ = _cost.DEFAULT_MACHINE
    dilated = make_spec((8, 64, 32, 32), (64, 32, 3, 3), 2, 3, 1, 1, 3)
    unet = make_spec((1, 128, 64, 64), (128, 64, 2, 2), 2)
    stride_1_last = make_spec((8, 64, 32, 32), (64, 32, 3, 3), (2, 1), 1, (1, 0))
    cl = dataclasses.replace(dilated, channels_last=True)
    for spec, nhwc in ((dilated, True), (unet, False), (stride_1_last, False)):
        picked = _cost.cols_kernel(spec, np.float32, "forward")
        assert (picked == "gemm_cols_nhwc") == nhwc, (picked, spec)
    # the charge itself: scalar channels-first when the last axis interleaves, by the
    # lanes of C_out channels-last
    assert _cost._overlap_add(dilated, False, 4, m_) == 8 * _cost._overlap_add(dilated, True, 4, m_)
    assert _cost._overlap_add(stride_1_last, False, 4, m_) == _cost._overlap_add(
        stride_1_last, True, 4, m_
    )
    assert _cost.cols_kernels(cl) == ("gemm_cols",)
    assert "gemm_cols_nhwc" not in _cost.candidates(cl, np.float32)[0]


def test_col2im_one_dimension_at_a_time_is_charged_per_pass(monkeypatch):
    """Past COL2IM_FUSED_MAX_SHIFTS shifts col2im adds one dimension at a time, each
    pass written and read again, its short rows unvectorized. Charged as one fused sum,
    a 3-d k7 d2 s1 layer (343 shifts, a 360 MB cols) ran GEMM + col2im in 0.89 s
    against 0.11 s for its sub-pixel convolution, which the model did not see; charged
    per pass, the forward is a convolution."""
    from jaxdeconv.formulations.phase import gemm

    m_ = _cost.DEFAULT_MACHINE
    spec = make_spec((8, 8, 8, 8, 8), (8, 64, 7, 7, 7), 1, 1, 0, 1, 2)
    assert gemm.COL2IM_FUSED_MAX_SHIFTS < 7**3
    assert _cost.choose(spec, np.float32)[0] in ("subpixel", "phase_convs")
    per_pass = _cost._overlap_add(spec, False, 4, m_)
    monkeypatch.setattr(gemm, "COL2IM_FUSED_MAX_SHIFTS", 10**6)
    assert per_pass > 2 * _cost._overlap_add(spec, False, 4, m_)
    assert _cost.choose(spec, np.float32)[0] == "gemm_cols"  # the mispick it was


def test_one_gemm_per_image_where_the_input_outweighs_the_weight():
    """A channels-first layer runs one GEMM per image ("gemm_cols_batched": the
    activations read where they lie, the weight broadcast to every image) where the
    input is large and the weight small (Conv-TasNet's decoder, 512 -> 1 at 3999
    frames: forward 26.7 ms as one GEMM after the input's [C, N, L] copy, 4.8 ms per
    image; the gradients likewise), and not where the weight dwarfs the input (a 1x1
    latent of 64 images: 140x slower per image) or for a single image (no copy to
    save). Channels-last inputs are already read in place."""
    pick = lambda spec: _cost.cols_kernel(spec, np.float32, "forward")  # noqa: E731
    tasnet = make_spec((4, 512, 3999), (512, 1, 16), 8)
    latent = make_spec((64, 100, 1, 1), (100, 512, 4, 4), 1)
    assert pick(tasnet) == "gemm_cols_batched"
    assert _cost.choose(tasnet, np.float32)[:2] == ("gemm_cols_batched", "gemm_cols_batched")
    assert pick(latent) != "gemm_cols_batched"
    assert "gemm_cols_batched" not in _cost.choose(latent, np.float32)[:2]
    one = dataclasses.replace(tasnet, batch=1)
    m_ = _cost.DEFAULT_MACHINE
    est = {
        k: _cost.estimate(one, np.float32, k, "forward", m_)
        for k in ("gemm_cols", "gemm_cols_batched")
    }
    assert est["gemm_cols_batched"] >= est["gemm_cols"]
    cl = dataclasses.replace(tasnet, channels_last=True)
    assert "gemm_cols_batched" not in _cost.candidates(cl, np.float32)[0]
    assert jaxdeconv.plan(
        jnp.zeros(tasnet.input_shape), jnp.zeros(tasnet.weight_shape), stride=8
    ).label.startswith("phase: GEMM+col2im per image")


def test_key_changes_with_the_device_kind_and_versions(monkeypatch):
    key = _cost.machine_key()
    assert key == _cost.machine_key() and len(key) == 16
    assert _cost.machine_key("some other device") != key
    monkeypatch.setattr(jax, "__version__", "0.0.0")
    assert _cost.machine_key() != key


def test_calibration_round_trip(cache):
    assert _cost.machine() == _cost.DEFAULT_MACHINE  # no file: the defaults
    m = _cost.calibrate(seconds=0.01)
    assert m.gemm_peak > 1e8 and m.bandwidth > 1e7 and m.source.startswith("calibrated")
    files = list(cache.glob("calibration-*.json"))
    assert [f.name for f in files] == [f"calibration-{_cost.machine_key()}.json"]
    assert _cost.machine() == m
    # another jax version or device does not read it
    other = cache / f"calibration-{_cost.machine_key('other')}.json"
    assert not other.exists()
    # a corrupt or foreign file falls back to the defaults
    files[0].write_text(json.dumps({"nonsense": 1}))
    _cost._machine_for.cache_clear()
    assert _cost.machine() == _cost.DEFAULT_MACHINE


def test_calibration_scales_the_fitted_figures():
    """On the machine the figures were fitted on, calibrating gives them back; elsewhere
    each rate scales by the ratio of its measurement, so the model's fitted balance
    (GEMM against convolution against bandwidth) is kept, not replaced by raw numbers
    (which made the forward picks up to 9x slower than the fastest kernel here)."""
    d = _cost.DEFAULT_MACHINE
    same = _cost._scaled(dict(_cost.REFERENCE), "test")
    for field in ("gemm_peak", "gemm_half", "conv_peak", "conv_half", "bandwidth", "overhead"):
        assert getattr(same, field) == pytest.approx(getattr(d, field))
    faster = _cost._scaled({**_cost.REFERENCE, "gemm": 2 * _cost.REFERENCE["gemm"]}, "test")
    assert faster.gemm_peak == pytest.approx(2 * d.gemm_peak)
    assert (faster.conv_peak, faster.bandwidth) == pytest.approx((d.conv_peak, d.bandwidth))
    assert (faster.gemm_half, faster.scalar_rate) == (d.gemm_half, d.scalar_rate)
    slow_calls = _cost._scaled({**_cost.REFERENCE, "call": 1.0}, "test")  # capped at 50 us
    assert slow_calls.overhead == pytest.approx(d.overhead * 50e-6 / _cost.REFERENCE["call"])


def test_convolution_forward_kernels_need_a_margin(monkeypatch):
    """A convolution forward kernel wins only when estimated CONV_MARGIN faster than the
    GEMM kernels (XLA:CPU's convolutions have a heavy tail the model does not see)."""
    spec = make_spec((16, 128, 16, 16), (128, 64, 4, 4), 2, 1)
    fwd_c, _ = _cost.candidates(spec, np.float32)
    assert "subpixel" in fwd_c and "gemm_cols" in fwd_c

    def made_up(ratio):
        def estimate(spec, dtype, kernel, which, m_):
            if which == "grads":
                return 1.0
            return (
                ratio
                if kernel in ("subpixel", "phase_convs")
                else (1.0 if kernel == "gemm_cols" else 2.0)
            )

        return estimate

    monkeypatch.setattr(_cost, "estimate", made_up(0.95))  # 5% faster: not enough
    assert _cost.choose(spec, np.float32)[0] == "gemm_cols"
    monkeypatch.setattr(_cost, "estimate", made_up(0.85))
    assert _cost.choose(spec, np.float32)[0] == "subpixel"


def test_measured_mode_writes_and_reuses_the_cache(cache, monkeypatch):
    spec = make_spec((2, 8, 6, 6), (8, 4, 4, 4), 2, 1)
    with _cost.autotune():
        k = phase_kernels(spec, np.float32)
    assert k.reason.startswith("measured:"), k.reason
    (path,) = cache.glob("autotune-*.json")
    assert path.name == f"autotune-{_cost.machine_key()}.json"
    entry = json.loads(path.read_text())[_cost._spec_key(spec, np.float32)]
    assert entry["forward"] == k.forward and entry["grads"] == k.input_grad
    assert any(t.startswith("forward:") for t in entry["times_ms"])

    # A new process (planner caches cleared) reuses it without timing anything.
    from jaxdeconv import _plan

    _plan._phase_kernels.cache_clear()

    def no_timing(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(_cost, "_time_kernels", no_timing)
    monkeypatch.setenv("JAXDECONV_AUTOTUNE", "1")
    again = phase_kernels(spec, np.float32)
    assert again == k and again.reason == "measured (cached)"
    # Another machine key misses.
    monkeypatch.setattr(_cost, "machine_key", lambda device_kind=None: "another-machine")
    _plan._phase_kernels.cache_clear()
    with pytest.raises(AssertionError, match="measured again"):
        phase_kernels(spec, np.float32)


def test_measured_mode_inside_jit(cache, rng):
    """Planning under jit measures on concrete arrays of the layer's shapes."""
    spec = make_spec((1, 4, 5, 5), (4, 3, 3, 3), 2, 1)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    w = rng.standard_normal(spec.weight_shape).astype(np.float32)
    with _cost.autotune():
        y = jax.jit(lambda x, w: jaxdeconv.conv_transpose(x, w, stride=2, padding=1))(x, w)
    ref = jaxdeconv.testing.numpy_reference(x, w, spec)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert list(cache.glob("autotune-*.json"))


def test_machine_figures_change_the_choice():
    """The estimate follows the figures: a machine with slow GEMMs takes convolutions."""
    spec = make_spec((8, 64, 16, 16), (64, 32, 4, 4), 2, 1)
    slow_gemm = dataclasses.replace(_cost.DEFAULT_MACHINE, gemm_peak=1e9)
    fast = _cost.estimate(spec, np.float32, "gemm_cols", "forward", _cost.DEFAULT_MACHINE)
    slow = _cost.estimate(spec, np.float32, "gemm_cols", "forward", slow_gemm)
    conv = _cost.estimate(spec, np.float32, "phase_convs", "forward", slow_gemm)
    assert slow > fast and conv < slow


def test_a_tie_goes_to_the_smaller_program(monkeypatch):
    """Gradient kernels estimated within the model's resolution (TIE) go to the smaller
    program: the im2col'd GEMMs (one op per shift) over the phase GEMMs (one op per
    phase and tap); outside it the cheaper estimate wins."""
    spec = make_spec((4, 256, 256), (256, 128, 16), 8, 4)  # HiFi-GAN's k16 s8 256->128
    real = _cost.estimate
    for cols, expected in ((1.0 + _cost.TIE / 2, "gemm_cols"), (1.0 + 2 * _cost.TIE, "gemm_phase")):
        made_up = {"gemm_cols": cols, "gemm_cols_nhwc": 2.0, "gemm_cols_batched": 2.0}
        made_up.update(gemm_phase=1.0, convs=3.0)

        def estimate(spec, dtype, kernel, which, m_, made_up=made_up):
            if which == "forward":
                return real(spec, dtype, kernel, which, m_)
            return made_up[kernel]

        monkeypatch.setattr(_cost, "estimate", estimate)
        assert _cost.choose(spec, np.float32)[1] == expected

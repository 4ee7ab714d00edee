"""Tests of jaxdeconv.study: the matrix, VJP, hand-method, coverage and phase views.

Oracles: PyTorch (conv_transpose and the forward conv), the NumPy scatter-add
definition, and the size formula re-derived here by hand.
"""

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings

from jaxdeconv import FORMULATIONS, conv_transpose, make_spec, numpy_conv_transpose, study

SEED_P1 = [[7, 14], [7, 11]]


def _torch_fns(n):
    return (
        {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n],
        {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n],
    )


@st.composite
def configs(draw, max_ndim=2):
    """Random valid conv_transpose arguments, every padding form included."""
    n = draw(st.integers(1, max_ndim))
    dims = st.lists(st.integers(1, 3), min_size=n, max_size=n)
    size = tuple(draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)))
    kernel = tuple(draw(dims))
    stride = tuple(draw(dims))
    dilation = tuple(draw(dims))
    groups = draw(st.sampled_from([1, 2]))
    cig, cog = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    form = draw(st.sampled_from(["int", "pairs", "SAME", "VALID", "output_size"]))
    op = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding, output_size = 0, None
    if form in ("int", "output_size"):
        padding = tuple(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    elif form == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n))
    else:
        padding = form
    if form == "output_size":
        try:
            smallest = make_spec((1, 1, *size), (1, 1, *kernel), stride, padding, 0, 1, dilation)
        except ValueError:
            assume(False)
        output_size = tuple(
            o + draw(st.integers(0, s - 1)) for o, s in zip(smallest.output_size, stride)
        )
        op = 0
    args = dict(
        stride=stride,
        padding=padding,
        output_padding=op,
        groups=groups,
        dilation=dilation,
        output_size=output_size,
    )
    c_in = cig * groups
    try:
        spec = make_spec((2, c_in, *size), (c_in, cog, *kernel), **args)
    except ValueError:
        assume(False)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (2, c_in, *size)).astype(np.float32)
    w = rng.integers(-3, 4, (c_in, cog, *kernel)).astype(np.float32)
    return x, w, args, spec


def _explicit_op(cfg):
    """output_padding, with output_size turned into it by hand."""
    x, w, args, spec = cfg
    if args["output_size"] is None:
        return args["output_padding"]
    smallest = make_spec(
        x.shape, w.shape, args["stride"], args["padding"], 0, args["groups"], args["dilation"]
    )
    return tuple(o - m for o, m in zip(spec.output_size, smallest.output_size))


def _ct_args(args):
    a = dict(args)
    output_size = a.pop("output_size")
    return (a["stride"], a["padding"], a["output_padding"], a["groups"], a["dilation"]), output_size


# --------------------------------------------------------------------------- the seed


def test_seed_example_matches_the_blog_post():
    x, w = study.seed_example()
    assert x.shape == (1, 1, 3, 3) and w.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(x[0, 0], study.SEED_INPUT)
    np.testing.assert_array_equal(w[0, 0], study.SEED_KERNEL)
    with torch.no_grad():
        want = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()[0, 0]
    np.testing.assert_array_equal(want, study.SEED_OUTPUT)


@pytest.mark.parametrize("padding, want", [(0, study.SEED_OUTPUT), (1, SEED_P1)])
def test_seed_every_view_gives_the_seed_numbers(padding, want):
    x, w = study.seed_example()
    s = study.steps(x, w, padding=padding)
    np.testing.assert_array_equal(s.output[0, 0], want)
    np.testing.assert_array_equal(study.transpose_by_matrix(x, w, padding=padding)[0, 0], want)
    np.testing.assert_array_equal(
        np.asarray(study.transpose_by_vjp(x, w, padding=padding))[0, 0], want
    )
    np.testing.assert_array_equal(np.asarray(conv_transpose(x, w, padding=padding))[0, 0], want)
    assert study.check_matrix_statement(x, w, padding=padding).holds


def test_seed_steps_arrays():
    x, w = study.seed_example()
    s = study.steps(x, w)
    np.testing.assert_array_equal(s.zero_inserted[0, 0], study.SEED_INPUT)  # stride 1: none
    assert s.padding == ((1, 1), (1, 1))
    assert s.padded.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(s.padded[0, 0, 1:4, 1:4], study.SEED_INPUT)
    assert s.padded[0, 0].sum() == np.sum(study.SEED_INPUT)
    np.testing.assert_array_equal(s.kernel[0, 0], [[1, 0], [2, 1]])
    # output pixel (1, 2) is the window at (1, 2) times the flipped kernel.
    win = s.padded[0, 0][s.window((1, 2))]
    assert (win * s.kernel[0, 0]).sum() == study.SEED_OUTPUT[1][2]
    kinds = s.cell_kind
    assert kinds.shape == (5, 5)
    assert (kinds[1:4, 1:4] == 2).all() and (kinds == 2).sum() == 9 and (kinds == 1).sum() == 0


def test_seed_matrix_is_the_forward_conv():
    x, w = study.seed_example()
    C = study.conv_matrix(w, (3, 3))
    assert C.shape == (9, 16)
    # row for input pixel (0, 0): it reads output pixels (0,0),(0,1),(1,0),(1,1) with w.
    row = C[0].reshape(4, 4)
    np.testing.assert_array_equal(row[:2, :2], study.SEED_KERNEL)
    assert row.sum() == np.sum(study.SEED_KERNEL)
    np.testing.assert_array_equal((C.T @ x.ravel()).reshape(4, 4), study.SEED_OUTPUT)


def test_stride_two_zero_insertion_and_cell_kinds():
    x, w = study.seed_example()
    s = study.steps(x, w, stride=2, padding=1, output_padding=1)
    assert s.zero_inserted.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(s.zero_inserted[0, 0, ::2, ::2], study.SEED_INPUT)
    assert s.zero_inserted[0, 0, 1::2].sum() == 0 and s.zero_inserted[0, 0, :, 1::2].sum() == 0
    # pad = dilation*(k-1) - crop: lo 1 - 1 = 0, hi 1 - (1 - 1) = 1
    assert s.padding == ((0, 1), (0, 1))
    kinds = s.cell_kind
    assert kinds.shape == s.padded.shape[2:] == (6, 6)
    assert (kinds == 2).sum() == 9 and (kinds == 1).sum() == 25 - 9 and (kinds == 0).sum() == 11
    want = numpy_conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    np.testing.assert_allclose(s.output, want)


def test_padding_beyond_kernel_crops_the_zero_inserted_input():
    x, w = study.seed_example()
    s = study.steps(x, w, stride=3, padding=2)  # pad = 1 - 2 = -1: crop one pixel each side
    assert s.padding == ((-1, -1), (-1, -1))
    assert s.padded.shape[2:] == (5, 5)
    with torch.no_grad():
        want = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=3, padding=2)
    np.testing.assert_allclose(s.output, want.numpy())


# --------------------------------------------------------------------------- random configurations


# Each example compiles new shapes in three formulations: keep the count small in CI
# (a quarter of the profile's examples), large under HYPOTHESIS_PROFILE=long.
FEW = settings(max_examples=max(6, settings().max_examples // 4))


def _torch_expressible(padding):
    return not isinstance(padding, str) and not (padding and isinstance(padding[0], tuple))


@FEW
@given(configs(max_ndim=3))
@pytest.mark.slow
def test_every_view_equals_conv_transpose(cfg):
    """C.T @ x, the VJP, the hand-method steps, every formulation, NumPy and torch agree."""
    x, w, args, spec = cfg
    pos, output_size = _ct_args(args)
    stride, padding, _, groups, dilation = pos
    result = study.check_matrix_statement(x, w, *pos, output_size=output_size)
    assert set(result.results) == set(FORMULATIONS)
    assert result.holds, str(result)
    assert result.matrix.shape == (
        spec.in_channels * np.prod(spec.input_size),
        spec.out_channels * np.prod(spec.output_size),
    )
    assert result.by_matrix.shape == spec.output_shape
    # The definition, sharing no code: NumPy scatter-add (output_size turned into output_padding).
    op = _explicit_op(cfg)
    ref = numpy_conv_transpose(x, w, None, stride, padding, op, groups, dilation)
    np.testing.assert_allclose(result.by_matrix, ref, atol=1e-9)
    np.testing.assert_allclose(study.transpose_by_matrix(x, w, *pos, output_size=output_size), ref)
    by_vjp = study.transpose_by_vjp(x, w, *pos, output_size=output_size, precision="highest")
    np.testing.assert_allclose(np.asarray(by_vjp), ref, rtol=1e-5, atol=1e-4)
    if _torch_expressible(padding):
        ct, _ = _torch_fns(spec.ndim)
        xt, wt = torch.from_numpy(x).double(), torch.from_numpy(w).double()
        with torch.no_grad():
            want = ct(xt, wt, None, stride, padding, op, groups, dilation).numpy()
        np.testing.assert_allclose(result.by_matrix, want, atol=1e-9)

    # The hand method: its output and the sizes of its arrays, derived here by hand.
    s = study.steps(x, w, *pos, output_size=output_size)
    assert s.spec == spec
    np.testing.assert_allclose(s.output, ref, atol=1e-9)
    for a in range(spec.ndim):
        i, k, st_, d = spec.input_size[a], spec.kernel_size[a], spec.stride[a], spec.dilation[a]
        assert s.zero_inserted.shape[2 + a] == (i - 1) * st_ + 1
        assert s.dilated_kernel.shape[2 + a] == d * (k - 1) + 1
        assert s.padded.shape[2 + a] == spec.output_size[a] + d * (k - 1)
    assert s.kernel.shape == (spec.out_channels, spec.in_channels // groups, *spec.kernel_size)
    assert np.count_nonzero(s.zero_inserted) == np.count_nonzero(x)
    assert s.cell_kind.shape == s.padded.shape[2:]
    assert np.all(s.padded[:, :, s.cell_kind != 2] == 0)


@FEW
@given(configs())
def test_conv_matrix_is_the_forward_convolution(cfg):
    _, w, args, spec = cfg
    pos, output_size = _ct_args(args)
    stride, padding, op, groups, dilation = pos
    C = study.conv_matrix(w, spec.input_size, *pos, output_size=output_size)
    z = np.random.default_rng(1).integers(-3, 4, spec.output_shape).astype(np.float32)
    fz = study.forward_conv(
        z, w, spec.input_size, *pos, output_size=output_size, precision="highest"
    )
    fz = np.asarray(fz)
    assert fz.shape == spec.input_shape
    np.testing.assert_allclose(fz.reshape(len(z), -1), z.reshape(len(z), -1) @ C.T, atol=1e-4)
    # Against torch's forward convolution where its sizes agree (output_padding < stride).
    if (
        output_size is None
        and _torch_expressible(padding)
        and all(o < s_ for o, s_ in zip(op, stride))
    ):
        _, conv = _torch_fns(spec.ndim)
        zt, wt = torch.from_numpy(z).double(), torch.from_numpy(w).double()
        with torch.no_grad():
            want = conv(zt, wt, None, stride, padding, dilation, groups).numpy()
        np.testing.assert_allclose(fz, want, rtol=1e-5, atol=1e-4)


def test_the_jacobian_of_the_forward_convolution_is_c():
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 2))
    args = dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2, dilation=(1, 2))
    C = study.conv_matrix(w, (3, 4), **args)
    spec = make_spec((1, 4, 3, 4), w.shape, **args)
    jac = jax.jacobian(lambda z: study.forward_conv(z, w, (3, 4), **args, precision="highest"))(
        jnp.zeros(spec.output_shape[1:])
    )
    np.testing.assert_allclose(np.asarray(jac).reshape(C.shape), C, atol=1e-5)


@given(configs())
def test_coverage_and_phases_match_the_matrix(cfg):
    _, w, args, spec = cfg
    pos, output_size = _ct_args(args)
    stride, padding, op, _, dilation = pos
    shape_args = (spec.input_size, spec.kernel_size, stride, padding, op, dilation)
    cov = study.coverage(*shape_args, output_size=output_size)
    assert cov.shape == spec.output_size
    ones = np.ones((1, 1, *spec.kernel_size))
    C1 = study.conv_matrix(
        ones, spec.input_size, stride, padding, op, 1, dilation, output_size=output_size
    )
    np.testing.assert_array_equal(cov.ravel(), C1.sum(axis=0))  # taps reaching each pixel
    pv = study.phases(*shape_args, output_size=output_size)
    assert pv.phase.shape == spec.output_size
    assert len(pv.taps) == np.prod(spec.stride)
    # Every (input pixel, tap) link of C lands on a pixel of the tap's phase.
    Ci = study.conv_matrix(
        np.arange(1, np.prod(spec.kernel_size) + 1, dtype=float).reshape(ones.shape),
        spec.input_size,
        stride,
        padding,
        op,
        1,
        dilation,
        output_size=output_size,
    )
    taps = list(itertools.product(*(range(k) for k in spec.kernel_size)))
    for row, col in zip(*np.nonzero(Ci)):
        tap = taps[int(Ci[row, col]) - 1]
        out = np.unravel_index(col, spec.output_size)
        ph = tuple(int(p[o]) for p, o in zip(pv.phase_index, out))
        assert tap in pv.taps[ph]
        assert pv.phase[out] == np.ravel_multi_index(ph, spec.stride)
    for ph, taps_ph in pv.taps.items():
        assert len(taps_ph) == np.prod(pv.sizes[ph])
        sub = pv.sub_kernel(w, ph)
        assert sub.shape == (*w.shape[:2], *pv.sizes[ph])


# --------------------------------------------------------------------------- the checkerboard


@pytest.mark.parametrize("k, s", [(k, s) for k in range(1, 7) for s in range(1, 5)])
def test_checkerboard_exactly_when_kernel_is_not_a_multiple_of_stride(k, s):
    cov = study.coverage(12, k, stride=s)
    inner = cov[k : len(cov) - k]  # away from the borders
    assert len(set(inner.tolist())) == (1 if k % s == 0 else 2)
    pv = study.phases(12, k, stride=s)
    assert pv.uneven == (k % s != 0)
    sizes = sorted({v[0] for v in pv.sizes.values()})
    assert sizes == sorted({-(-k // s), k // s})  # ceil(k/s) and floor(k/s)
    assert sorted(set(inner.tolist())) == sizes  # each pixel sums its sub-kernel's taps


def test_coverage_2d_is_an_outer_product_and_equals_all_ones_conv_transpose():
    cov = study.coverage((4, 5), (3, 4), stride=(2, 2), padding=1)
    y = conv_transpose(jnp.ones((1, 1, 4, 5)), jnp.ones((1, 1, 3, 4)), stride=2, padding=1)
    np.testing.assert_array_equal(cov, np.asarray(y)[0, 0])
    np.testing.assert_array_equal(
        cov, np.outer(study.coverage(4, 3, stride=2, padding=1), study.coverage(5, 4, 2, 1))
    )


def test_dilation_can_leave_phases_empty():
    pv = study.phases(3, 3, stride=2, dilation=2)  # taps at 0, 2, 4: all even
    assert pv.sizes == {(0,): (3,), (1,): (0,)}
    cov = study.coverage(3, 3, stride=2, dilation=2)
    assert (cov[1::2] == 0).all() and (cov[::2] > 0).all()


def test_phase_view_on_the_seed_grid_with_stride_two():
    pv = study.phases((3, 3), (2, 2), stride=2)
    assert pv.phase.shape == (6, 6)
    np.testing.assert_array_equal(pv.phase[:2, :2], [[0, 1], [2, 3]])
    assert pv.taps[(1, 0)] == ((1, 0),)
    assert not pv.uneven
    w = np.array([[[[1.0, 2.0], [0.0, 1.0]]]])
    np.testing.assert_array_equal(pv.sub_kernel(w, (0, 1))[0, 0], [[2.0]])


# --------------------------------------------------------------------------- size formula


def test_size_formula_seed_and_general():
    lines = study.size_formula((3, 3), (2, 2))
    assert lines[0].startswith("out = (in - 1)*stride")
    assert lines[1] == "  dims 0, 1: (3 - 1)*1 - 0 - 0 + 1*(2 - 1) + 0 + 1 = 4"
    assert lines[2].startswith("in = ") and lines[3].endswith("= 3")
    lines = study.size_formula((4, 5), (3, 3), (2, 1), 1, (1, 0), (1, 2))
    assert len(lines) == 6  # two different dims, forward and back
    # (4-1)*2 - 2 + 1*2 + 1 + 1 = 8 and (5-1)*1 - 2 + 2*2 + 0 + 1 = 7, checked by hand
    assert lines[1].startswith("  dim 0:") and lines[1].endswith("= 8")
    assert lines[2].startswith("  dim 1:") and lines[2].endswith(" = 7")
    assert lines[4].endswith("= 4") and lines[5].endswith("= 5")
    same = study.size_formula(5, 2, stride=3, padding="SAME")  # hi crop -1: extends
    assert "- (-1)" in same[1] and same[1].endswith("= 15")
    lines = study.size_formula(4, 3, stride=2, padding=1, output_size=8)
    assert "+ 1 + 1 = 8" in lines[1]


# --------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_with_the_argument_named():
    x, w = study.seed_example()
    with pytest.raises(ValueError, match="weight"):
        study.conv_matrix(np.ones((2, 2)), 3)
    with pytest.raises(TypeError, match="weight"):
        study.conv_matrix("abc", 3)
    with pytest.raises(ValueError, match="output_padding"):
        study.conv_matrix(w, (3, 3), output_padding=1)
    with pytest.raises(ValueError, match="input"):
        study.steps(np.ones(3), w)
    with pytest.raises(ValueError, match="channels"):
        study.transpose_by_matrix(np.ones((1, 2, 3, 3)), w)
    with pytest.raises(ValueError, match="methods"):
        study.check_matrix_statement(x, w, methods=["nope"])
    with pytest.raises(ValueError, match=r"output\.shape"):
        study.forward_conv(np.ones((1, 1, 3, 3)), w, (3, 3))
    with pytest.raises(ValueError, match="index"):
        study.steps(x, w).window((4, 0))
    with pytest.raises(ValueError, match="phase"):
        study.phases(4, 3, stride=2).sub_kernel(np.ones((1, 1, 3)), (2,))
    with pytest.raises(TypeError, match="stride"):
        study.coverage(4, 3, stride="2")


def test_matrix_statement_reports_a_failure():
    x, w = study.seed_example()
    result = study.check_matrix_statement(x, w, methods=["vjp"], tolerance=-1.0)
    assert not result.holds and "FAILS" in str(result)

"""Autodiff of every formulation, and the gradient-as-transpose identities.

A transposed convolution is the transpose (the VJP) of a strided forward
convolution (:func:`jaxdeconv.testing.forward_conv`), and its own input gradient
is that forward convolution again. Every test here iterates over
``jaxdeconv.FORMULATIONS`` at collection time, so a formulation added to the
registry is covered without touching this file.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxdeconv
from jaxdeconv import testing

METHODS = sorted(jaxdeconv.FORMULATIONS)

# name -> channels-first shapes and PyTorch-style arguments. "torch": expressible in torch.
CASES = {
    "1d k3 s2 p1 op1": dict(x=(2, 2, 4), w=(2, 3, 3), stride=2, padding=1, output_padding=1),
    "2d groups dilation": dict(
        x=(1, 4, 3, 3), w=(4, 2, 2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2
    ),
    "2d dilation>stride op>=stride": dict(
        x=(1, 2, 3, 3), w=(2, 2, 3, 2), stride=2, padding=1, output_padding=(2, 1), dilation=(3, 2)
    ),
    "3d k2 s2 groups": dict(x=(1, 2, 2, 2, 2), w=(2, 1, 2, 2, 2), stride=2, groups=2),
    "2d per-side channels_last": dict(
        x=(2, 2, 3, 3),
        w=(2, 3, 3, 2),
        stride=2,
        padding=((1, 0), (0, 2)),
        output_padding=1,
        channels_last=True,
    ),
    "1d SAME k3 s2": dict(x=(1, 2, 4), w=(2, 2, 3), stride=2, padding="SAME"),
    "1d per-side channels_last": dict(
        x=(1, 2, 3), w=(2, 2, 3), stride=2, padding=((0, 1),), output_padding=1, channels_last=True
    ),
    # auto plans GEMM + col2im via NHWC here (the interleaving col2im: test_cost), so the
    # transforms below run through its conditional-separated transpose too
    "2d dilated, col2im via NHWC": dict(
        x=(2, 8, 6, 6), w=(8, 4, 3, 3), stride=2, padding=3, output_padding=1, dilation=3
    ),
}
TORCH_CASES = [
    name
    for name, c in CASES.items()
    if not c.get("channels_last")
    and not isinstance(c.get("padding", 0), str)
    and not (isinstance(c.get("padding"), tuple) and isinstance(c["padding"][0], tuple))
]
assert len(TORCH_CASES) >= 4


def setup(name, dtype=np.float32, seed=0):
    """(x, w, b, spec, conv_transpose kwargs) for a case, in the case's layout."""
    c = dict(CASES[name])
    xs, ws = c.pop("x"), c.pop("w")
    channels_last = c.pop("channels_last", False)
    n = len(ws) - 2
    if channels_last:
        xs = (xs[0], *xs[2:], xs[1])
        ws = (*ws[2:], ws[0], ws[1])
    args = {**dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1), **c}
    spec = jaxdeconv.make_spec(xs, ws, **args, channels_last=channels_last)
    x, w, b = testing.random_arrays(spec, dtype=dtype, seed=seed)
    kwargs = dict(args, channels_last=channels_last, precision="highest")
    assert spec.ndim == n
    return x, w, b, spec, kwargs


def conv(method, kwargs):
    """conv_transpose with the case's arguments, a function of (x, w, b)."""
    return functools.partial(jaxdeconv.conv_transpose, method=method, **kwargs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["2d groups dilation", "2d dilated, col2im via NHWC"])
def test_jit_and_vmap(method, case):
    x, w, b, spec, kwargs = setup(case)
    f = conv(method, kwargs)
    want = testing.numpy_reference(x, w, spec, b)
    testing.assert_close(f(x, w, b), want, err_msg="eager")
    # Extra leading axes of the input (two, nested vmaps), an ensemble of weights,
    # and the unbatched form vmapped over the batch: all under one jit.
    xs = np.stack([np.stack([x, 2 * x, -x]), np.stack([x[::-1], 0 * x, x + 1])])
    ws = np.stack([w, -w, 0.5 * w])

    @jax.jit
    def transformed(x, xs, ws):
        return dict(
            jit=f(x, w, b),
            leading_axes=jax.vmap(jax.vmap(f, (0, None, None)), (0, None, None))(xs, w, b),
            weights=jax.vmap(f, (None, 0, None))(x, ws, b),
            unbatched=jax.vmap(f, (0, None, None))(x, w, b),
        )

    got = transformed(x, xs, ws)
    testing.assert_close(got["jit"], want, err_msg="jit")
    testing.assert_close(got["unbatched"], want, err_msg="vmap over unbatched inputs")
    leading = [[testing.numpy_reference(xi, w, spec, b) for xi in row] for row in xs]
    testing.assert_close(got["leading_axes"], np.array(leading), err_msg="vmap, leading axes")
    weights = [testing.numpy_reference(x, wi, spec, b) for wi in ws]
    testing.assert_close(got["weights"], np.array(weights), err_msg="vmap over the weight")


PROBE = """
import jax, jax.numpy as jnp, jaxdeconv
spec = jaxdeconv.make_spec((2, 2, 5), (2, 3, 3), stride=2, padding=1, output_padding=1)
x, w, ct = jnp.ones((2, 2, 5)), jnp.ones((2, 3, 3)), jnp.ones(spec.output_shape)
fn = jaxdeconv.FORMULATIONS[{method!r}]
def f(x, w):
    return fn(x, w, spec)
def derivatives(x, w, ct):
    def loss(x, w):
        return jnp.sum(jax.grad(lambda x: jnp.sum(f(x, w) ** 2))(x))
    return jax.vjp(f, x, w)[1](ct), jax.jvp(f, (x, w), (x, w))[1], jax.grad(loss, (0, 1))(x, w)
jax.block_until_ready(jax.jit(derivatives)(x, w, ct))
print("ok")
"""


@pytest.mark.parametrize("method", METHODS)
def test_jitted_gradients_do_not_abort_xla(method):
    """jax.jit of VJP, JVP and a second derivative runs, in a fresh interpreter.

    Regression: zero_insertion built its dilated kernel with
    ``jnp.zeros(...).at[::d].set(k)``; for dilation 1 that is a full-window
    scatter, and jax.jit of the input VJP of a conv through it aborted XLA:CPU
    (jax 0.10.2) with "hlo_instruction.cc: Invalid binary instruction opcode
    map", killing the test run. Minimal: ``jax.jit(lambda x, w, ct: jax.vjp(lambda x:
    lax.conv_general_dilated(x, jnp.zeros_like(w).at[:, :, ::1].set(w), (1,), "VALID"),
    x)[1](ct)[0])``. The other tests here fail (instead of aborting) when this does.
    """
    code = PROBE.format(method=method)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (
        f"formulation {method!r}: exit status {proc.returncode}: {proc.stderr[-2000:]}"
    )


def _cotangent(spec, seed=1):
    return np.random.default_rng(seed).standard_normal(spec.output_shape).astype(np.float32)


@functools.cache
def computed(method):
    """Everything the per-case tests check, for every case, from one jit per formulation.

    Compiling is most of the cost of these tiny tests (about 0.5 s of CPU per
    jitted function here), so the quantities are computed together and the
    tests, one per (formulation, case, identity), only compare.
    """
    fn = jaxdeconv.FORMULATIONS[method]
    inputs, statics = {}, {}
    for case in CASES:
        x, w, b, spec, kwargs = setup(case)
        y = np.random.default_rng(4).standard_normal(spec.output_shape).astype(np.float32)
        inputs[case] = dict(x=x, w=w, b=b, ct=_cotangent(spec), y=y)
        statics[case] = (spec, kwargs)

    def one(a, spec, kwargs):
        f = conv(method, kwargs)
        value, pullback = jax.vjp(f, a["x"], a["w"], a["b"])
        grads = pullback(a["ct"])
        loss_grads = jax.grad(lambda *p: jnp.vdot(f(*p), a["ct"]), argnums=(0, 1, 2))(
            a["x"], a["w"], a["b"]
        )

        def forward(y_):
            return testing.forward_conv(y_, a["w"], spec, precision="highest")

        def transposed(x_):
            return fn(x_, a["w"], spec, precision="highest")

        x_aval = jax.ShapeDtypeStruct(a["x"].shape, a["x"].dtype)
        y_aval = jax.ShapeDtypeStruct(a["y"].shape, a["y"].dtype)
        return dict(
            value=value,
            grads=grads,
            loss_grads=loss_grads,
            forward_y=forward(a["y"]),
            transposed_x=transposed(a["x"]),
            vjp_of_forward=jax.vjp(forward, a["y"])[1](a["x"])[0],
            linear_transpose_of_forward=jax.linear_transpose(forward, y_aval)(a["x"])[0],
            vjp_of_transposed=jax.vjp(transposed, a["x"])[1](a["y"])[0],
            linear_transpose_of_transposed=jax.linear_transpose(transposed, x_aval)(a["y"])[0],
        )

    @jax.jit
    def everything(inputs):
        return {case: one(a, *statics[case]) for case, a in inputs.items()}

    out = jax.tree_util.tree_map(np.asarray, everything(inputs))
    return inputs, statics, out


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_reverse_mode_matches_torch_and_numpy(method, case):
    """Gradients w.r.t. input, weight and bias: the NumPy definition, and torch.autograd."""
    inputs, statics, out = computed(method)
    a, (spec, kwargs), got = inputs[case], statics[case], out[case]
    x, w, b, ct = a["x"], a["w"], a["b"], a["ct"]
    want = testing.numpy_conv_transpose_vjp(x, w, ct, spec)
    testing.assert_close(got["value"], testing.numpy_reference(x, w, spec, b), err_msg="value")
    testing.assert_close(got["grads"], want, err_msg="(dx, dw, db) vs numpy definition")
    testing.assert_close(got["loss_grads"], got["grads"], err_msg="jax.grad vs jax.vjp")
    if case in TORCH_CASES:
        torch_args = {k: kwargs[k] for k in ("stride", "padding", "output_padding", "groups")}
        value, torch_grads = testing.torch_reference(
            x, w, b, **torch_args, dilation=kwargs["dilation"], cotangent=ct
        )
        testing.assert_close(got["value"], value, err_msg="value vs torch")
        testing.assert_close(got["grads"], torch_grads, err_msg="(dx, dw, db) vs torch.autograd")


@pytest.mark.parametrize("method", METHODS)
def test_forward_mode(method):
    """jvp is the bilinear form's derivative; jacfwd equals jacrev, for x, w and b."""
    x, w, b, spec, kwargs = setup("1d k3 s2 p1 op1")
    f = conv(method, kwargs)
    rng = np.random.default_rng(2)
    tx, tw, tb = (rng.standard_normal(a.shape).astype(np.float32) for a in (x, w, b))

    @jax.jit
    def derivatives(x, w, b, tx, tw, tb):
        y, dy = jax.jvp(f, (x, w, b), (tx, tw, tb))
        fwd = jax.jacfwd(f, argnums=(0, 1, 2))(x, w, b)
        rev = jax.jacrev(f, argnums=(0, 1, 2))(x, w, b)
        return y, dy, fwd, rev

    y, dy, fwd, rev = derivatives(x, w, b, tx, tw, tb)
    want = (
        testing.numpy_reference(tx, w, spec)
        + testing.numpy_reference(x, tw, spec)
        + tb[None, :, None]
    )
    testing.assert_close(dy, want, err_msg="jvp")
    testing.assert_close(y, testing.numpy_reference(x, w, spec, b), err_msg="jvp primal")
    testing.assert_close(fwd, rev, err_msg="jacfwd vs jacrev")
    # d y / d b is the identity on channels, broadcast over batch and positions.
    db = np.asarray(fwd[2])
    assert db.shape == (*spec.output_shape, spec.out_channels)
    positions = spec.batch * spec.output_size[0]
    np.testing.assert_array_equal(db.sum(axis=(0, 2)), np.eye(spec.out_channels) * positions)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["2d dilation>stride op>=stride", "2d dilated, col2im via NHWC"])
def test_second_order_matches_torch(method, case):
    """Hessian-vector products of 0.5 * |y|^2 (forward-over-reverse and reverse-over-reverse)."""
    import torch

    x, w, b, _, kwargs = setup(case)
    f = conv(method, kwargs)
    rng = np.random.default_rng(3)
    tangents = tuple(rng.standard_normal(a.shape).astype(np.float32) for a in (x, w, b))

    def loss(x_, w_, b_):
        return 0.5 * jnp.sum(f(x_, w_, b_) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))

    @jax.jit
    def hvps(primals, tangents):
        _, hvp_fwd = jax.jvp(grad, primals, tangents)
        _, pullback = jax.vjp(grad, *primals)
        return hvp_fwd, pullback(tangents)  # the Hessian is symmetric

    hvp_fwd, hvp_rev = hvps((x, w, b), tangents)

    leaves = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in (x, w, b)]
    targs = {k: kwargs[k] for k in ("stride", "padding", "output_padding", "groups", "dilation")}
    y = torch.nn.functional.conv_transpose2d(*leaves, **targs)
    g = torch.autograd.grad(0.5 * (y**2).sum(), leaves, create_graph=True)
    want = torch.autograd.grad(g, leaves, [torch.tensor(t, dtype=torch.float64) for t in tangents])
    want = tuple(t.numpy() for t in want)
    testing.assert_close(hvp_fwd, want, err_msg="forward-over-reverse HVP vs torch")
    testing.assert_close(hvp_rev, want, err_msg="reverse-over-reverse HVP vs torch")


@pytest.mark.parametrize("case", ["1d per-side channels_last"])
@pytest.mark.parametrize("method", METHODS)
def test_check_grads_float64(method, case):
    """jax.test_util.check_grads, order 2, both modes, against finite differences in float64."""
    with jax.enable_x64(True):
        x, w, b, _, kwargs = setup(case, dtype=np.float64)
        f = jax.jit(conv(method, kwargs))
        assert f(x, w, b).dtype == jnp.float64
        check_grads(f, (x, w, b), order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


# The gradient-as-transpose identities, one test each, for every formulation and case.


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_vjp_of_forward_conv_is_conv_transpose(method, case):
    _, _, out = computed(method)
    got = out[case]
    testing.assert_close(got["vjp_of_forward"], got["transposed_x"])
    testing.assert_close(
        got["linear_transpose_of_forward"],
        got["transposed_x"],
        err_msg="jax.linear_transpose of the forward conv",
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_adjoint_identity(method, case):
    """<conv(y), x> == <y, conv_transpose(x)> on random tensors."""
    inputs, _, out = computed(method)
    x, y, got = inputs[case]["x"], inputs[case]["y"], out[case]
    lhs = np.vdot(got["forward_y"].astype(np.float64), x.astype(np.float64))
    rhs = np.vdot(y.astype(np.float64), got["transposed_x"].astype(np.float64))
    bound = np.linalg.norm(x) * np.linalg.norm(got["transposed_x"])
    assert abs(lhs - rhs) <= 1e-5 * bound, (lhs, rhs)
    assert abs(lhs) > 1e-3 * bound  # not trivially zero


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_input_gradient_is_strided_forward_conv(method, case):
    _, _, out = computed(method)
    got = out[case]
    testing.assert_close(got["vjp_of_transposed"], got["forward_y"])
    testing.assert_close(
        got["linear_transpose_of_transposed"],
        got["forward_y"],
        err_msg="jax.linear_transpose of conv_transpose",
    )


def transpose_pair(method, case):
    x, w, _, spec, _ = setup(case)
    fn = jaxdeconv.FORMULATIONS[method]

    def forward(y):
        return testing.forward_conv(y, w, spec, precision="highest")

    def transposed(x_):
        return fn(x_, jnp.asarray(w), spec, precision="highest")

    y = np.random.default_rng(4).standard_normal(spec.output_shape).astype(np.float32)
    return x, y, forward, transposed


DENSE_CASES = ("1d k3 s2 p1 op1", "2d per-side channels_last", "1d SAME k3 s2")


@pytest.mark.parametrize("method", METHODS)
def test_dense_jacobian_is_transpose_of_forward_conv_jacobian(method):
    pairs = {case: transpose_pair(method, case) for case in DENSE_CASES}

    @jax.jit
    def jacobians(arrays):
        out = {}
        for case, (x, y) in arrays.items():
            _, _, forward, transposed = pairs[case]
            out[case] = (jax.jacfwd(transposed)(x), jax.jacrev(forward)(y))
        return out

    got = jacobians({case: (p[0], p[1]) for case, p in pairs.items()})
    for case, (jac_t, jac_f) in got.items():
        x, y = pairs[case][:2]
        jac_t = np.asarray(jac_t).reshape(y.size, x.size)
        jac_f = np.asarray(jac_f).reshape(x.size, y.size)
        assert np.count_nonzero(jac_f) > 0, case
        testing.assert_close(jac_t, jac_f.T, err_msg=case)

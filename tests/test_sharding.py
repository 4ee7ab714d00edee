"""Sharded transposed convolution on 8 simulated CPU devices (conftest sets the flag).

Two checks per case: the sharded result equals the single-device definition, and
the compiled program (``jax.jit(f).lower(...).compile().as_text()``) moves no
whole activation: with batch or spatial sharding only ``collective-permute``
(halo exchange) may appear, for every registered formulation and ``"auto"``,
grouped or not, in 1-3 d (``WANTED``, the table quoted in the README).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdeconv
import jaxdeconv.sharding as jds
from jaxdeconv import formulations as _formulations

ROOT = pathlib.Path(__file__).resolve().parents[1]
KW = dict(stride=2, padding=1, output_padding=1)  # k=3: out = 2 * in on every axis
SIZES = {1: (16,), 2: (16, 4), 3: (8, 2, 2)}

# What XLA's partitioner emits for every formulation and "auto", planned for a mesh
# (grouped layers run group by group, "phase" on its convolution lowering, 3-d
# unfolded): "none" = no collective, "halo" = collective-permute only. The one
# exception: a weight sharded over C_out/groups of a grouped layer leaves each device
# a strided set of output channels, and re-tiling them is an all-to-all. This is the
# table quoted in the README.
WANTED = {"batch": "none", "spatial": "halo", "out_channels": "none"}
GROUPED_OUT_CHANNELS = "all-to-all"


def test_eight_simulated_devices():
    assert len(jax.devices()) >= 8, (
        "tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before "
        f"JAX starts; got {jax.devices()}"
    )


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()[:8]), ("d",))


def classify(counts: dict[str, int]) -> str:
    """'none', 'halo' (collective-permute only) or the other collectives found."""
    if not counts:
        return "none"
    if set(counts) == {"collective-permute"}:
        return "halo"
    return "+".join(sorted(set(counts) - {"collective-permute"}))


def _case(ndim: int, groups: int, rng):
    x = rng.standard_normal((8, 4, *SIZES[ndim])).astype(np.float32)
    w = rng.standard_normal((4, 8, *(3,) * ndim)).astype(np.float32)  # C_out/groups = 8
    return x, w


def _shardings(mesh, sharding: str, ndim: int):
    del ndim
    x_spec = {
        "batch": P("d"),
        "spatial": P(None, None, "d"),
        "out_channels": P(),
    }[sharding]
    w_spec = P(None, "d") if sharding == "out_channels" else P()
    return NamedSharding(mesh, x_spec), NamedSharding(mesh, w_spec)


def _run_sharded(fn, mesh, sharding, x, w):
    """Compile once; return the result, its sharding and the collectives."""
    xs, ws = _shardings(mesh, sharding, x.ndim - 2)
    xa, wa = jax.device_put(x, xs), jax.device_put(w, ws)
    compiled = jax.jit(fn).lower(xa, wa).compile()
    y = compiled(xa, wa)
    return y, jds.collectives(compiled.as_text())


def _expected(sharding: str, grouped: bool) -> str:
    if grouped and sharding == "out_channels":
        return GROUPED_OUT_CHANNELS
    return WANTED[sharding]


def _cases():
    """Every sharding in 2-d; spatial sharding (where the rank matters) in 1-d and 3-d."""
    for ndim in (1, 2, 3):
        for sharding in ("batch", "spatial", "out_channels"):
            if ndim == 2 or sharding == "spatial":
                for groups in (1, 2):
                    yield sharding, groups, ndim


def _matrix():
    for method in (*_formulations.FORMULATIONS, "auto"):
        for sharding, groups, ndim in _cases():
            yield method, sharding, groups, ndim


@pytest.mark.parametrize("method, sharding, groups, ndim", list(_matrix()))
def test_conv_transpose_on_a_mesh(mesh, rng, method, sharding, groups, ndim):
    x, w = _case(ndim, groups, rng)

    def fn(x, w):
        return jaxdeconv.conv_transpose(x, w, groups=groups, method=method, **KW)

    y, counts = _run_sharded(fn, mesh, sharding, x, w)
    ref = jaxdeconv.numpy_conv_transpose(x, w, groups=groups, **KW)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    assert classify(counts) == _expected(sharding, groups > 1), (method, sharding, groups, ndim)


@pytest.mark.parametrize("sharding, groups, ndim", list(_cases()))
def test_sharding_conv_transpose_keeps_halos_only(mesh, rng, sharding, groups, ndim):
    x, w = _case(ndim, groups, rng)

    def fn(x, w):
        return jds.conv_transpose(x, w, groups=groups, **KW)

    y, counts = _run_sharded(fn, mesh, sharding, x, w)
    ref = jaxdeconv.numpy_conv_transpose(x, w, groups=groups, **KW)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    assert classify(counts) == _expected(sharding, groups > 1), counts
    if sharding == "out_channels":
        # model parallel: each device keeps a block of output channels
        assert y.sharding.spec[1] == "d", y.sharding


def test_per_group_many_groups_under_lax_map(mesh, rng):
    # more groups than per_group unrolls: the lax.map path, batch and space sharded
    x = rng.standard_normal((8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 1, 3)).astype(np.float32)
    ref = jaxdeconv.numpy_conv_transpose(x, w, groups=16, **KW)
    for sharding in ("batch", "spatial"):
        y, counts = _run_sharded(
            lambda x, w: jds.conv_transpose(x, w, groups=16, **KW), mesh, sharding, x, w
        )
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
        assert classify(counts) == WANTED[sharding], counts


@pytest.mark.parametrize("method", jds.HALO_SAFE)
def test_partitioned_gradients(mesh, rng, method):
    """Training through the partitioner: what the gradient program moves (2-d, groups 1).

    Batch sharded: one all-reduce of the weight-sized gradient (data parallel).
    Spatially sharded: for lhs_dilated and vjp the weight gradient all-gathers the
    input and the output cotangent, which is why conv_transpose_spatial exists (its
    gradient swaps halos and all-reduces the weight gradient only, see below);
    zero_insertion's gradient (a stride-1 conv of the interior-padded input) and
    phase's (one dot per tap of strided views, on its convolution lowering)
    partition that way too: halos + all-reduce.
    """
    x, w = _case(2, 1, rng)

    def loss(x, w):
        return jnp.sum(jds.conv_transpose(x, w, method=method, **KW) ** 2)

    want = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    spatial = "all-reduce" if method in ("zero_insertion", "phase") else "all-gather"
    for sharding, expected in (("batch", "all-reduce"), ("spatial", spatial)):
        xs, _ = _shardings(mesh, sharding, 2)
        xa = jax.device_put(x, xs)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(xa, w).compile()
        for a, b in zip(compiled(xa, w), want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
        assert classify(jds.collectives(compiled.as_text())) == expected, sharding


def test_spatial_output_not_divisible_is_gathered(mesh, rng):
    # k=3, s=2, p=1 without output_padding: 16 -> 31 pixels, which 8 devices cannot
    # split evenly, so the partitioner returns the output replicated (all-gathered).
    x, w = _case(1, 1, rng)
    y, counts = _run_sharded(
        lambda x, w: jds.conv_transpose(x, w, stride=2, padding=1), mesh, "spatial", x, w
    )
    assert y.shape[-1] == 31
    np.testing.assert_allclose(
        np.asarray(y), jaxdeconv.numpy_conv_transpose(x, w, stride=2, padding=1), atol=1e-4
    )
    assert classify(counts) == "all-gather", counts


def test_every_builtin_formulation_is_halo_safe():
    """Planned for a mesh, every formulation partitions with halos only (the matrix above)."""
    assert set(jds.HALO_SAFE) == set(jaxdeconv.FORMULATIONS)


@pytest.mark.parametrize("channels_last", [False, True])
def test_per_group_equals_grouped(rng, channels_last):
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    kw = dict(stride=(2, 3), padding=(1, 0), groups=3, dilation=(1, 2))
    ref = jaxdeconv.numpy_conv_transpose(x, w, b, **kw)
    if channels_last:
        x, w = np.moveaxis(x, 1, -1), np.moveaxis(w, (0, 1), (-2, -1))
        ref = np.moveaxis(ref, 1, -1)
    conv = jax.jit(lambda x, w, b: jds.conv_transpose(x, w, b, channels_last=channels_last, **kw))
    y = conv(x, w, b)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    y1 = conv(x[0], w, b)  # unbatched
    np.testing.assert_allclose(np.asarray(y1), ref[0], rtol=1e-4, atol=1e-4)


def test_sharding_conv_transpose_validates_like_the_core():
    x, w = jnp.ones((1, 4, 5)), jnp.ones((4, 2, 3))
    with pytest.raises(ValueError, match="method='fast'"):
        jds.conv_transpose(x, w, method="fast")
    with pytest.raises(ValueError, match="groups"):
        jds.conv_transpose(x, w, groups=3)
    with pytest.raises(ValueError, match="output_padding"):
        jds.conv_transpose(x, w, stride=2, output_padding=2)


# ---- conv_transpose_spatial: explicit halo exchange with shard_map ----


@pytest.fixture(scope="module")
def mesh2x4():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("b", "s"))


SPATIAL_CASES = [
    # ndim, kernel, stride, padding, output_padding, dilation, groups, channels_last, axes
    (1, 4, 2, 1, 0, 1, 1, False, ("s",)),
    (1, 3, 1, 2, 0, 2, 2, True, ("s",)),
    (2, 3, 2, 1, 1, 1, 2, False, ("s", None)),
    (2, 5, 3, "SAME", 0, 1, 1, True, (None, "s")),
    (2, 2, 4, "SAME", 0, 1, 1, False, ("b", "s")),
    (2, 7, 2, "SAME", 0, 1, 1, False, ("s", "b")),
    (3, 3, 2, 1, 1, 1, 2, False, ("s", None, None)),
    (3, 2, 2, 0, 0, 1, 1, True, (None, None, "s")),
]


@pytest.mark.parametrize("case", SPATIAL_CASES, ids=lambda c: "-".join(map(str, c[:8])))
def test_conv_transpose_spatial_equals_unsharded(mesh2x4, rng, case):
    ndim, k, s, p, op, d, g, cl, axes = case
    spatial = {1: (16,), 2: (8, 8), 3: (8, 4, 4)}[ndim]
    x = rng.standard_normal((2, 4, *spatial)).astype(np.float32)
    w = rng.standard_normal((4, 6 // g, *(k,) * ndim)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    kw = dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d, channels_last=cl)
    if cl:
        x, w = np.moveaxis(x, 1, -1), np.moveaxis(w, (0, 1), (-2, -1))
    batch_axis = None if "b" in axes else "b"

    def fn(x, w):
        return jds.conv_transpose_spatial(
            x, w, b, mesh=mesh2x4, spatial_axes=axes, batch_axis=batch_axis, **kw
        )

    compiled = jax.jit(fn).lower(x, w).compile()
    y = compiled(x, w)
    ref = jaxdeconv.conv_transpose(x, w, b, **kw)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-4)
    counts = jds.collectives(compiled.as_text())
    assert set(counts) <= {"collective-permute"}, counts
    spec = (batch_axis, *axes, None) if cl else (batch_axis, None, *axes)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh2x4, P(*spec)), y.ndim), y.sharding


def test_conv_transpose_spatial_every_method(mesh2x4, rng):
    x = rng.standard_normal((2, 4, 16)).astype(np.float32)
    w = rng.standard_normal((4, 3, 4)).astype(np.float32)
    ref = jaxdeconv.numpy_conv_transpose(x, w, stride=2, padding=1, groups=2)
    for method in ("auto", "per_group", *jaxdeconv.FORMULATIONS):
        y = jax.jit(
            lambda x, w, method=method: jds.conv_transpose_spatial(
                x, w, stride=2, padding=1, groups=2, mesh=mesh2x4, spatial_axes="s", method=method
            )
        )(x, w)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4, err_msg=method)


def test_conv_transpose_spatial_gradient(mesh2x4, rng):
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1, groups=1)
    t = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w) * t)

    sharded = loss(
        lambda x, w: jds.conv_transpose_spatial(
            x, w, mesh=mesh2x4, spatial_axes=("s", None), batch_axis="b", **kw
        )
    )
    plain = loss(lambda x, w: jaxdeconv.conv_transpose(x, w, **kw))
    grad = jax.jit(jax.grad(sharded, argnums=(0, 1))).lower(x, w).compile()
    got, want = grad(x, w), jax.jit(jax.grad(plain, argnums=(0, 1)))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    counts = jds.collectives(grad.as_text())
    # halos back and forth; the weight gradient is summed over devices (weight-sized)
    assert set(counts) == {"collective-permute", "all-reduce"}, counts
    assert counts["all-reduce"] == 1, counts


def test_conv_transpose_spatial_errors(mesh2x4):
    x, w = jnp.ones((2, 4, 6)), jnp.ones((4, 2, 3))
    run = jds.conv_transpose_spatial
    with pytest.raises(ValueError, match=r"spatial size 6 .* does not divide by the 4 devices"):
        run(x, w, stride=2, padding=1, output_padding=1, mesh=mesh2x4, spatial_axes="s")
    with pytest.raises(ValueError, match=r"halo of 4 input pixels .* holds only 2"):
        run(jnp.ones((2, 4, 8)), jnp.ones((4, 2, 9)), padding=4, mesh=mesh2x4, spatial_axes="s")
    with pytest.raises(ValueError, match=r"output must be stride \* input = 16, got 17"):
        run(jnp.ones((2, 4, 8)), w, stride=2, mesh=mesh2x4, spatial_axes="s")
    with pytest.raises(ValueError, match=r"'y' .* not an axis of the mesh"):
        run(jnp.ones((2, 4, 8)), w, stride=2, padding="SAME", mesh=mesh2x4, spatial_axes="y")
    with pytest.raises(ValueError, match=r"batch size 3 does not divide by the 2 devices"):
        run(
            jnp.ones((3, 4, 8)),
            w,
            padding=1,
            mesh=mesh2x4,
            spatial_axes="s",
            batch_axis="b",
        )
    with pytest.raises(ValueError, match=r"spatial_axes=\('s', None\) must be"):
        run(jnp.ones((2, 4, 8)), w, padding=1, mesh=mesh2x4, spatial_axes=("s", None))
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        run(jnp.ones((2, 4, 8)), w, padding=1, mesh="s", spatial_axes="s")
    with pytest.raises(ValueError, match="groups"):
        run(jnp.ones((2, 4, 8)), w, padding=1, groups=3, mesh=mesh2x4, spatial_axes="s")


def test_signatures_mirror_torch_and_options_are_keyword_only():
    import inspect

    torch_order = ["input", "weight", "bias", "stride", "padding", "output_padding", "groups"]
    torch_order.append("dilation")
    for fn in (jds.conv_transpose, jds.conv_transpose_spatial):
        params = inspect.signature(fn).parameters
        positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == torch_order, fn.__name__
        for name, p in params.items():
            if name not in torch_order:
                assert p.kind is p.KEYWORD_ONLY, (fn.__name__, name)
    assert set(jds.__all__) <= set(dir(jds))
    assert jaxdeconv.sharding is jds


def test_collectives_counts_and_rejects():
    hlo = (
        "%ag = f32[8]{0} all-gather(f32[1]{0} %p), dimensions={0}\n"
        "%cp = f32[1]{0} collective-permute-start(f32[1]{0} %p)\n"
        "%cpd = f32[1]{0} collective-permute-done(f32[1]{0} %cp)\n"
    )
    assert jds.collectives(hlo) == {"all-gather": 1, "collective-permute": 1}
    with pytest.raises(TypeError, match="fn_or_hlo"):
        jds.collectives(3)


def test_example_runs():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the example sets it
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sharded.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all equal to the single-device result" in proc.stdout, proc.stdout


def test_example_help_prints_and_runs_nothing():
    """Issue 15: ``examples/sharded.py --help`` ran the script; it prints its options now."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sharded.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--coordinator" in proc.stdout and "--num-processes" in proc.stdout
    assert "devices on" not in proc.stdout  # the run itself never started

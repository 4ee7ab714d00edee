"""dtypes, precision and preferred_element_type, for every formulation.

The tolerances are jaxdeconv.testing.TOLERANCES, also in the README's
"dtypes and tolerances" table (a test below keeps the two equal).
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeconv
from jaxdeconv import testing

METHODS = sorted(jaxdeconv.FORMULATIONS)
SPEC = jaxdeconv.make_spec(
    (2, 4, 3, 4),
    (4, 3, 3, 2),
    stride=2,
    padding=1,
    output_padding=(1, 0),
    groups=2,
    dilation=(1, 2),
)
KWARGS = dict(stride=2, padding=1, output_padding=(1, 0), groups=2, dilation=(1, 2))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])  # float32: every other test file
def test_values_and_gradients_within_the_documented_tolerance(dtype):
    """Every formulation: output and gradient dtypes, and errors within TOLERANCES[dtype]."""
    x, w, _ = testing.random_arrays(SPEC, dtype=dtype, seed=10)
    results = testing.check_formulations_agree(x, w, SPEC, transform=jax.jit, dtype=dtype)
    assert sorted(results) == sorted(jaxdeconv.FORMULATIONS)
    for method, out in results.items():
        assert out["value"].dtype == jnp.dtype(dtype), method
        assert out["jvp"].dtype == jnp.dtype(dtype), method
        assert [g.dtype for g in out["vjp"]] == [jnp.dtype(dtype)] * 2, method


def test_float64_with_x64():
    with jax.enable_x64(True):
        x, w, _ = testing.random_arrays(SPEC, dtype=np.float64, seed=11)
        results = testing.check_formulations_agree(x, w, SPEC, transform=jax.jit, dtype="float64")
        for method, out in results.items():
            assert out["value"].dtype == jnp.float64, method
            assert [g.dtype for g in out["vjp"]] == [jnp.float64] * 2, method
        y = jaxdeconv.conv_transpose(x, w, **KWARGS)
        assert y.dtype == jnp.float64


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_preferred_element_type_float32(method, dtype):
    """Low-precision inputs, float32 accumulation and output: float32 accuracy."""
    x, w, b = testing.random_arrays(SPEC, dtype=dtype, seed=12)
    want = testing.numpy_reference(x, w, SPEC, b)

    @jax.jit
    def both(x, w, b):
        low = jaxdeconv.conv_transpose(x, w, b, **KWARGS, method=method)
        high = jaxdeconv.conv_transpose(
            x, w, b, **KWARGS, method=method, preferred_element_type=jnp.float32
        )
        return low, high

    low, high = both(x, w, b)
    assert low.dtype == jnp.dtype(dtype)
    assert high.dtype == jnp.float32
    testing.assert_close(high, want, dtype="float32")
    testing.assert_close(low, want, dtype=dtype)
    # The float32 result is not the low-precision one cast up: that would miss float32's tolerance.
    with pytest.raises(AssertionError):
        testing.assert_close(low.astype(jnp.float32), want, dtype="float32")


def test_mixed_dtypes_promote():
    x, w, _ = testing.random_arrays(SPEC, dtype="bfloat16", seed=13)

    @jax.jit
    def every_method(x, w):
        return {m: jaxdeconv.conv_transpose(x, w, **KWARGS, method=m) for m in METHODS}

    for method, y in every_method(x, w.astype(np.float32)).items():
        assert y.dtype == jnp.float32, method
        testing.assert_close(y, testing.numpy_reference(x, w, SPEC), dtype="float32")


def _precisions(jaxpr):
    """The precision parameter of every equation that has one (conv_general_dilated,
    dot_general, a formulation's own primitives), in a jaxpr and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if "precision" in eqn.params:
            found.append((eqn.primitive.name, eqn.params["precision"]))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _precisions(inner)
    return found


def _is_highest(p):
    if isinstance(p, (tuple, list)):
        return len(p) > 0 and all(_is_highest(q) for q in p)
    if isinstance(p, str):
        return p.lower() == "highest"
    return p == jax.lax.Precision.HIGHEST


@pytest.mark.parametrize("method", METHODS)
def test_precision_reaches_every_contraction(method):
    """precision= reaches lax in the forward pass, the VJP and the JVP (traced, not run)."""
    x, w, b = testing.random_arrays(SPEC, seed=14)
    ct = np.ones(SPEC.output_shape, np.float32)

    def f(x, w, b):
        return jaxdeconv.conv_transpose(x, w, b, **KWARGS, method=method, precision="highest")

    def derivatives(x, w, b):
        return jax.vjp(f, x, w, b)[1](ct), jax.jvp(f, (x, w, b), (x, w, b))[1]

    for fn in (f, derivatives):
        found = _precisions(jax.make_jaxpr(fn)(x, w, b).jaxpr)
        assert found, f"{method}: no contraction with a precision in {fn.__name__}"
        for name, p in found:
            assert _is_highest(p), f"{method} {fn.__name__}: {name} has precision {p!r}"


def test_readme_tolerance_table_is_testing_tolerances():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### dtypes and tolerances", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([0-9.e-]+) \| ([0-9.e-]+) \|", section, re.M)
    table = {name: (float(rtol), float(atol)) for name, rtol, atol in rows}
    assert table == testing.TOLERANCES

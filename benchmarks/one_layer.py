"""Time one transposed convolution of your choice, forward and forward+backward.

Standalone (no pytest, no CLI): compares every jaxdeconv formulation with JAX's
autodiff of ``lax.conv_transpose(transpose_kernel=True)`` and PyTorch on one layer
given in PyTorch's terms, after checking each result against PyTorch. Example::

    python benchmarks/one_layer.py --input 8,64,64,64 --out-channels 32 --kernel 4 \
        --stride 2 --padding 1

Prints median milliseconds (warm-up and compilation excluded) and GF/s of useful FLOPs.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxdeconv
from jaxdeconv import conv_transpose, make_spec


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default="8,64,64,64", help="N,C_in,*spatial")
    p.add_argument("--out-channels", type=int, default=32)
    p.add_argument("--kernel", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--padding", type=int, default=1)
    p.add_argument("--output-padding", type=int, default=0)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    shape = tuple(int(v) for v in a.input.split(","))
    nd = len(shape) - 2
    kw = dict(
        stride=a.stride,
        padding=a.padding,
        output_padding=a.output_padding,
        groups=a.groups,
        dilation=a.dilation,
    )
    wshape = (shape[1], a.out_channels // a.groups, *(a.kernel,) * nd)
    spec = make_spec(shape, wshape, **kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal(wshape) / np.sqrt(shape[1])).astype(np.float32)
    tfn = getattr(torch.nn.functional, f"conv_transpose{nd}d")
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ref = tfn(xt, wt, **kw)
    (ref * ref).sum().backward()
    ref_g = (xt.grad.numpy(), wt.grad.numpy())
    ref = ref.detach().numpy()

    def torch_fwd():
        with torch.no_grad():
            tfn(xt, wt, **kw)

    def torch_bwd():
        xt.grad = wt.grad = None
        y = tfn(xt, wt, **kw)
        (y * y).sum().backward()

    fns = {
        f"jaxdeconv {m}": lambda x, w, m=m: conv_transpose(x, w, method=m, **kw)
        for m in ["auto", *jaxdeconv.FORMULATIONS]
    }
    if a.groups == 1:
        sp = "DHW"[-nd:]
        fns["lax.conv_transpose"] = lambda x, w: jax.lax.conv_transpose(
            x,
            w,
            spec.stride,
            spec.lhs_dilated_padding,
            rhs_dilation=spec.dilation,
            dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp),
            transpose_kernel=True,
        )
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    flops = spec.flops
    print(f"{spec}\n{flops / 1e9:.2f} GFLOP forward")
    for name, f in fns.items():
        fwd = jax.jit(f)
        bwd = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1)))
        y = fwd(xj, wj)
        assert np.allclose(y, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max()), name
        t_f = median_ms(lambda fwd=fwd: jax.block_until_ready(fwd(xj, wj)), a.reps)
        if name == "jaxdeconv zero_insertion":
            # its jitted gradient aborts XLA 0.10.2 (see jaxdeconv.testing.jit_gradient_failure)
            print(f"{name:<26} fwd {t_f:9.2f} ms ({flops / t_f / 1e6:6.1f} GF/s)")
            continue
        g = bwd(xj, wj)
        for got, want in zip(g, ref_g):
            assert np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max()), name
        t_b = median_ms(lambda bwd=bwd: jax.block_until_ready(bwd(xj, wj)), a.reps)
        print(
            f"{name:<26} fwd {t_f:9.2f} ms ({flops / t_f / 1e6:6.1f} GF/s)   "
            f"fwd+bwd {t_b:9.2f} ms ({3 * flops / t_b / 1e6:6.1f} GF/s)"
        )
    t_f, t_b = median_ms(torch_fwd, a.reps), median_ms(torch_bwd, a.reps)
    print(
        f"{'torch':<26} fwd {t_f:9.2f} ms ({flops / t_f / 1e6:6.1f} GF/s)   "
        f"fwd+bwd {t_b:9.2f} ms ({3 * flops / t_b / 1e6:6.1f} GF/s)"
    )


if __name__ == "__main__":
    main()

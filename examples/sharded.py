"""Transposed convolution over a device mesh: data, spatial and model parallel.

Runs as is on one CPU, which it splits into 8 simulated devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set here unless
XLA_FLAGS is already set). The same file runs unchanged on several GPUs or TPUs,
and on several hosts: start one copy per host with ``--multihost`` so that it
calls ``jax.distributed.initialize()`` (which reads the coordinator from SLURM,
Open MPI, Kubernetes or Cloud TPU, or from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID). Every copy builds the same arrays from the
same seed, and the mesh spans the devices of all hosts.

    python examples/sharded.py
"""

from __future__ import annotations

import os
import sys

if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdeconv
import jaxdeconv.sharding as jds


def main() -> None:
    if "--multihost" in sys.argv:
        jax.distributed.initialize()
    devices = np.array(jax.devices())
    n = len(devices)
    data = 2 if n % 2 == 0 and n > 1 else 1
    mesh = Mesh(devices.reshape(data, n // data), ("data", "space"))
    print(f"{n} devices on {jax.process_count()} host(s), mesh {dict(mesh.shape)}")

    rng = np.random.default_rng(0)
    space = mesh.shape["space"]
    # A decoder layer: 16 -> 8 channels, 4x4 kernel, stride 2, padding 1 (doubles H, W).
    x = rng.standard_normal((4, 16, 8 * space, 16)).astype(np.float32)  # [N, C_in, H, W]
    w = rng.standard_normal((16, 8 * space, 4, 4)).astype(np.float32)  # [C_in, C_out, kH, kW]
    kw = dict(stride=2, padding=1)

    def put(a, *spec):
        return jax.device_put(a, NamedSharding(mesh, P(*spec)))

    reference = jax.jit(lambda x, w: jaxdeconv.conv_transpose(x, w, **kw))(put(x), put(w))

    def check(name, fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        y = compiled(*args)
        err = float(jnp.max(jnp.abs(y - reference)))
        print(
            f"  {name:<48} collectives {jds.collectives(compiled.as_text())}, max |diff| {err:.1e}"
        )
        assert err < 1e-3, name
        return y

    conv = jax.jit(lambda x, w: jds.conv_transpose(x, w, **kw))
    print("XLA partitions jaxdeconv.sharding.conv_transpose:")
    check("data parallel (batch over 'data')", conv, put(x, "data"), put(w))
    check("spatial (H over 'space': halo exchange)", conv, put(x, None, None, "space"), put(w))
    check("model parallel (C_out over 'space')", conv, put(x), put(w, None, "space"))
    check("data x spatial", conv, put(x, "data", None, "space"), put(w))

    print("shard_map with explicit ppermute halos (jaxdeconv.sharding.conv_transpose_spatial):")

    def spatial(x, w):
        return jds.conv_transpose_spatial(
            x, w, **kw, mesh=mesh, spatial_axes=("space", None), batch_axis="data"
        )

    xs = put(x, "data", None, "space")
    y = check("batch over 'data', H over 'space'", spatial, xs, put(w))
    print(f"  output {y.shape} sharded as {y.sharding.spec}")

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w) ** 2)

    grads = jax.jit(jax.grad(loss(spatial), argnums=(0, 1)))(xs, put(w))
    plain = jax.jit(
        jax.grad(loss(lambda x, w: jaxdeconv.conv_transpose(x, w, **kw)), argnums=(0, 1))
    )(put(x), put(w))
    for name, a, b in zip(("input", "weight"), grads, plain):
        rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        print(f"  gradient w.r.t. {name}: max relative diff {rel:.1e}")
        assert rel < 1e-4, name
    print("all equal to the single-device result")


if __name__ == "__main__":
    main()

"""One process of the multi-process test (tests/test_multihost.py starts several).

Reads the run from JAXDECONV_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID /
_LOCAL_DEVICES (jaxdeconv.distributed.initialize). Every process loads only its
own shards of the global arrays (``jax.make_array_from_callback``), runs each
sharded entry point forward and backward, reads the results back with
``process_allgather`` and ``addressable_shards`` and compares them with the same
computation on its first local device alone; it prints one ``RESULT {json}``
line with the collectives of each compiled program, which the test checks.

    python tests/multihost_worker.py check   # the checks
    python tests/multihost_worker.py die     # process 1 dies after start-up

Importing it does nothing (pytest's --doctest-modules imports every module).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdeconv
import jaxdeconv.distributed as jdd
import jaxdeconv.sharding as jds

KW = dict(stride=2, padding=1, output_padding=1)  # kernel 3: output = 2 x input


def pattern(shape, index=None, seed=0.0):
    """Values of a global array at ``index`` (slices), computed without the rest of it."""
    index = tuple(index or ()) + (slice(None),) * (len(shape) - len(index or ()))
    axes = [np.arange(n)[s] for n, s in zip(shape, index)]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    phase = sum(g * (0.37 + 0.61 * k + seed) for k, g in enumerate(grid))
    return np.sin(phase + seed).astype(np.float32)


def load(shape, sharding, seed):
    """A global array of which this process builds only the shards of its devices."""
    return jax.make_array_from_callback(shape, sharding, lambda idx: pattern(shape, idx, seed))


def reference(fn, *arrays):
    """``fn`` on this process's first device alone, from the whole arrays."""
    device = jax.local_devices()[0]
    local = [jax.device_put(a, device) for a in arrays]
    return jax.tree.map(np.asarray, jax.jit(fn)(*local))


def gather(tree):
    """The whole arrays on every process (tiled: the global array, not a stack)."""
    return jax.tree.map(
        lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree
    )


def loss_of(conv, t):
    return lambda x, w: jnp.sum(conv(x, w) * t)


def die() -> None:
    mesh = Mesh(np.array(jax.devices()), ("x",))
    x = load((4 * len(jax.devices()),), NamedSharding(mesh, P("x")), 0.0)
    if jax.process_index() == 1:
        print("process 1 exits on purpose", flush=True)
        os._exit(3)
    time.sleep(1.0)
    t0 = time.monotonic()
    # Needs process 1, which is gone: jax must abort this process (heartbeat), not hang.
    total = multihost_utils.process_allgather(jax.jit(jnp.sum)(x))
    print(f"UNEXPECTED: finished without process 1: {total} after {time.monotonic() - t0}")
    sys.exit(0)


def check() -> None:
    nproc, local = jax.process_count(), jax.local_device_count()
    assert nproc > 1 and len(jax.devices()) == nproc * local, jax.devices()
    # Meshes. "data" crosses processes (the recommended layout: batch over hosts, the
    # devices of one host along "space"); "all" is one axis over every device in process
    # order, so a spatial split along it has halos crossing the process boundary.
    hybrid = Mesh(
        mesh_utils.create_hybrid_device_mesh((1, local), (nproc, 1), process_is_granule=True),
        ("data", "space"),
    )
    flat = Mesh(np.array(jax.devices()), ("all",))
    assert {d.process_index for d in hybrid.devices[:, 0]} == set(range(nproc))
    assert len({d.process_index for d in hybrid.devices[0]}) == 1
    n, c_in, c_out, h, w_ = 2 * nproc, 4, 4, 2 * len(jax.devices()), 6
    results, failures = {}, []

    def close(name, got, want, tol=1e-4):
        err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
        if not err < tol:
            failures.append(f"{name}: relative error {err:.2e}")

    t = pattern((n, c_out, 2 * h, 2 * w_), seed=3.0)

    @functools.cache
    def expected(groups):
        """Forward and gradients on one device of this process (the same for every layout)."""
        x = pattern((n, c_in, h, w_), seed=1.0)
        w = pattern((c_in, c_out // groups, 3, 3), seed=2.0)

        def plain(x, w):
            return jaxdeconv.conv_transpose(x, w, groups=groups, **KW)

        return reference(plain, x, w), reference(jax.grad(loss_of(plain, t), (0, 1)), x, w)

    def run_case(name, conv, x_spec, w_spec, groups, mesh):
        x_shape, w_shape = (n, c_in, h, w_), (c_in, c_out // groups, 3, 3)
        xs = load(x_shape, NamedSharding(mesh, x_spec), 1.0)
        ws = load(w_shape, NamedSharding(mesh, w_spec), 2.0)
        ref, (rx, rw) = expected(groups)
        fwd = jax.jit(conv).lower(xs, ws).compile()
        y = fwd(xs, ws)
        # Each process checks the shards it holds, then the whole result read back.
        for shard in y.addressable_shards:
            close(f"{name} shard {shard.index}", np.asarray(shard.data), ref[shard.index])
        close(f"{name} forward", gather(y), ref)
        bwd = jax.jit(jax.grad(loss_of(conv, t), argnums=(0, 1))).lower(xs, ws).compile()
        gx, gw = gather(bwd(xs, ws))
        close(f"{name} d/dinput", gx, rx)
        close(f"{name} d/dweight", gw, rw)
        results[name] = {
            "forward": jds.collectives(fwd.as_text()),
            "gradient": jds.collectives(bwd.as_text()),
            "out_spec": str(y.sharding.spec) if isinstance(y.sharding, NamedSharding) else None,
        }

    t_start = time.monotonic()
    entry_points = {
        "sharding.conv_transpose": lambda g: lambda x, w: jds.conv_transpose(x, w, groups=g, **KW),
        "conv_transpose(auto)": lambda g: (
            lambda x, w: jaxdeconv.conv_transpose(x, w, groups=g, method="auto", **KW)
        ),
    }
    layouts = {
        # batch over "data": each process holds its own samples
        "batch": (hybrid, P("data"), P()),
        # H over every device: halos cross devices and the process boundary
        "spatial": (flat, P(None, None, "all"), P()),
        # batch over processes, output channels over each process's devices
        "batch+out_channels": (hybrid, P("data"), P(None, "space")),
    }
    for entry, make in entry_points.items():
        for layout, (mesh, x_spec, w_spec) in layouts.items():
            for groups in (1, 2):
                if layout == "batch+out_channels" and groups > 1:
                    continue  # a strided set of C_out per device: re-tiled (test_sharding)
                name = f"{entry} {layout} groups={groups}"
                run_case(name, make(groups), x_spec, w_spec, groups, mesh)

    for groups in (1, 2):

        def line(x, w, groups=groups):
            return jds.conv_transpose_spatial(
                x, w, groups=groups, mesh=flat, spatial_axes=("all", None), **KW
            )

        name = f"conv_transpose_spatial H over all groups={groups}"
        run_case(name, line, P(None, None, "all"), P(), groups, flat)

    def batch_and_h(x, w):
        return jds.conv_transpose_spatial(
            x, w, mesh=hybrid, spatial_axes=("space", None), batch_axis="data", **KW
        )

    name = "conv_transpose_spatial batch+H groups=1"
    run_case(name, batch_and_h, P("data", None, "space"), P(), 1, hybrid)

    report = {
        "process": jax.process_index(),
        "processes": nproc,
        "devices": len(jax.devices()),
        "failures": failures,
        "cases": results,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    print("RESULT " + json.dumps(report), flush=True)
    sys.exit(1 if failures else 0)


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    if mode not in ("check", "die"):
        raise SystemExit(f"mode must be 'check' or 'die', got {mode!r}")
    heartbeat = int(os.environ.get("MULTIHOST_HEARTBEAT_S", "15"))
    jdd.initialize(initialization_timeout=60, heartbeat_timeout=heartbeat, shutdown_timeout=30)
    die() if mode == "die" else check()


if __name__ == "__main__":
    main()

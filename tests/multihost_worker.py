"""One process of the multi-process test (tests/test_multihost.py starts several).

Reads the run from JAXDECONV_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID /
_LOCAL_DEVICES (jaxdeconv.distributed.initialize). Every process loads only its
own shards of the global arrays (``jax.make_array_from_callback``), runs each
sharded entry point forward and backward, reads the results back with
``process_allgather`` and compares them with the same computation on its first
local device alone; it prints one ``RESULT {json}`` line with the collectives
of each compiled program, which the test checks.

    python tests/multihost_worker.py check   # the checks
    python tests/multihost_worker.py die     # process 1 dies after start-up
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import jaxdeconv.distributed as jdd

MODE = sys.argv[1] if len(sys.argv) > 1 else "check"
HEARTBEAT_S = int(os.environ.get("MULTIHOST_HEARTBEAT_S", "15"))
jdd.initialize(initialization_timeout=60, heartbeat_timeout=HEARTBEAT_S, shutdown_timeout=30)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import mesh_utils, multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxdeconv  # noqa: E402
import jaxdeconv.sharding as jds  # noqa: E402

PID, NPROC = jax.process_index(), jax.process_count()
LOCAL = jax.local_device_count()
assert NPROC > 1 and len(jax.devices()) == NPROC * LOCAL, jax.devices()


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


if MODE == "die":
    mesh = Mesh(np.array(jax.devices()), ("x",))
    x = load((4 * NPROC * LOCAL,), NamedSharding(mesh, P("x")), 0.0)
    if PID == 1:
        print("process 1 exits on purpose", flush=True)
        os._exit(3)
    time.sleep(1.0)
    t0 = time.monotonic()
    # Needs process 1, which is gone: jax must abort this process (heartbeat), not hang.
    total = multihost_utils.process_allgather(jax.jit(jnp.sum)(x))
    print(f"UNEXPECTED: finished without process 1: {total} after {time.monotonic() - t0}")
    sys.exit(0)

# Meshes. "data" crosses processes (the recommended layout: batch over hosts, devices of
# one host along "space"); "all" is one axis over every device in process order, so a
# spatial split along it has halos crossing the process boundary.
hybrid = Mesh(
    mesh_utils.create_hybrid_device_mesh((1, LOCAL), (NPROC, 1), process_is_granule=True),
    ("data", "space"),
)
flat = Mesh(np.array(jax.devices()), ("all",))
assert {d.process_index for d in hybrid.devices[:, 0]} == set(range(NPROC))
assert {d.process_index for d in hybrid.devices[0]} == {hybrid.devices[0, 0].process_index}

n_dev = NPROC * LOCAL
N, C_IN, C_OUT, H, W = 2 * NPROC, 4, 4, 2 * n_dev, 6
KW = dict(stride=2, padding=1, output_padding=1)  # kernel 3: output = 2 x input
REF_DEVICE = jax.local_devices()[0]


def reference(fn, *arrays):
    """``fn`` on this process's first device alone, from the whole arrays."""
    local = [jax.device_put(a, REF_DEVICE) for a in arrays]
    return jax.tree.map(np.asarray, jax.jit(fn)(*local))


def gather(tree):
    return jax.tree.map(
        lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree
    )


def loss_of(conv, t):
    return lambda x, w: jnp.sum(conv(x, w) * t)


results = {}
failures = []


def close(name, got, want, tol=1e-4):
    err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    if not err < tol:
        failures.append(f"{name}: relative error {err:.2e}")
    return err


def run_case(name, conv, x_spec, w_spec, groups, mesh):
    x_shape, w_shape = (N, C_IN, H, W), (C_IN, C_OUT // groups, 3, 3)
    xs = load(x_shape, NamedSharding(mesh, x_spec), 1.0)
    ws = load(w_shape, NamedSharding(mesh, w_spec), 2.0)
    x, w = pattern(x_shape, seed=1.0), pattern(w_shape, seed=2.0)  # for the reference only
    t = pattern((N, C_OUT, 2 * H, 2 * W), seed=3.0)

    def plain(x, w):
        return jaxdeconv.conv_transpose(x, w, groups=groups, **KW)

    fwd = jax.jit(conv).lower(xs, ws).compile()
    y = fwd(xs, ws)
    # Each process checks the shards it holds, then the whole result read back.
    ref = reference(plain, x, w)
    for shard in y.addressable_shards:
        close(f"{name} shard {shard.index}", np.asarray(shard.data), ref[shard.index])
    close(f"{name} forward", gather(y), ref)
    bwd = jax.jit(jax.grad(loss_of(conv, t), argnums=(0, 1))).lower(xs, ws).compile()
    gx, gw = gather(bwd(xs, ws))
    rx, rw = reference(jax.grad(loss_of(plain, t), argnums=(0, 1)), x, w)
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
    # batch over hosts, output channels over each host's devices
    "batch+out_channels": (hybrid, P("data"), P(None, "space")),
}
for entry, make in entry_points.items():
    for layout, (mesh, x_spec, w_spec) in layouts.items():
        for groups in (1, 2):
            if layout == "batch+out_channels" and groups > 1:
                continue  # a strided set of C_out per device: re-tiled, measured elsewhere
            run_case(
                f"{entry} {layout} groups={groups}", make(groups), x_spec, w_spec, groups, mesh
            )

for groups in (1, 2):

    def spatial(x, w, groups=groups):
        return jds.conv_transpose_spatial(
            x, w, groups=groups, mesh=flat, spatial_axes=("all", None), **KW
        )

    run_case(
        f"conv_transpose_spatial H over all groups={groups}",
        spatial,
        P(None, None, "all"),
        P(),
        groups,
        flat,
    )

    def spatial2(x, w, groups=groups):
        return jds.conv_transpose_spatial(
            x,
            w,
            groups=groups,
            mesh=hybrid,
            spatial_axes=("space", None),
            batch_axis="data",
            **KW,
        )

    if groups > 1:
        continue  # grouped blocks: the same exchange, checked over the line above
    run_case(
        f"conv_transpose_spatial batch+H groups={groups}",
        spatial2,
        P("data", None, "space"),
        P(),
        groups,
        hybrid,
    )

print(
    "RESULT "
    + json.dumps(
        {
            "process": PID,
            "processes": NPROC,
            "devices": len(jax.devices()),
            "failures": failures,
            "cases": results,
            "seconds": round(time.monotonic() - t_start, 1),
        }
    ),
    flush=True,
)
sys.exit(1 if failures else 0)

"""Transposed convolution over a device mesh, on one process or several (hosts).

Data, spatial and model parallel layers through XLA's partitioner, and
``jaxdeconv.sharding.conv_transpose_spatial`` with explicit halo exchange, with
gradients; prints the collectives of each compiled program and checks every
result against the same layer computed on a single device.

One process (its CPU split into 8 simulated devices; XLA_FLAGS is set here
unless already set)::

    python examples/sharded.py

Two processes on this machine, 2 CPU devices each, with jaxdeconv's launcher
(it picks a free port on 127.0.0.1, prefixes each line with the process id, and
stops both if one fails)::

    python -m jaxdeconv.distributed --num-processes 2 --local-devices 2 -- \\
        python examples/sharded.py

The same by hand, in two terminals (any free port)::

    python examples/sharded.py --coordinator 127.0.0.1:12355 --num-processes 2 \\
        --process-id 0 --local-devices 2
    python examples/sharded.py --coordinator 127.0.0.1:12355 --num-processes 2 \\
        --process-id 1 --local-devices 2

On a cluster, one process per host. Under SLURM or Open MPI jax finds the
coordinator, the process count and the process id itself::

    srun --nodes 2 --ntasks-per-node 1 python examples/sharded.py --multihost
    mpirun -n 2 python examples/sharded.py --multihost

elsewhere give every host ``--coordinator HOST0:PORT --num-processes N
--process-id I`` (or set JAXDECONV_COORDINATOR, JAXDECONV_NUM_PROCESSES,
JAXDECONV_PROCESS_ID). From a source checkout without installing, put
``PYTHONPATH=src`` in front of each command.

Every process builds only its own part of the global arrays (``load`` below
stands for reading a region of a file), the mesh puts the batch ("data") axis
across processes and each process's devices along "space", and results are read
back with ``process_allgather`` (whole array, on every process) and
``addressable_shards`` (each process's own part). Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Sharded transposed convolution on one or several processes (see the "
        "module docstring for launch commands).",
    )
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process run)")
    p.add_argument("--num-processes", type=int, help="number of processes")
    p.add_argument("--process-id", type=int, help="this process's id, 0 .. N-1")
    p.add_argument(
        "--local-devices",
        type=int,
        help="CPU devices per process (default: 8 through XLA_FLAGS, unless XLA_FLAGS is set)",
    )
    p.add_argument(
        "--multihost",
        action="store_true",
        help="join a multi-process run that jax detects (SLURM, Open MPI, Kubernetes, Cloud "
        "TPU) or that JAXDECONV_* variables describe",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=30,
        help="seconds after which a silent process is declared dead and the others abort",
    )
    return p.parse_args(argv)


def pattern(shape, index=None, seed=0.0) -> np.ndarray:
    """The values of a global array at ``index`` (a tuple of slices), without the rest.

    Stands for a loader that reads one region of a dataset on disk.
    """
    index = tuple(index or ()) + (slice(None),) * (len(shape) - len(index or ()))
    axes = [np.arange(n)[s] for n, s in zip(shape, index)]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    phase = sum(g * (0.37 + 0.61 * k + seed) for k, g in enumerate(grid))
    return np.sin(phase + seed).astype(np.float32)


def main(argv=None) -> None:
    args = parse_args(argv)
    if "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

    import jaxdeconv.distributed as jdd

    described = (args.coordinator, args.num_processes, args.process_id)
    env = (jdd.ENV_COORDINATOR, jdd.ENV_NUM_PROCESSES, jdd.ENV_PROCESS_ID)
    if args.multihost or any(v is not None for v in described) or any(e in os.environ for e in env):
        jdd.initialize(
            *described,
            local_device_count=args.local_devices,
            heartbeat_timeout=args.heartbeat_timeout,
        )
    elif args.local_devices is not None:
        import jax

        jax.config.update("jax_num_cpu_devices", args.local_devices)

    import jax
    import jax.numpy as jnp
    from jax.experimental import mesh_utils, multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxdeconv
    import jaxdeconv.sharding as jds

    nproc, me, local = jax.process_count(), jax.process_index(), jax.local_device_count()
    say = print if me == 0 else (lambda *a, **k: None)  # one copy of the report

    # Mesh: the batch axis "data" crosses processes (hosts), each process's devices lie
    # along "space": data parallelism needs no communication forward and one all-reduce
    # of the weight gradient backward, the cheapest traffic for the slow links between
    # hosts; halos and channel splits stay on the fast links inside a host. On one
    # process, split its devices 2 x (n / 2). process_is_granule=True groups devices by
    # process, which works on CPU and GPU; on multi-slice TPU leave it False (slices).
    per_host_data = 2 if nproc == 1 and local % 2 == 0 and local > 1 else 1
    devices = mesh_utils.create_hybrid_device_mesh(
        (per_host_data, local // per_host_data), (nproc, 1), process_is_granule=True
    )
    mesh = Mesh(devices, ("data", "space"))
    # One axis over every device in process order: splitting H along it puts halo
    # exchanges across the process boundary, for inputs too large for one host.
    line = Mesh(devices.reshape(-1), ("all",))
    n_data, n_space, n_all = mesh.shape["data"], mesh.shape["space"], line.size
    say(
        f"{len(jax.devices())} devices on {nproc} process{'es' if nproc > 1 else ''}, "
        f"mesh {dict(mesh.shape)} ('data' across processes), line {dict(line.shape)}"
    )

    # A decoder layer: 16 -> C_out channels, 4x4 kernel, stride 2, padding 1 (doubles H, W).
    x_shape = (2 * n_data, 16, 4 * n_all, 16)  # [N, C_in, H, W]
    w_shape = (16, 4 * n_space, 4, 4)  # [C_in, C_out, kH, kW]
    kw = dict(stride=2, padding=1)

    def load(shape, spec, seed, on=mesh):
        """A global array; this process builds only the shards its devices hold."""
        sharding = NamedSharding(on, P(*spec))
        return jax.make_array_from_callback(shape, sharding, lambda i: pattern(shape, i, seed))

    def load_batch(shape, seed):
        """The same, from this process's own contiguous samples (its part of a dataset)."""
        sharding = NamedSharding(mesh, P("data"))
        rows = [
            i[0].indices(shape[0]) for i in sharding.addressable_devices_indices_map(shape).values()
        ]
        mine = slice(min(r[0] for r in rows), max(r[1] for r in rows))
        return jax.make_array_from_process_local_data(
            sharding, pattern(shape, (mine,), seed), shape
        )

    # The reference: the whole arrays on one device of this process (built here for the
    # check only), a plain NumPy transposed convolution, no mesh.
    x, w = pattern(x_shape, seed=1.0), pattern(w_shape, seed=2.0)
    reference = jaxdeconv.numpy_conv_transpose(x, w, **kw)

    def check(name, fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        y = compiled(*args)
        for shard in y.addressable_shards:  # this process's part, against the reference
            err = float(np.max(np.abs(np.asarray(shard.data) - reference[shard.index])))
            assert err < 1e-3, (name, shard.index, err)
        whole = np.asarray(multihost_utils.process_allgather(y, tiled=True))  # every process
        err = float(np.max(np.abs(whole - reference)))
        assert err < 1e-3, (name, err)
        counts = jds.collectives(compiled.as_text())
        say(f"  {name:<52} collectives {counts}, max |diff| {err:.1e}")
        return y

    def conv(x, w):
        return jds.conv_transpose(x, w, **kw)

    say("XLA partitions jaxdeconv.sharding.conv_transpose:")
    xb = load_batch(x_shape, 1.0)
    wr = load(w_shape, (), 2.0)
    check("data parallel (batch over 'data')", conv, xb, wr)
    xh = load(x_shape, (None, None, "all"), 1.0, on=line)
    check(
        "spatial (H over every device, halos cross hosts)",
        conv,
        xh,
        load(w_shape, (), 2.0, on=line),
    )
    check(
        "data x model parallel (C_out over 'space')", conv, xb, load(w_shape, (None, "space"), 2.0)
    )
    xbh = load(x_shape, ("data", None, "space"), 1.0)
    check("data x spatial (H over 'space')", conv, xbh, wr)

    say("shard_map with explicit ppermute halos (jaxdeconv.sharding.conv_transpose_spatial):")

    def spatial_line(x, w):
        return jds.conv_transpose_spatial(x, w, **kw, mesh=line, spatial_axes=("all", None))

    def spatial_2d(x, w):
        return jds.conv_transpose_spatial(
            x, w, **kw, mesh=mesh, spatial_axes=("space", None), batch_axis="data"
        )

    wl = load(w_shape, (), 2.0, on=line)
    y = check("H over every device", spatial_line, xh, wl)
    say(f"  output {y.shape} sharded as {y.sharding.spec}")
    check("batch over 'data', H over 'space'", spatial_2d, xbh, wr)

    say("gradients (input, weight):")

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w) ** 2)

    ref_device = jax.local_devices()[0]  # one device of this process, no mesh
    plain = jax.jit(jax.grad(loss(lambda x, w: jaxdeconv.conv_transpose(x, w, **kw)), (0, 1)))
    want = [
        np.asarray(g) for g in plain(jax.device_put(x, ref_device), jax.device_put(w, ref_device))
    ]
    for name, fn, args in (
        ("data parallel", conv, (xb, wr)),
        ("conv_transpose_spatial, H over every device", spatial_line, (xh, wl)),
    ):
        compiled = jax.jit(jax.grad(loss(fn), (0, 1))).lower(*args).compile()
        got = multihost_utils.process_allgather(compiled(*args), tiled=True)
        rel = max(
            float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b))) for a, b in zip(got, want)
        )
        assert rel < 1e-4, (name, rel)
        counts = jds.collectives(compiled.as_text())
        say(f"  {name:<52} collectives {counts}, max relative diff {rel:.1e}")
    print("all equal to the single-device result")


if __name__ == "__main__":
    main()

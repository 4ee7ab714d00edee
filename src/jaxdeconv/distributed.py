"""Start JAX's distributed runtime for several processes, and launch them locally.

jaxdeconv runs on several hosts through JAX's own runtime (:mod:`jax.distributed`):
one process per host, all calling :func:`jax.distributed.initialize` before any
computation, after which :func:`jax.devices` lists the devices of every
process and a :class:`jax.sharding.Mesh` can span them. Two things are missing
from a bare ``jax.distributed.initialize()``, and this module adds them:

* :func:`initialize` takes the coordinator, the number of processes and this
  process's id as arguments, or from ``JAXDECONV_COORDINATOR``,
  ``JAXDECONV_NUM_PROCESSES`` and ``JAXDECONV_PROCESS_ID`` (jax itself reads
  only ``JAX_COORDINATOR_ADDRESS``, and finds the other two only under SLURM,
  Open MPI, Kubernetes or Cloud TPU, which it is still left to detect when none
  is given). It sets jax's timeouts, so that a process that never starts or
  dies makes the others fail with an error within a bound instead of waiting,
  and on CPU it selects gloo for collectives across processes and can split
  each process's CPU into several devices (to try a mesh on one machine).
* :func:`launch_local` (and ``python -m jaxdeconv.distributed``) starts N
  copies of a command on this machine, wired to a coordinator on 127.0.0.1,
  waits for them with a time limit, stops them all as soon as one fails, and
  says which one failed::

      python -m jaxdeconv.distributed --num-processes 2 --local-devices 2 -- \\
          python examples/sharded.py

Timeouts (seconds; jax's defaults are 300, 100 and 300):

* ``initialization_timeout``: how long a process waits for all the others to
  connect to the coordinator.
* ``heartbeat_timeout``: how long a process may be silent before the
  coordinator declares it dead; every other process then aborts with
  ``The following tasks are unhealthy (stopped sending heartbeats)``; if the
  coordinator (process 0) dies, the others abort at once.
* ``shutdown_timeout``: how long a finished process waits for the others at
  exit.

This module is not imported by ``import jaxdeconv``; import
``jaxdeconv.distributed`` (it must run before anything initializes a jax
backend).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "ENV_COORDINATOR",
    "ENV_LOCAL_DEVICES",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "LaunchResult",
    "free_port",
    "initialize",
    "launch_local",
    "main",
]

ENV_COORDINATOR = "JAXDECONV_COORDINATOR"
"""Environment variable read by :func:`initialize`: ``host:port`` of process 0's coordinator."""
ENV_NUM_PROCESSES = "JAXDECONV_NUM_PROCESSES"
"""Environment variable read by :func:`initialize`: the number of processes."""
ENV_PROCESS_ID = "JAXDECONV_PROCESS_ID"
"""Environment variable read by :func:`initialize`: this process's id, 0 .. N - 1."""
ENV_LOCAL_DEVICES = "JAXDECONV_LOCAL_DEVICES"
"""Environment variable read by :func:`initialize`: CPU devices to simulate per process."""

DEFAULT_TIMEOUTS = {
    "initialization_timeout": 120,
    "heartbeat_timeout": 30,
    "shutdown_timeout": 60,
}
"""Our defaults for :func:`initialize`'s timeouts, in seconds (shorter than jax's)."""


def _check_int(name: str, value, minimum: int, source: str | None = None) -> int:
    where = f" (from ${source})" if source else ""
    if isinstance(value, str) and source:
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"{name}={value!r}{where} must be an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}{where}")
    if value < minimum:
        raise ValueError(f"{name}={value!r}{where} must be >= {minimum}")
    return value


def _from_env(value, env: str):
    """``value``, else the environment variable ``env``; and where it came from."""
    if value is not None:
        return value, None
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return None, None
    return raw, env


def _check_coordinator(value, source: str | None) -> str:
    where = f" (from ${source})" if source else ""
    if not isinstance(value, str):
        raise TypeError(f"coordinator must be a 'host:port' string, got {value!r}{where}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator={value!r}{where} must be 'host:port', e.g. '10.0.0.1:1234'")
    return value


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_count: int | None = None,
    initialization_timeout: int = DEFAULT_TIMEOUTS["initialization_timeout"],
    heartbeat_timeout: int = DEFAULT_TIMEOUTS["heartbeat_timeout"],
    shutdown_timeout: int = DEFAULT_TIMEOUTS["shutdown_timeout"],
    cluster_detection_method: str | None = None,
) -> None:
    """Join this process to a multi-process jax run; call it before any jax computation.

    Each argument left ``None`` is read from its environment variable
    (:data:`ENV_COORDINATOR`, :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`,
    :data:`ENV_LOCAL_DEVICES`); whatever is still unset, jax detects from a
    cluster manager (SLURM, Open MPI, Kubernetes, Cloud TPU, or mpi4py with
    ``cluster_detection_method="mpi4py"``).

    Args:
      coordinator: ``"host:port"`` of process 0, where it starts jax's
        coordination service (any free port, the same for all processes).
      num_processes: the number of processes, ``>= 1``.
      process_id: this process's id, ``0 <= process_id < num_processes``.
      local_device_count: on CPU, the number of devices each process splits its
        CPU into (``jax_num_cpu_devices``), to try a mesh on one machine;
        ``None`` keeps jax's (one device, or ``XLA_FLAGS``'
        ``--xla_force_host_platform_device_count``). Ignored by GPU and TPU.
      initialization_timeout: seconds to wait for every process to connect.
      heartbeat_timeout: seconds without a heartbeat after which a process is
        declared dead and all the others abort with an error naming it.
      shutdown_timeout: seconds a finished process waits for the others at exit.
      cluster_detection_method: passed to :func:`jax.distributed.initialize`.

    Afterwards :func:`jax.process_index`, :func:`jax.process_count`,
    :func:`jax.devices` (every process's) and :func:`jax.local_devices` (this
    one's) describe the run.

    Raises:
      TypeError, ValueError: for a malformed argument or environment variable
        (the message names it and its value), or when the run is not described
        by arguments, variables or a detected cluster manager.
      RuntimeError: if a jax backend is already initialized (a computation
        ran before), or if jax's distributed runtime is already initialized.
    """
    coord, coord_src = _from_env(coordinator, ENV_COORDINATOR)
    nproc, nproc_src = _from_env(num_processes, ENV_NUM_PROCESSES)
    pid, pid_src = _from_env(process_id, ENV_PROCESS_ID)
    ndev, ndev_src = _from_env(local_device_count, ENV_LOCAL_DEVICES)
    if coord is not None:
        coord = _check_coordinator(coord, coord_src)
    if nproc is not None:
        nproc = _check_int("num_processes", nproc, 1, nproc_src)
    if pid is not None:
        pid = _check_int("process_id", pid, 0, pid_src)
        if nproc is not None and pid >= nproc:
            raise ValueError(
                f"process_id={pid} must be < num_processes={nproc} (ids run 0 .. {nproc - 1})"
            )
    if ndev is not None:
        ndev = _check_int("local_device_count", ndev, 1, ndev_src)
    timeouts = {
        "initialization_timeout": initialization_timeout,
        "heartbeat_timeout": heartbeat_timeout,
        "shutdown_timeout": shutdown_timeout,
    }
    for name, value in timeouts.items():
        _check_int(name, value, 1)
    if cluster_detection_method is not None and not isinstance(cluster_detection_method, str):
        raise TypeError(
            f"cluster_detection_method must be a string or None, got {cluster_detection_method!r}"
        )

    import jax
    from jax._src import xla_bridge

    initialized = getattr(xla_bridge, "backends_are_initialized", lambda: False)
    if initialized():
        raise RuntimeError(
            "jaxdeconv.distributed.initialize must run before any jax computation (a jax "
            "backend is already initialized in this process)"
        )
    if ndev is not None:
        jax.config.update("jax_num_cpu_devices", ndev)
    if jax.config.jax_cpu_collectives_implementation is None:
        # Collectives between processes on CPU (the default in jax 0.10.2; older
        # versions may have none unless set).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coord,
            num_processes=nproc,
            process_id=pid,
            cluster_detection_method=cluster_detection_method,
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout,
            shutdown_timeout_seconds=shutdown_timeout,
        )
    except ValueError as e:
        raise ValueError(
            f"{e} No multi-process run is described: pass coordinator, num_processes and "
            f"process_id, set ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID}, "
            "or run under a cluster manager jax detects (SLURM, Open MPI, Kubernetes, Cloud "
            f"TPU). Got coordinator={coord!r}, num_processes={nproc!r}, process_id={pid!r}."
        ) from e


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """What :func:`launch_local` saw.

    Attributes:
      returncode: 0 if every process exited with 0; else the status of the
        first process seen failing (``128 + signal`` if a signal ended it), or
        124 if the time limit ran out.
      returncodes: each process's exit status (negative: ended by that signal,
        including the ones the launcher stopped after a failure).
      failed: the id of the process that failed first, or ``None``.
      message: one line saying what happened.
    """

    returncode: int
    returncodes: tuple[int, ...]
    failed: int | None
    message: str


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Stop every still-running process (and its process group): SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
        deadline = time.monotonic() + wait_s
        for p in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))


def launch_local(
    num_processes: int,
    argv: Sequence[str],
    *,
    local_device_count: int | None = None,
    timeout_s: float = 600.0,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    prefix_output: bool = True,
    stream=None,
) -> LaunchResult:
    """Run ``num_processes`` copies of a command on this machine as one jax run.

    Each copy gets :data:`ENV_COORDINATOR` (``127.0.0.1:<free port>``),
    :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID` (0 .. N - 1) and, if
    given, :data:`ENV_LOCAL_DEVICES` in its environment, for
    :func:`initialize` to read. Output lines are prefixed with ``[i]``. When a
    process fails, the others are stopped at once (they would otherwise abort
    only after jax's heartbeat timeout); when ``timeout_s`` runs out, all are.

    Args:
      num_processes: how many processes, ``>= 1``.
      argv: the command, e.g. ``["python", "examples/sharded.py"]``.
      local_device_count: CPU devices per process, or ``None``.
      timeout_s: seconds before every process is stopped.
      env: the environment of the processes (default: this one's), to which the
        variables above are added.
      port: the coordinator port (default: a free one).
      prefix_output: prefix each line of output with the process id (else the
        processes inherit this process's stdout and stderr).
      stream: where prefixed output goes (default ``sys.stdout``).

    Returns:
      A :class:`LaunchResult`; its ``message`` names the process that failed.

    Raises:
      TypeError, ValueError: for malformed arguments.
    """
    _check_int("num_processes", num_processes, 1)
    if isinstance(argv, str) or not isinstance(argv, Sequence) or not argv:
        raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
    if not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
    if local_device_count is not None:
        _check_int("local_device_count", local_device_count, 1)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds")
    if port is None:
        port = free_port()
    elif _check_int("port", port, 1) > 65535:
        raise ValueError(f"port={port!r} must be <= 65535")
    stream = sys.stdout if stream is None else stream
    base = dict(os.environ if env is None else env)
    base[ENV_COORDINATOR] = f"127.0.0.1:{port}"
    base[ENV_NUM_PROCESSES] = str(num_processes)
    base["PYTHONUNBUFFERED"] = "1"
    if local_device_count is not None:
        base[ENV_LOCAL_DEVICES] = str(local_device_count)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    deadline = time.monotonic() + timeout_s
    failed, returncode, message = None, 0, ""
    try:
        for i in range(num_processes):
            child_env = dict(base, **{ENV_PROCESS_ID: str(i)})
            pipe = subprocess.PIPE if prefix_output else None
            p = subprocess.Popen(
                list(argv),
                env=child_env,
                stdout=pipe,
                stderr=subprocess.STDOUT if prefix_output else None,
                text=True,
                start_new_session=True,  # its own process group, stopped as a whole
            )
            procs.append(p)
            if prefix_output:
                t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", stream), daemon=True)
                t.start()
                pumps.append(t)
        while True:
            codes = [p.poll() for p in procs]
            bad = [(i, rc) for i, rc in enumerate(codes) if rc not in (None, 0)]
            if bad:
                failed, rc = bad[0]
                returncode = 128 - rc if rc < 0 else rc
                message = (
                    f"process {failed} of {num_processes} {_describe(rc)}; stopping the others"
                )
                break
            if all(rc == 0 for rc in codes):
                message = f"all {num_processes} processes exited with status 0"
                break
            if time.monotonic() > deadline:
                running = [i for i, rc in enumerate(codes) if rc is None]
                returncode = 124
                message = (
                    f"time limit of {timeout_s:g} s reached with process(es) {running} of "
                    f"{num_processes} still running; stopping them"
                )
                break
            time.sleep(0.05)
    finally:
        _stop(procs)
        for t in pumps:
            t.join(timeout=5)
    return LaunchResult(returncode, tuple(p.returncode for p in procs), failed, message)


def main(args: Sequence[str] | None = None) -> int:
    """``python -m jaxdeconv.distributed --num-processes N [...] -- COMMAND ...``."""
    args = list(sys.argv[1:] if args is None else args)
    if "--" in args:
        i = args.index("--")
        args, command = args[:i], args[i + 1 :]
    else:
        command = []
    parser = argparse.ArgumentParser(
        prog="python -m jaxdeconv.distributed",
        description=(
            "Start N copies of COMMAND on this machine as one multi-process jax run "
            f"(coordinator on 127.0.0.1; each copy reads ${ENV_COORDINATOR}, "
            f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID} through "
            "jaxdeconv.distributed.initialize). Stops all copies when one fails."
        ),
        usage="%(prog)s --num-processes N [--local-devices K] [--timeout S] -- COMMAND ...",
    )
    parser.add_argument("--num-processes", "-n", type=int, required=True, metavar="N")
    parser.add_argument(
        "--local-devices", type=int, default=None, metavar="K", help="CPU devices per process"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="stop all after S seconds"
    )
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    opts = parser.parse_args(args)
    # A SIGTERM to the launcher stops the processes it started too (they run in their own
    # sessions, out of reach of the terminal's signals).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if not command:
        parser.error("give the command to run after '--', e.g. -- python examples/sharded.py")
    try:
        result = launch_local(
            opts.num_processes,
            command,
            local_device_count=opts.local_devices,
            timeout_s=opts.timeout,
            port=opts.port,
        )
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    print(f"jaxdeconv.distributed: {result.message}", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

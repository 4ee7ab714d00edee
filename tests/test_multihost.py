"""Several processes over loopback: jax.distributed, as on several hosts.

Each test starts real processes (2 processes x 2 simulated CPU devices,
``jaxdeconv.distributed.launch_local``); tests/multihost_worker.py is what each
process runs. Every run is bounded: the launcher's time limit, jax's
distributed timeouts set by ``jaxdeconv.distributed.initialize``, and the
subprocess timeouts here.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jaxdeconv.distributed as jdd

pytestmark = pytest.mark.slow  # subprocesses / whole programs: see pyproject markers

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "multihost_worker.py")
SRC = str(ROOT / "src")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without the 8-device XLA_FLAGS of conftest.py (the worker asks for
    2 devices per process) and without any JAXDECONV_* run description; ``src`` first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "XLA_FLAGS" and not k.startswith("JAXDECONV_") and not k.startswith("JAX_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def launch(argv, timeout_s=240.0, **extra):
    out = io.StringIO()
    t0 = time.monotonic()
    result = jdd.launch_local(
        2, argv, local_device_count=2, timeout_s=timeout_s, env=child_env(**extra), stream=out
    )
    return result, out.getvalue(), time.monotonic() - t0


@pytest.fixture(scope="module")
def worker_run():
    result, text, seconds = launch([sys.executable, WORKER, "check"])
    assert result.returncode == 0, f"{result.message}\n{text[-6000:]}"
    reports = {}
    for line in text.splitlines():
        prefix, _, rest = line.partition(" ")
        if rest.startswith("RESULT "):
            reports[prefix] = json.loads(rest[len("RESULT ") :])
    assert set(reports) == {"[0]", "[1]"}, text[-6000:]
    print(f"2 processes x 2 devices: {seconds:.1f} s")
    return reports


def test_every_entry_point_forward_and_gradients_match_one_device(worker_run):
    for report in worker_run.values():
        assert report["processes"] == 2 and report["devices"] == 4
        assert report["failures"] == [], report["failures"]
    cases = worker_run["[0]"]["cases"]
    assert cases == worker_run["[1]"]["cases"]  # one program, the same on every process
    assert len(cases) == 13, sorted(cases)


def _cases(report, *words):
    found = {k: v for k, v in report["cases"].items() if all(w in k for w in words)}
    assert found, words
    return found


def test_collectives_of_each_compiled_program(worker_run):
    report = worker_run["[0]"]
    for entry in ("sharding.conv_transpose", "conv_transpose(auto)"):
        # batch over the processes: no communication forward, one all-reduce of the
        # weight gradient backward (data parallel)
        for name, c in _cases(report, entry, "batch groups").items():
            assert c["forward"] == {}, (name, c)
            assert c["gradient"] == {"all-reduce": 1}, (name, c)
            assert c["out_spec"] == "P('data',)", (name, c)
        # H over all 4 devices, across the process boundary: halo exchange only
        # forward; backward the partitioner all-gathers for the weight gradient (the
        # documented reason for conv_transpose_spatial), nothing else
        for name, c in _cases(report, entry, "spatial").items():
            assert set(c["forward"]) == {"collective-permute"}, (name, c)
            assert set(c["gradient"]) <= {"collective-permute", "all-gather", "all-reduce"}, c
            assert c["out_spec"] == "P(None, None, 'all')", (name, c)
        # batch over processes, C_out over each process's devices: nothing forward,
        # the output stays sharded both ways; backward, all-reduces (weight gradient
        # over the batch, input gradient over the channels)
        for name, c in _cases(report, entry, "out_channels").items():
            assert c["forward"] == {}, (name, c)
            assert set(c["gradient"]) == {"all-reduce"}, (name, c)
            assert c["out_spec"] == "P('data', 'space')", (name, c)
    # shard_map with ppermute halos: one exchange forward, the reverse exchanges and one
    # all-reduce of the weight gradient backward; output evenly sharded
    for name, c in _cases(report, "conv_transpose_spatial").items():
        assert c["forward"] == {"collective-permute": 1}, (name, c)
        assert c["gradient"] == {"collective-permute": 2, "all-reduce": 1}, (name, c)


def test_dead_process_makes_the_other_fail_within_the_heartbeat_bound():
    """Without the launcher: jax's own heartbeat must end the surviving process."""
    port = jdd.free_port()
    env = child_env(
        JAXDECONV_COORDINATOR=f"127.0.0.1:{port}",
        JAXDECONV_NUM_PROCESSES="2",
        JAXDECONV_LOCAL_DEVICES="2",
        MULTIHOST_HEARTBEAT_S="4",
    )
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "die"],
            env=dict(env, JAXDECONV_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.monotonic() - t0
    assert procs[1].returncode == 3, outs[1][-3000:]
    assert procs[0].returncode != 0, outs[0][-3000:]
    assert "UNEXPECTED" not in outs[0]
    assert "stopped sending heartbeats" in outs[0] or "unhealthy" in outs[0], outs[0][-3000:]
    assert seconds < 60, seconds


def test_launcher_stops_the_others_and_names_the_failed_process():
    # No jax here: process 1 fails at once, process 0 would run for a minute.
    code = (
        "import os, sys, time\n"
        "if os.environ['JAXDECONV_PROCESS_ID'] == '1':\n"
        "    print('process 1 exits on purpose', flush=True); sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    result, text, seconds = launch([sys.executable, "-c", code], timeout_s=120)
    assert result.returncode == 3, (result, text[-3000:])
    assert result.failed == 1
    assert result.message.startswith("process 1 of 2 exited with status 3"), result.message
    assert result.returncodes == (-15, 3), result  # process 0 stopped with SIGTERM
    assert "[1] process 1 exits on purpose" in text
    assert seconds < 30, seconds


def test_launcher_time_limit():
    code = "import time; time.sleep(60)"
    result, _, seconds = launch([sys.executable, "-c", code], timeout_s=2)
    assert result.returncode == 124 and result.failed is None, result
    assert "time limit of 2 s" in result.message
    assert seconds < 20, seconds


def test_example_runs_on_two_processes():
    cmd = [sys.executable, "-m", "jaxdeconv.distributed", "--num-processes", "2"]
    cmd += ["--local-devices", "2", "--timeout", "200", "--"]
    cmd += [sys.executable, str(ROOT / "examples" / "sharded.py")]
    proc = subprocess.run(
        cmd, env=child_env(), capture_output=True, text=True, timeout=240, cwd=ROOT / "tests"
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    assert "[0] 4 devices on 2 processes" in proc.stdout, proc.stdout[-4000:]
    assert "[0] all equal to the single-device result" in proc.stdout, proc.stdout[-4000:]
    assert "[1] all equal to the single-device result" in proc.stdout, proc.stdout[-4000:]
    assert "all 2 processes exited with status 0" in proc.stderr


def test_initialize_validates_its_arguments(monkeypatch):
    for var in (jdd.ENV_COORDINATOR, jdd.ENV_NUM_PROCESSES, jdd.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TypeError, match=r"num_processes must be an int, got '2'"):
        jdd.initialize("127.0.0.1:1234", "2", 0)
    with pytest.raises(ValueError, match=r"process_id=2 must be < num_processes=2"):
        jdd.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match=r"coordinator='localhost' must be 'host:port'"):
        jdd.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match=r"heartbeat_timeout=0 must be >= 1"):
        jdd.initialize("127.0.0.1:1234", 2, 0, heartbeat_timeout=0)
    monkeypatch.setenv(jdd.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match=r"num_processes='two' \(from \$JAXDECONV_NUM_PROCESSES"):
        jdd.initialize("127.0.0.1:1234", None, 0)


def test_initialize_without_a_run_description_says_what_to_set():
    code = "import jaxdeconv.distributed as d; d.initialize()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "JAXDECONV_NUM_PROCESSES" in proc.stderr, proc.stderr


def test_launcher_validates_its_arguments():
    with pytest.raises(ValueError, match=r"num_processes=0 must be >= 1"):
        jdd.launch_local(0, ["true"])
    with pytest.raises(TypeError, match=r"argv must be a non-empty list of strings, got 'true'"):
        jdd.launch_local(2, "true")
    with pytest.raises(ValueError, match=r"timeout_s=0 must be a positive"):
        jdd.launch_local(2, ["true"], timeout_s=0)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdeconv.distributed", "-n", "2"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "give the command to run after '--'" in proc.stderr

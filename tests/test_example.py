"""The trained example: examples/autoencoder.py runs, its loss falls and it writes the PNG
(where asked, else into a new temporary folder, never the current directory)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses / whole programs: see pyproject markers

ROOT = Path(__file__).resolve().parents[1]


def test_autoencoder_loss_falls_and_png_written(tmp_path):
    out = tmp_path / "recon" / "digits.png"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device is enough
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "autoencoder.py"),
            "--steps",
            "60",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert any("step 60/60" in line for line in lines)  # the progress display
    match = re.fullmatch(r"loss (\d+\.\d+) -> (\d+\.\d+)", lines[-1])
    assert match, lines[-1]
    initial, final = map(float, match.groups())
    assert final < 0.7 * initial
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_autoencoder_without_out_writes_to_a_temporary_folder_not_the_cwd(tmp_path):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["TMPDIR"] = str(tmp)  # where tempfile makes its folders
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "autoencoder.py"), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    wrote = next(line for line in proc.stdout.splitlines() if line.startswith("wrote "))
    path = Path(wrote[len("wrote ") :])
    assert path.name == "reconstructions.png" and path.parent.parent == tmp
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(cwd.iterdir()) == []
    assert not (ROOT / "reconstructions.png").exists()


def test_autoencoder_without_its_extras_says_how_to_install_them(tmp_path):
    # a sitecustomize that hides optax, as if the examples extra were not installed
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['optax'] = None\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(hide), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "autoencoder.py"), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "optax (training)" in proc.stderr
    assert "pip install 'jaxdeconv[examples]'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""

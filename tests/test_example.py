"""The trained example: examples/autoencoder.py runs, its loss falls and it writes the PNG."""

import os
import re
import subprocess
import sys
from pathlib import Path

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

"""The command line and the README contract."""

import pathlib
import re
import subprocess
import sys

import pytest

from jaxdeconv.tools import cli as _cli
from jaxdeconv.tools import verify as _verify

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_quickstart_holds_exactly_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)
    assert "jaxdeconv verify" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_verify_quick_passes_and_prints_rows(capsys):
    assert _verify.main(["--quick", "--method", "lhs_dilated"]) == 0
    out = capsys.readouterr().out
    assert "padding=0 lhs_dilated     exact" in out
    assert "OK: every formulation agrees" in out
    assert re.search(r"\d+/\d+ rows agree", out)


def test_verify_fails_on_disagreement(monkeypatch, capsys):
    from jaxdeconv import formulations as _formulations

    def broken(x, w, spec, **kw):
        return _formulations.lhs_dilated(x, w, spec, **kw) * 1.001

    monkeypatch.setitem(_formulations.FORMULATIONS, "lhs_dilated", broken)
    assert _verify.main(["--quick", "--method", "lhs_dilated"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_grid_covers_the_issue():
    full = _verify.grid()
    text = " ".join(c.describe() for c in full)
    for needle in [
        "1d",
        "2d",
        "3d",
        "stride=",
        "padding=SAME",
        "padding=VALID",
        "((",
        "output_padding=",
        "output_size=",
        "dilation=",
        "groups=",
        "channels_last",
        "unbatched",
    ]:
        assert needle in text, needle
    assert any(not c.bias for c in full) and any(c.bias for c in full)
    assert len(_verify.grid(quick=True)) < len(full)


def test_console_script_and_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "jaxdeconv", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "verify" in out
    bad = subprocess.run(
        [sys.executable, "-m", "jaxdeconv", "nonsense"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.parametrize("name", sorted(_cli.COMMANDS))
def test_every_command_has_help(name):
    out = subprocess.run(
        [sys.executable, "-m", "jaxdeconv", name, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_verify_without_torch_uses_the_numpy_definition(monkeypatch, capsys):
    """The README's first command runs where torch is not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert _verify.main(["--quick", "--method", "lhs_dilated"]) == 0
    out = capsys.readouterr().out
    assert "torch not installed" in out
    assert "output_size=(8, 7)" in out and "FAIL" not in out

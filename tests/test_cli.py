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
    # right beneath them: how to add the PyTorch comparison the first command cannot make
    beneath = quick.rsplit("```", 1)[1].strip().split("\n\n", 1)[0]
    assert "pip install torch==2.13.0" in beneath and "rerun" in beneath


def _widths_ok(out: str) -> None:
    wide = [line for line in out.splitlines() if len(line) > _verify.WIDTH]
    assert not wide, wide


@pytest.mark.slow
def test_verify_quick_passes_and_prints_rows(capsys):
    import torch  # noqa: F401  (the test requirements install it: the report then uses it)

    assert _verify.main(["--quick", "--method", "lhs_dilated"]) == 0
    out = capsys.readouterr().out
    assert "padding=0 lhs_dilated     exact [[4, 12, 11, 6]," in out
    assert "OK: every formulation agrees" in out
    assert re.search(r"\d+/\d+ rows agree", out)
    _widths_ok(out)
    # every configuration is named in full once, with its short id, and each row carries the id
    for i, case in enumerate(_verify.grid(quick=True), 1):
        cid = f"c{i:02d}"
        assert f"{cid} {case.name}: " in out
        assert re.search(rf"^  {cid} +lhs_dilated +(no|yes) ", out, flags=re.M), cid
    # "no form" (torch cannot express a string padding) is not "no torch" (not installed)
    same = next(line for line in out.splitlines() if line.startswith("c04 "))
    assert "SAME" in same
    assert re.search(r"^  c04 .* no form ", out, flags=re.M)
    assert _verify.NO_TORCH not in out and "n/a" not in out
    assert "'no form' = not applicable" in out


def test_verify_names_every_failing_case_in_full(monkeypatch, capsys):
    from jaxdeconv import formulations as _formulations

    def broken(x, w, spec, **kw):
        return _formulations.lhs_dilated(x, w, spec, **kw) * 1.001

    names = ("2d dilation>stride op>=stride", "2d SAME k2 s3")
    cases = [c for c in _verify.grid(quick=True) if c.name in names]
    monkeypatch.setattr(_verify, "grid", lambda quick=False: cases)
    monkeypatch.setitem(_formulations.FORMULATIONS, "lhs_dilated", broken)
    assert _verify.main(["--quick", "--method", "lhs_dilated", "--no-gradients"]) == 1
    out = capsys.readouterr().out
    _widths_ok(out)
    assert "FAIL" in out and "FAILED: 6 disagreement(s):" in out  # 4 rows, 2 seed results
    tail = out.split("FAILED:", 1)[1]
    for padding in (0, 1):
        assert f"seed padding={padding} lhs_dilated: got" in tail
    for cid, case in zip(("c1", "c2"), cases):
        block = " ".join(tail.split())  # the entries may wrap
        for jit in ("eager", "jit"):
            assert f"{cid} {case.name} ({case.describe()}), method=lhs_dilated, {jit}:" in block
    assert "'off' = gradients not checked (--no-gradients)" in " ".join(out.split())


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
    """The README's first command runs where torch is not installed, and says how to add it."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert _verify.main(["--quick", "--method", "lhs_dilated"]) == 0
    out = capsys.readouterr().out
    assert "torch not installed" in out
    assert "output_size=(8, 7)" in out and "FAIL" not in out
    _widths_ok(out)
    flat = " ".join(out.split())
    howto = "To add the PyTorch comparison: pip install torch==2.13.0 (the CPU wheel), then rerun"
    assert flat.count(howto) == 2  # at the top and at the end
    assert flat.rstrip().endswith("OK: every formulation agrees")
    # every torch cell says why it is empty: skipped, not "not applicable"
    rows = [line for line in out.splitlines() if re.match(r"^  c\d\d ", line)]
    assert rows and all(" no torch " in line for line in rows)
    assert _verify.NO_FORM not in out and "n/a" not in out
    assert "'no torch' = skipped, torch is not installed" in flat


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    import jaxdeconv

    assert _cli.main([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"jaxdeconv {jaxdeconv.__version__} (jax ")


@pytest.mark.parametrize("name", ["verify", "explain"])
def test_help_is_plain_text_and_shows_defaults(name):
    out = subprocess.run(
        [sys.executable, "-m", "jaxdeconv", name, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "``" not in out.stdout and ":func:" not in out.stdout
    assert "default" in out.stdout


def test_help_formatter_shows_defaults_only_where_there_is_one():
    import argparse

    p = argparse.ArgumentParser(formatter_class=_cli.HelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--out", help="where")
    p.add_argument("--quick", action="store_true", help="fewer")
    p.add_argument("--lr", default=0.1, help="rate (default: 0.1 for Adam)")
    text = " ".join(p.format_help().split())
    assert "training steps (default: 600)" in text
    assert "where (default" not in text and "fewer (default" not in text
    assert text.count("default") == 2


def test_explain_num_spatial_dims_and_its_hidden_alias(capsys):
    from jaxdeconv.tools import explain as _explain

    parser = _explain.build_parser()
    assert parser.parse_args(["--num-spatial-dims", "1"]).num_spatial_dims == 1
    assert parser.parse_args(["--ndim", "1"]).num_spatial_dims == 1  # still accepted
    assert "--ndim" not in parser.format_help()


def test_missing_optional_dependency_is_an_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(_cli.MissingDependency, match=re.escape("pip install 'jaxdeconv[plot]'")):
        _cli.require("matplotlib", "--figures")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(_cli.MissingDependency, match=re.escape("pip install torch==2.13.0")):
        _cli.require("torch", "the PyTorch comparison")
    _cli.require("numpy", "anything")  # present: no error


def test_cli_reports_a_missing_dependency_without_a_traceback(monkeypatch, capsys):
    def needs_matplotlib(argv):
        _cli.require("matplotlib", "plotting")

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(_cli.COMMANDS, "fake", ("jaxdeconv.tools.fake", "a test command"))
    monkeypatch.setitem(sys.modules, "jaxdeconv.tools.fake", type(sys)("fake"))
    sys.modules["jaxdeconv.tools.fake"].main = needs_matplotlib
    assert _cli.main(["fake"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxdeconv fake: error: plotting needs matplotlib")
    assert "pip install 'jaxdeconv[plot]'" in err


def test_packaging_metadata():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert meta["optional-dependencies"]["torch"] == ["torch==2.13.0"]
    assert set(meta["urls"]) >= {"Homepage", "Documentation", "Source", "Issues"}
    assert meta["authors"] and meta["keywords"] and meta["classifiers"]
    assert any(r.startswith("mkdocs") for r in meta["optional-dependencies"]["docs"])
    req = (ROOT / "requirements-test.txt").read_text()
    assert re.search(r"^-e \.\[.*\bdocs\b.*\]$", req, flags=re.M)

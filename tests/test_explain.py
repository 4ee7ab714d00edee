"""Tests of ``jaxdeconv explain``: its numbers, its figures and its errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import image as mpimg

from jaxdeconv import FORMULATIONS, conv_transpose, study
from jaxdeconv.tools import cli as _cli
from jaxdeconv.tools import explain as _explain

SEED_GRID = ["4 12 11  6", "0  7 14 11", "2  7 11  8", "0  2  3  2"]


def _run(capsys, *argv):
    code = _explain.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _block(out: str, header: str) -> np.ndarray:
    """The number grid printed under ``header`` (up to the next blank or prose line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == header) + 1
    rows = []
    for line in lines[start:]:
        parts = line.split()
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            break
        if not parts:
            break
    rows = [r for r in rows if r]
    return np.array(rows)


def test_default_is_the_seed_example(capsys):
    code, out, err = _run(capsys)
    assert code == 0 and err == ""
    assert "x from the seed" in out and "w from the seed" in out
    text = "\n".join(line.strip() for line in out.splitlines())
    for row in SEED_GRID:
        assert row in text
    np.testing.assert_array_equal(_block(out, "y (output):"), study.SEED_OUTPUT)
    np.testing.assert_array_equal(_block(out, "x (input):"), study.SEED_INPUT)
    np.testing.assert_array_equal(_block(out, "w (weight):"), study.SEED_KERNEL)
    # flipped kernel, padded input, C.T @ x and VJP blocks
    assert "    1 0\n    2 1\n" in out
    assert "C (9 x 16)" in out
    assert "C.T @ x: exact" in out and "VJP: exact" in out and "(method='auto'): exact" in out
    for m in FORMULATIONS:
        assert f"method={m!r}): exact" in out
    assert "(3 - 1)*1 - 0 - 0 + 1*(2 - 1) + 0 + 1 = 4" in out
    assert "= 11" in out  # the worked pixel y[2, 2]
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "argv, kwargs",
    [
        (["--padding", "1"], dict(padding=1)),
        (
            ["--stride", "2", "--padding", "1", "--output-padding", "1"],
            dict(stride=2, padding=1, output_padding=1),
        ),
        (["--stride", "3", "--padding", "2"], dict(stride=3, padding=2)),
        (
            ["--dilation", "2", "--stride", "2", "--output-padding", "1"],
            dict(stride=2, dilation=2, output_padding=1),
        ),
        (["--stride", "2", "--padding", "SAME"], dict(stride=2, padding="SAME")),
    ],
)
def test_printed_output_equals_conv_transpose_and_torch(capsys, argv, kwargs):
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    x, w = study.seed_example()
    want = np.asarray(conv_transpose(x, w, **kwargs))[0, 0]
    np.testing.assert_array_equal(_block(out, "y (output):"), want)
    if kwargs.get("padding") != "SAME":
        with torch.no_grad():
            t = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), **kwargs)
        np.testing.assert_array_equal(_block(out, "y (output):"), t.numpy()[0, 0])
    assert "exact" in out and "max difference" not in out


@pytest.mark.parametrize(
    "argv",
    [
        [
            "--groups",
            "2",
            "--in-channels",
            "4",
            "--out-channels",
            "2",
            "--input-size",
            "3",
            "--kernel-size",
            "3,2",
            "--stride",
            "2,1",
            "--padding",
            "1,0",
            "--seed",
            "3",
        ],
        ["--ndim", "1", "--input", "1,2,3", "--kernel", "1,1,1", "--stride", "2"],
        ["--input-size", "2,2,2", "--kernel-size", "2", "--stride", "2", "--seed", "1"],
        ["--input", "[[1,2],[3,4]]", "--kernel", "[[1,-1,2]]", "--padding", "0,1"],
    ],
)
def test_walkthrough_numbers_equal_conv_transpose(argv, capsys):
    args = _explain.build_parser().parse_args(argv)
    x, w, kwargs, note = _explain._problem(args)
    lines, data = _explain.explain(x, w, note=note, **kwargs)
    want = np.asarray(conv_transpose(x.astype(np.float32), w.astype(np.float32), **kwargs))
    for key in ("output", "by_matrix", "by_vjp", "conv_transpose"):
        np.testing.assert_allclose(data[key], want, atol=1e-4, err_msg=key)
    assert data["statement"].holds
    assert _explain.main(argv) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n").splitlines() == lines
    if x.shape[1] == 1 and w.shape[1] == 1 and x.ndim <= 4:
        np.testing.assert_allclose(
            _block(out, "y (output):"), want[0, 0].reshape(-1, want.shape[-1])
        )


def test_given_values_and_random_values(capsys):
    code, out, _ = _run(capsys, "--input", "4,4,3,0,3,4,2,3,2", "--kernel", "[[1,2],[0,1]]")
    assert code == 0 and "x as given" in out
    np.testing.assert_array_equal(_block(out, "y (output):"), study.SEED_OUTPUT)
    code, out1, _ = _run(capsys, "--seed", "5")
    code2, out2, _ = _run(capsys, "--seed", "5")
    assert code == code2 == 0 and out1 == out2 and "random integers" in out1
    assert _block(out1, "x (input):").shape == (3, 3)


def test_large_cases_are_refused_with_a_message(capsys):
    code, _, err = _run(
        capsys,
        "--input-size",
        "64",
        "--kernel-size",
        "4",
        "--in-channels",
        "4",
        "--out-channels",
        "4",
    )
    assert code == 2 and "small examples" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--stride", "0"], "stride"),
        (["--stride", "two"], "--stride"),
        (["--padding", "FOO"], "--padding"),
        (["--output-padding", "1"], "output_padding"),
        (["--input", "1,2"], "--input"),
        (["--input", "[[1,2],[3]]"], "--input"),
        (["--kernel", "1,2,3"], "--kernel"),
        (["--num-spatial-dims", "4"], "--num-spatial-dims"),
        (["--ndim", "4"], "--num-spatial-dims"),  # the earlier name still works
        (["--groups", "2", "--in-channels", "3"], "--in-channels"),
        (["--groups", "0"], "--groups"),
        (["--input-size", "3,3", "--kernel-size", "2,2,2"], "--input-size"),
        (["--input-size", "0"], "sizes"),
        (["--padding", "5"], "output"),
        (["--input-size", "2,2,2", "--figures", "unused"], "--figures"),
    ],
)
def test_bad_input_gives_a_message_and_nonzero_exit(capsys, argv, needle):
    code, out, err = _run(capsys, *argv)
    assert code != 0
    assert "jaxdeconv explain: error:" in err and needle in err
    assert "Traceback" not in err + out


def test_argparse_errors_and_help_return_codes(capsys):
    code, _, err = _run(capsys, "--groups", "x")
    assert code == 2 and "invalid int value" in err
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "--input-size" in out and "--figures" in out


def _check_png(path):
    assert path.exists() and path.stat().st_size > 5000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert img[..., :3].std() > 0.05  # not a blank image
    rgb = np.round(img[..., :3] * 255).astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert len(np.unique(packed)) > 8  # several colours


@pytest.mark.parametrize(
    "argv",
    [
        ["--stride", "2", "--padding", "1", "--output-padding", "1"],  # the README's command
        ["--num-spatial-dims", "1", "--input-size", "5", "--kernel-size", "3", "--stride", "2"],
    ],
)
def test_figures_are_written_and_not_empty(tmp_path, capsys, argv):
    out_dir = tmp_path / "figs" / "nested"
    code, out, err = _run(capsys, *argv, "--figures", str(out_dir))
    assert code == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["coverage.png", "matrix.png", "process.png"]
    for name in names:
        _check_png(out_dir / name)
        assert str(out_dir / name) in out


def test_figure_functions_directly(tmp_path):
    from jaxdeconv.tools import figures as _figures

    rng = np.random.default_rng(0)
    x, w = rng.integers(0, 5, (1, 2, 3, 4)), rng.integers(-2, 3, (2, 1, 3, 3))
    s = study.steps(x, w, stride=2, padding=1, output_padding=1, groups=2)
    paths = _figures.write_figures(s, tmp_path)  # computes C itself
    assert [p.name for p in paths] == ["process.png", "matrix.png", "coverage.png"]
    for p in paths:
        _check_png(p)
    cov = study.coverage((3, 3), (3, 3), stride=2)
    _check_png(_figures.coverage_figure(cov, study.phases((3, 3), (3, 3), 2), tmp_path / "c.png"))
    with pytest.raises(ValueError, match="ndim"):
        _figures.process_figure(
            study.steps(np.ones((1, 1, 2, 2, 2)), np.ones((1, 1, 1, 1, 1))), tmp_path / "p.png"
        )


def test_figures_without_matplotlib_fails_first_and_gives_the_install_command(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed, as far as Python knows
    out_dir = tmp_path / "figs"
    code, out, err = _run(capsys, "--figures", str(out_dir))
    assert code == 1
    assert "matplotlib" in err and "pip install 'jaxdeconv[plot]'" in err
    assert out == ""  # refused before the walk-through
    assert not out_dir.exists()  # and before making the folder
    assert "Traceback" not in err


def test_figure_functions_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch):
    from jaxdeconv.tools import figures as _figures

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    s = study.steps(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    with pytest.raises(ImportError, match=r"pip install 'jaxdeconv\[plot\]'"):
        _figures.write_figures(s, tmp_path / "figs")
    assert not (tmp_path / "figs").exists()
    with pytest.raises(ImportError, match="matplotlib"):
        _figures.matrix_figure(np.eye(2), tmp_path / "m.png")


def _png_text(path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text)


def test_figure_captions_titles_and_size(tmp_path, capsys):
    code, _, err = _run(capsys, "--stride", "2", "--padding", "1", "--figures", str(tmp_path))
    assert code == 0, err
    process = _png_text(tmp_path / "process.png")
    # the dashed "ghost" windows are explained in a legend
    assert "window of y[" in process["Description"]
    assert "windows of the next pixels right and below" in process["Description"]
    # k2 s2: no overlap and no fewer taps at the borders (the title used to claim both)
    coverage = _png_text(tmp_path / "coverage.png")["Title"]
    assert coverage.startswith("no overlap: every sub-kernel is 1x1")
    assert "exactly 1 (input pixel, kernel tap) pair" in coverage and "border" not in coverage
    # matrix.png: cropped to its content (it was 1676 x 1166 pixels, mostly white)
    img = mpimg.imread(tmp_path / "matrix.png")
    assert img.shape[0] * img.shape[1] < 1_300_000
    assert "Row i of C" in _png_text(tmp_path / "matrix.png")["Description"]


@pytest.mark.parametrize(
    "args, start, borders",
    [
        (((4, 4), (3, 3), 2), "uneven overlap: sub-kernels of sizes 1x1, 1x2, 2x1, 2x2", None),
        (((4, 4), (4, 4), 2, 1), "even overlap: every sub-kernel is 2x2", True),
        (((4, 4), (2, 2), 2), "no overlap: every sub-kernel is 1x1", False),
        (((5,), (4,), 2), "even overlap: every sub-kernel is 2", True),
    ],
)
def test_coverage_verdict_reads_the_map(args, start, borders):
    from jaxdeconv.tools import figures as _figures

    cov = study.coverage(*args)
    verdict = _figures.coverage_verdict(cov, study.phases(*args))
    assert verdict.startswith(start), verdict
    if borders is not None:
        assert ("fewer near the borders" in verdict) == borders
        assert (int(cov.min()) < int(cov.max())) == borders


def test_registered_in_the_cli(capsys):
    assert "explain" in _cli.COMMANDS
    assert _cli.main(["explain", "--stride", "2"]) == 0
    assert "Step 1. Insert stride - 1 = 1 zero(s)" in capsys.readouterr().out
    _cli.main(["--help"])
    assert "explain" in capsys.readouterr().out


def test_python_dash_m():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "-m", "jaxdeconv", "explain"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "\n".join(line.strip() for line in r.stdout.splitlines()).count(SEED_GRID[1]) >= 3

"""``jaxdeconv bench``: the layer table, and a tiny run's files (no timings are judged)."""

import json
import sys

import numpy as np
import pytest

from jaxdeconv import make_spec
from jaxdeconv._cost import cols_bytes
from jaxdeconv.tools import bench as _bench
from jaxdeconv.tools import cli as _cli

pytestmark = pytest.mark.slow  # subprocesses / whole programs: see pyproject markers

TINY = ["--tiny", "--rounds", "1", "--min-round-s", "0", "--silent"]


def _benchmark_script(name):
    """The script ``benchmarks/<name>.py`` as a module (they are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_has_25_real_layers_with_valid_configs():
    assert len(_bench.SUITE) >= 25
    names = [layer.name for layer in _bench.SUITE.values()]
    assert len(set(names)) == len(names) == len(_bench.SUITE)
    assert not set(_bench.SUITE) & set(_bench.LAYERS)  # --layers takes either
    for layer in _bench.SUITE.values():
        assert layer.source and layer.what
        n = len(layer.size)
        spec = make_spec(
            (layer.batch, layer.in_channels, *layer.size),
            (layer.in_channels, layer.out_channels // layer.groups, *(layer.kernel,) * n),
            layer.stride,
            layer.padding,
            layer.output_padding,
            layer.groups,
            layer.dilation,
        )
        assert spec == layer.spec() and spec.flops < 2e9, layer.name  # minutes, not hours
        assert layer.tiny().spec().flops > 0
    sources = " ".join(layer.source for layer in _bench.SUITE.values())
    for model in ("DCGAN", "HiFi-GAN", "U-Net", "3-d U-Net", "FSRCNN", "ESPCN", "VAE"):
        assert model in sources
    kinds = _bench.SUITE.values()
    assert any(la.groups == la.in_channels > 1 for la in kinds)  # depthwise
    assert any(1 < la.groups < la.in_channels for la in kinds)  # grouped
    assert any(la.dilation > 1 for la in kinds)
    assert any(la.batch == 1 for la in kinds) and any(la.batch >= 256 for la in kinds)
    assert _bench.SUITE["torchtest.3d_k16s16"].kernel == 16
    assert set(_bench.QUICK) <= set(_bench.SUITE)


def test_tiny_run_writes_every_column_and_nothing_into_cwd(tmp_path, monkeypatch, capsys):
    """Worker processes (the default), output in --out; the cwd stays empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    args = ["bench", *TINY, "--layers", "dcgan.up1,grouped.g4", "--out", str(out)]
    assert _cli.main([*args, "--variants", "auto,phase,lax,torch"]) == 0
    assert list(cwd.iterdir()) == []
    data = json.loads((out / "bench.json").read_text())
    assert [la["name"] for la in data["layers"]] == ["dcgan.up1", "grouped.g4"]
    assert data["variants"] == ["auto", "phase", "lax", "torch"]
    assert set(data["gemm_gflops"]) == {"xla", "torch"}
    assert data["load_start"] and data["load_end"]
    assert 0 <= data["others"]["others"] <= 1 and 0 <= data["others"]["steal"] <= 1
    for la in data["layers"]:
        assert la["plan"].startswith("phase") and la["reference"] == "torch"
        assert 0 < la["gemm_gflops"]["xla"] <= data["gemm_gflops"]["xla"]
        got = {(r["variant"], r["mode"]) for r in la["results"]}
        assert got == {(v, m) for v in data["variants"] for m in ("fwd", "fwd+bwd")}
        for r in la["results"]:
            assert "error" not in r and r["max_rel_err"] <= _bench.TOLERANCE
            assert r["ms"] > 0 and r["rounds"] == 1 and r["vs_torch"] > 0 and r["vs_lax"] > 0
            assert r["frac_xla_gemm"] > 0 and r["frac_torch_gemm"] > 0
            assert r["faults_per_call"] >= 0
            if r["variant"] != "torch":
                assert r["compile_s"] > 0 and r["temp_bytes"] >= 0
                assert r["compile_vs_lax"] > 0 and r["temp_vs_lax"] is not None
    assert set(data["summary"]) == {"fwd", "fwd+bwd"}
    targets = {t["target"]: t["holds"] for t in data["targets"]}
    assert len(targets) == 10 and targets["compile time < 5 s on torchtest.3d_k16s16"] is None
    md = (out / "bench.md").read_text()
    for column in _bench.COLUMNS:
        assert f" {column} |" in md, column
    assert "Load at start" in md and "Issue 13's targets" in md and "Geomean" in md
    assert md.startswith("`jaxdeconv bench --tiny")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_default_out_is_a_new_temporary_directory_and_no_matplotlib_is_fine(
    tmp_path, monkeypatch, capsys
):
    """In-process (--timeout 0); matplotlib hidden: no PNG, one line says how to get it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(_bench.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    args = ["bench", *TINY, "--timeout", "0", "--layers", "hifigan.up1", "--modes", "fwd"]
    assert _cli.main([*args, "--variants", "auto,lax"]) == 0
    printed = capsys.readouterr().out
    assert "plot skipped" in printed and "pip install 'jaxdeconv[plot]'" in printed
    assert "Traceback" not in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # nothing in the cwd
    (out,) = (tmp_path / "tmp").iterdir()
    assert out.name.startswith("jaxdeconv-bench-") and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]
    data = json.loads((out / "bench.json").read_text())
    assert data["modes"] == ["fwd"] and data["layers"][0]["results"][0]["ms"] > 0


@pytest.mark.parametrize(
    "args",
    [["--layers", "nope"], ["--variants", "auto,nope"], ["--modes", "back"], ["--rounds", "0"]],
)
def test_bad_options_are_refused(args, capsys):
    assert _cli.main(["bench", *args]) == 2
    assert "jaxdeconv bench:" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "(default: 7)" in text and "temporary" in text and "dcgan.up1" in text


def test_a_compile_over_the_limit_costs_that_variant_only(tmp_path):
    """The worker is stopped and restarted without it; its gradient is not tried."""
    out = tmp_path / "out"
    args = ["bench", *TINY, "--layers", "unet.up4", "--variants", "auto,torch", "--no-plot"]
    assert _cli.main([*args, "--compile-timeout", "0.001", "--out", str(out)]) == 0
    (layer,) = json.loads((out / "bench.json").read_text())["layers"]
    auto = {r["mode"]: r for r in layer["results"] if r["variant"] == "auto"}
    assert auto["fwd"]["compile_timeout"] and "did not finish" in auto["fwd"]["error"]
    assert auto["fwd+bwd"]["error"].startswith("not tried")
    assert all(r["ms"] > 0 for r in layer["results"] if r["variant"] == "torch")
    md = (out / "bench.md").read_text()
    assert "compile timeout" in md and "did not finish" in md


def test_random_layers_draws_layers_jaxdeconv_and_torch_accept():
    """benchmarks/random_layers.py's draws are valid layers (jaxdeconv's argument checks,
    which match torch's, accept them), and its timing runs end to end on one small layer."""
    mod = _benchmark_script("random_layers")
    rng = np.random.default_rng(0)
    drawn = [d for d in (mod.draw(rng) for _ in range(200)) if d is not None]
    assert len(drawn) > 20
    for xs, ws, kw in drawn:
        make_spec(xs, ws, **kw)  # raises on an invalid layer
    for cl in (False, True):
        x, w, kw, t = mod.time_layer(
            rng, (1, 4, 5, 5), (4, 2, 3, 3), dict(stride=2, padding=1), 2, channels_last=cl
        )
        assert (x.shape, w.shape) == (
            ((1, 5, 5, 4), (3, 3, 4, 2)) if cl else ((1, 4, 5, 5), (4, 2, 3, 3))
        )
        assert kw.get("channels_last", False) == cl
        keys = {f"{v} {m}" for v in ("auto", "lax", "torch") for m in ("fwd", "fwd+bwd")}
        assert set(t) == keys
        assert all(0 < v < 10 for v in t.values())
    # --depthwise: every draw made depthwise, valid, and timed against torch alone
    made = [mod.as_depthwise(d, rng) for d in drawn]
    made = [d for d in made if d is not None]
    assert len(made) > 10
    for xs, ws, kw in made:
        assert kw["groups"] == xs[1] == ws[0] and ws[1] in (1, 2, 4)
        make_spec(xs, ws, **kw)
    _, _, _, t = mod.time_layer(
        rng,
        (1, 4, 5, 5),
        (4, 2, 3, 3),
        dict(stride=2, padding=1, groups=4),
        2,
        baselines=("torch",),
    )
    assert set(t) == {f"{v} {m}" for v in ("auto", "torch") for m in ("fwd", "fwd+bwd")}


def test_random_layers_compile_mode(monkeypatch, capsys):
    """``--compile``: each layer's compile seconds and temporary bytes, auto against lax,
    and the counts over issue 13's 2x, with nothing timed."""
    mod = _benchmark_script("random_layers")
    for cl in (False, True):
        c = mod.compile_layer((1, 4, 5, 5), (4, 2, 3, 3), dict(stride=2, padding=1), cl)
        assert set(c) == {(m, mode) for m in ("auto", "lhs_dilated") for mode in ("fwd", "fwd+bwd")}
        assert all(s > 0 and b >= 0 for s, b in c.values())
    monkeypatch.setattr(sys, "argv", ["random_layers.py", "--layers", "2", "--compile"])
    mod.main()
    out = capsys.readouterr().out
    assert out.count(" <- ") == 2 and "[phase" in out
    for key in ("fwd compile x lax", "fwd+bwd temp x lax"):
        assert key in out and "over 2x on" in out


def test_one_layer_writes_only_into_out(tmp_path, monkeypatch, capsys):
    """``--out`` goes to the bench (it once read as an abbreviation of --out-channels)."""
    one_layer = _benchmark_script("one_layer")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["--input", "1,2,3,3", "--out-channels", "2", "--kernel", "3", "--stride", "2"]
    argv += ["--variants", "auto,torch", "--modes", "fwd", "--timeout", "0"]
    assert one_layer.main([*argv, *TINY[1:], "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]
    data = json.loads((out / "bench.json").read_text())
    assert [la["name"] for la in data["layers"]] == ["one_layer"]
    assert "python benchmarks/one_layer.py" in capsys.readouterr().out


def test_real_layers_are_the_models_layers(capsys, monkeypatch):
    """benchmarks/real_layers.py's held-out layers are valid (jaxdeconv's argument checks
    accept them and torch gives the output shape jaxdeconv plans), none is a suite layer,
    and ``--list`` names them all."""
    import torch

    mod = _benchmark_script("real_layers")
    assert len(mod.LAYERS) >= 15 and not set(mod.LAYERS) & set(_bench.SUITE)
    suite = {(la.spec().input_shape, la.spec().weight_shape) for la in _bench.SUITE.values()}
    for name, (_, _, xs, ws, kw) in mod.LAYERS.items():
        layer_spec = make_spec(xs, ws, **kw)
        assert (xs, ws) not in suite, name
        fn = getattr(torch.nn.functional, f"conv_transpose{len(xs) - 2}d")
        y = fn(torch.zeros(xs), torch.zeros(ws), **kw)
        assert tuple(y.shape) == layer_spec.output_shape, name
    monkeypatch.setattr("sys.argv", ["real_layers.py", "--list"])
    mod.main()
    out = capsys.readouterr().out
    assert all(name in out for name in mod.LAYERS)


def test_kernel_picks_times_and_scores_every_candidate():
    """benchmarks/kernel_picks.py times every candidate kernel of a layer (both im2col
    GEMM layouts included) and scores the cost model's pick against the fastest."""
    picks = _benchmark_script("kernel_picks")
    layer = make_spec((1, 4, 5, 5), (4, 3, 3, 3), 2, 1, 1)
    times = picks.time_kernels(layer, rounds=1)
    assert {"forward:gemm_cols", "forward:gemm_cols_nhwc", "grads:gemm_cols_nhwc"} <= set(times)
    assert all(0 < t < 10 for t in times.values())
    row = dict(group="g", name="n", input=[1, 4, 5, 5], weight=[4, 3, 3, 3], times=times)
    row["kwargs"] = dict(stride=2, padding=1, output_padding=1)
    losses = picks.score([row])
    assert set(losses) == {("g", "forward"), ("g", "grads")}
    assert all(loss >= 1 for v in losses.values() for loss, *_ in v)
    # the large-buffer layers (--large) are valid layers whose GEMM buffers are large
    large = list(picks.layers([], 0, large=True))
    assert [name for group, name, *_ in large if group == "large"] == list(picks.LARGE)
    for group, name, xs, ws, kw in large:
        if group == "large":
            assert cols_bytes(make_spec(xs, ws, **kw), np.float32) > 10e6, name


def test_minor_faults_counts_freshly_mapped_pages():
    """The bench's page-fault column counts what a call touches anew: 64 MiB freshly
    mapped in 4-KiB pages (huge pages refused, as numpy's arrays or a kernel in THP
    ``always`` mode would use them), one byte written per page, is 16,384 faults."""
    import mmap

    n = 64 << 20
    buf = mmap.mmap(-1, n)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    before = _bench._minor_faults()
    for i in range(0, n, mmap.PAGESIZE):
        buf[i] = 1
    after = _bench._minor_faults()
    assert buf[mmap.PAGESIZE] == 1 and after - before >= 0.9 * n // mmap.PAGESIZE
    buf.close()

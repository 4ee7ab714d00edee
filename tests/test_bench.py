"""``jaxdeconv bench`` on a tiny configuration writes its JSON, markdown and PNG (no timings)."""

import json

from jaxdeconv.tools import bench as _bench
from jaxdeconv.tools import cli as _cli


def test_bench_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "bench"
    status = _cli.main(
        [
            "bench",
            "--tiny",
            "--layers",
            "dcgan,depthwise",
            "--methods",
            "auto,phase",
            "--baselines",
            "lax,torch",
            "--reps",
            "1",
            "--min-time",
            "0",
            "--out",
            str(out),
            "--silent",
        ]
    )
    assert status == 0
    data = json.loads((out / "bench.json").read_text())
    assert [layer["name"] for layer in data["layers"]] == ["dcgan", "depthwise"]
    assert all(layer["auto"] == "phase" for layer in data["layers"])
    # the tiny layers have 2 input channels: GEMM lowering, gradients via channels-last;
    # the tiny depthwise layer is grouped (groups = 2): the convolution lowering
    lowerings = {layer["name"]: layer["lowering"] for layer in data["layers"]}
    assert lowerings == {
        "dcgan": "phase: GEMM+col2im, im2col GEMM grads via NHWC",
        "depthwise": "phase: phase convs, conv grads",
    }
    impls = {(r["impl"], r["mode"]) for r in data["layers"][0]["results"]}
    assert {
        ("jaxdeconv:auto(phase)", "fwd"),
        ("jaxdeconv:phase", "fwd+bwd"),
        ("lax.conv_transpose", "fwd+bwd"),
        ("torch", "fwd"),
    } <= impls
    # lax has no groups: the depthwise layer has no lax row.
    assert not any(r["impl"] == "lax.conv_transpose" for r in data["layers"][1]["results"])
    for layer in data["layers"]:
        for r in layer["results"]:
            assert "error" not in r
            assert r["median_ms"] > 0 and r["max_rel_err"] <= _bench.TOLERANCE
    assert set(data["summary"]) >= {"fwd", "fwd+bwd", "compute_bound_fwd_frac_gemm"}
    md = (out / "bench.md").read_text()
    assert "jaxdeconv bench" in md and "| layer |" in md and "Targets" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_unknown_layer(capsys):
    assert _cli.main(["bench", "--layers", "nope"]) == 2
    assert "nope" in capsys.readouterr().err

"""`method="auto"` against torch and lax on real models' layers that the suite does not hold.

The 30-layer suite (`jaxdeconv bench`) is what the planner's figures were fitted to, and
`random_layers.py` draws layers no model may have. This is the third check: the transposed
convolutions of published models that were never part of the suite or of any fit
(audio codecs and vocoders, segmentation and detection heads, image-to-image and
video generators, a modulated convolution), each named by its source. Per layer it prints
the plan and the forward and forward+backward times of `auto`, `lhs_dilated` (lax's
conv_transpose) and torch, timed interleaved round after round, best kept
(`random_layers.time_layer`), then the geomeans and every layer under 0.9x torch or under
lax. Nothing is written to disk.

    python benchmarks/real_layers.py
    python benchmarks/real_layers.py --layers encodec.up8,sam.up1 --rounds 7
    python benchmarks/real_layers.py --list
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import pathlib

import numpy as np

import jaxdeconv

# name: (source, layer, input shape, weight shape, keyword arguments). Batches are a
# training or inference batch shrunk where the layer would take over ~0.3 s on a 2-core
# CPU; shapes are PyTorch's (channels-first, weight [C_in, C_out / groups, *kernel]).
_ENCODEC = "EnCodec 24 kHz decoder (Defossez et al. 2022); padding 0, EnCodec trims after"
_WAVEGAN = "WaveGAN generator (Donahue et al. 2019), d=64"
_PIX2PIX = "pix2pix U-Net generator (Isola et al. 2017)"
_VIDEOGAN = "VideoGAN generator (Vondrick et al. 2016)"
LAYERS: dict[str, tuple[str, str, tuple, tuple, dict]] = {
    "encodec.up8": (_ENCODEC, "1-d 512->256, 75 frames, k16 s8, N2",
                    (2, 512, 75), (512, 256, 16), dict(stride=8)),
    "encodec.up5": (_ENCODEC, "1-d 256->128, L600, k10 s5, N2",
                    (2, 256, 600), (256, 128, 10), dict(stride=5)),
    "encodec.up4": (_ENCODEC, "1-d 128->64, L3000, k8 s4, N2",
                    (2, 128, 3000), (128, 64, 8), dict(stride=4)),
    "encodec.up2": (_ENCODEC, "1-d 64->32, L12000, k4 s2, N2",
                    (2, 64, 12000), (64, 32, 4), dict(stride=2)),
    "tasnet.decoder": ("Conv-TasNet decoder (Luo & Mesgarani 2019), 4 s at 8 kHz",
                       "1-d 512->1, 3999 frames, k16 s8, N4 (one output channel)",
                       (4, 512, 3999), (512, 1, 16), dict(stride=8)),
    "wavegan.up3": (_WAVEGAN, "1-d 256->128, L256, k25 s4 p11 op1, N16",
                    (16, 256, 256), (256, 128, 25), dict(stride=4, padding=11, output_padding=1)),
    "wavegan.up5": (_WAVEGAN, "1-d 64->1, L4096, k25 s4 p11 op1, N16",
                    (16, 64, 4096), (64, 1, 25), dict(stride=4, padding=11, output_padding=1)),
    "sam.upscale1": ("Segment Anything mask decoder, output_upscaling (Kirillov et al. 2023)",
                     "256->64, 64x64, k2 s2, N1",
                     (1, 256, 64, 64), (256, 64, 2, 2), dict(stride=2)),
    "sam.upscale2": ("Segment Anything mask decoder, output_upscaling",
                     "64->32, 128x128, k2 s2, N1",
                     (1, 64, 128, 128), (64, 32, 2, 2), dict(stride=2)),
    "maskrcnn.mask": ("Mask R-CNN mask head (He et al. 2017; torchvision)",
                      "256->256, 14x14 RoIs, k2 s2, N64 RoIs",
                      (64, 256, 14, 14), (256, 256, 2, 2), dict(stride=2)),
    "cyclegan.up1": ("CycleGAN ResNet generator (Zhu et al. 2017), 256x256 images",
                     "256->128, 64x64, k3 s2 p1 op1, N1",
                     (1, 256, 64, 64), (256, 128, 3, 3),
                     dict(stride=2, padding=1, output_padding=1)),
    "pix2pix.up4": (_PIX2PIX, "1024->512, 8x8, k4 s2 p1, N1",
                    (1, 1024, 8, 8), (1024, 512, 4, 4), dict(stride=2, padding=1)),
    "pix2pix.out": (_PIX2PIX, "128->3, 128x128, k4 s2 p1, N1 (few output channels)",
                    (1, 128, 128, 128), (128, 3, 4, 4), dict(stride=2, padding=1)),
    "centernet.up": ("CenterNet ResNet-DCN up-sampling (Zhou et al. 2019), 512x512 images",
                     "256->256, 16x16, k4 s2 p1, N8",
                     (8, 256, 16, 16), (256, 256, 4, 4), dict(stride=2, padding=1)),
    "stylegan2.up": ("StyleGAN2 modulated convolution, up-sampling (Karras et al. 2020): "
                     "the batch as groups", "256->256 per image, 32x32, k3 s2, N4 as groups 4",
                     (1, 4 * 256, 32, 32), (4 * 256, 256, 3, 3), dict(stride=2, groups=4)),
    "videogan.up2": (_VIDEOGAN, "3-d 256->128, 4x8x8, k4 s2 p1, N2",
                     (2, 256, 4, 8, 8), (256, 128, 4, 4, 4), dict(stride=2, padding=1)),
    "videogan.out": (_VIDEOGAN, "3-d 64->3, 16x32x32, k4 s2 p1, N2 (few output channels)",
                     (2, 64, 16, 32, 32), (64, 3, 4, 4, 4), dict(stride=2, padding=1)),
}  # fmt: skip


def _random_layers():
    path = pathlib.Path(__file__).with_name("random_layers.py")
    spec = importlib.util.spec_from_file_location("random_layers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", help="comma-separated names (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--list", action="store_true", help="print the layers and exit")
    opts = ap.parse_args()
    names = opts.layers.split(",") if opts.layers else list(LAYERS)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        ap.error(f"unknown layers {unknown}; --list prints them")
    if opts.list:
        for name in names:
            source, layer, *_ = LAYERS[name]
            print(f"{name:16s} {layer}  [{source}]")
        return
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    time_layer = _random_layers().time_layer
    rng = np.random.default_rng(0)
    ratios: dict[str, list[tuple[float, str]]] = {}
    for name in names:
        _, layer, xs, ws, kw = LAYERS[name]
        x, w, kw_jax, t = time_layer(rng, xs, ws, kw, opts.rounds)
        row = []
        for mode in ("fwd", "fwd+bwd"):
            for base in ("torch", "lax"):
                r = t[f"{base} {mode}"] / t[f"auto {mode}"]
                ratios.setdefault(f"{mode} x {base}", []).append((r, name))
                row.append(f"{r:.2f}x {base}")
        label = jaxdeconv.plan(x, w, **kw_jax).label
        print(
            f"{name:16s} {layer:48s} auto {1e3 * t['auto fwd']:7.2f} / "
            f"{1e3 * t['auto fwd+bwd']:7.2f} ms; fwd {row[0]}, {row[1]}; "
            f"fwd+bwd {row[2]}, {row[3]} [{label}]",
            flush=True,
        )
    print()
    for key, v in ratios.items():
        g = math.exp(sum(math.log(r) for r, _ in v) / len(v))
        floor = 0.9 if key.endswith("torch") else 1.0
        low = ", ".join(f"{n} {r:.2f}x" for r, n in sorted(v) if r < floor) or "none"
        print(f"{key}: geomean {g:.2f}x over {len(v)} layers; under {floor}x: {low}")


if __name__ == "__main__":
    main()

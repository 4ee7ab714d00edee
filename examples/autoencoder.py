"""Train a small convolutional autoencoder on the 8x8 digits; its decoder is jaxdeconv.

The data are scikit-learn's bundled digits (1797 images, 8x8, loaded offline).
The encoder is two strided convolutions and a dense bottleneck; the decoder
mirrors it with two PyTorch-style transposed convolutions
(:func:`jaxdeconv.conv_transpose2d`, one of them grouped, one with
``output_padding``) whose parameters come from :func:`jaxdeconv.init_conv_transpose`.
Training uses optax (Adam) on the CPU.

    python examples/autoencoder.py --steps 600 --out figs/reconstructions.png

prints a progress display, writes a PNG of held-out digits (top row) and their
reconstructions (bottom row) to ``--out`` (default: a new temporary folder;
nothing is written to the current directory unasked), prints its path, and ends
with the line ``loss A -> B``: the held-out mean squared error before and after
training. Needs the ``examples`` extra: ``pip install 'jaxdeconv[examples]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdeconv

# import name -> what it is for; all come with `pip install 'jaxdeconv[examples]'`
NEEDS = {"optax": "training", "sklearn": "the digits", "matplotlib": "the PNG"}

LATENT = 12


def load_digits(seed: int):
    """Train / held-out splits of the digits as ``[N, 1, 8, 8]`` floats in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    images = sk_load_digits().images.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(images))
    images = images[order][:, None]
    return images[:1500], images[1500:]


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_params(key):
    """PyTorch-default initialization throughout (``U(+-1/sqrt(fan_in))``)."""
    k = jax.random.split(key, 10)
    params = {
        # encoder: Conv2d weights [C_out, C_in, kH, kW]
        "enc1_w": _uniform(k[0], (16, 1, 3, 3), 1 * 9),
        "enc1_b": _uniform(k[1], (16,), 1 * 9),
        "enc2_w": _uniform(k[2], (32, 16, 3, 3), 16 * 9),
        "enc2_b": _uniform(k[3], (32,), 16 * 9),
        "enc3_w": _uniform(k[4], (32 * 2 * 2, LATENT), 32 * 2 * 2),
        "enc3_b": _uniform(k[5], (LATENT,), 32 * 2 * 2),
        "dec1_w": _uniform(k[6], (LATENT, 32 * 2 * 2), LATENT),
        "dec1_b": _uniform(k[7], (32 * 2 * 2,), LATENT),
    }
    # decoder: ConvTranspose2d weights [C_in, C_out / groups, kH, kW]
    params["dec2_w"], params["dec2_b"] = jaxdeconv.init_conv_transpose(k[8], 32, 16, (3, 3), 2)
    params["dec3_w"], params["dec3_b"] = jaxdeconv.init_conv_transpose(k[9], 16, 1, (4, 4))
    return params


def _conv(x, w, b, stride):
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)))
    return y + b[:, None, None]


def encode(params, x):
    h = jax.nn.relu(_conv(x, params["enc1_w"], params["enc1_b"], 2))  # [N, 16, 4, 4]
    h = jax.nn.relu(_conv(h, params["enc2_w"], params["enc2_b"], 2))  # [N, 32, 2, 2]
    return h.reshape(len(x), -1) @ params["enc3_w"] + params["enc3_b"]  # [N, LATENT]


def decode(params, z):
    h = jax.nn.relu(z @ params["dec1_w"] + params["dec1_b"]).reshape(-1, 32, 2, 2)
    # 2x2 -> 4x4: grouped, output_padding=1 (torch: ConvTranspose2d(32, 16, 3, 2, 1, 1, groups=2))
    h = jaxdeconv.conv_transpose2d(
        h, params["dec2_w"], params["dec2_b"], stride=2, padding=1, output_padding=1, groups=2
    )
    h = jax.nn.relu(h)
    # 4x4 -> 8x8 (torch: ConvTranspose2d(16, 1, 4, stride=2, padding=1))
    h = jaxdeconv.conv_transpose2d(h, params["dec3_w"], params["dec3_b"], stride=2, padding=1)
    return jax.nn.sigmoid(h)


def loss_fn(params, x):
    return jnp.mean((decode(params, encode(params, x)) - x) ** 2)


def _progress(step: int, steps: int, loss: float, started: float) -> None:
    width = 30
    done = round(width * step / steps)
    line = (
        f"[{'#' * done}{'.' * (width - done)}] step {step:>{len(str(steps))}}/{steps}  "
        f"loss {loss:.4f}  {time.perf_counter() - started:5.1f}s"
    )
    if sys.stdout.isatty():
        print("\r" + line, end="" if step < steps else "\n", flush=True)
    elif step == steps or step % max(1, steps // 10) == 0:
        print(line, flush=True)


def save_png(path: str, originals: np.ndarray, recon: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.8, 1.8))
    for i in range(n):
        for row, images in enumerate((originals, recon)):
            axes[row, i].imshow(images[i, 0], cmap="gray_r", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("held-out digits (top) and reconstructions", loc="left", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        help="PNG to write (default: reconstructions.png in a new temporary folder)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps={args.steps} must be positive")
    missing = [f"{m} ({why})" for m, why in NEEDS.items() if importlib.util.find_spec(m) is None]
    if missing:  # before any training
        parser.exit(
            1,
            f"autoencoder.py: error: needs {', '.join(missing)}, not installed: "
            "pip install 'jaxdeconv[examples]'\n",
        )
    import optax

    out = args.out or str(
        Path(tempfile.mkdtemp(prefix="jaxdeconv-autoencoder-")) / "reconstructions.png"
    )

    train, held_out = load_digits(args.seed)
    params = init_params(jax.random.key(args.seed))
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(loss_fn)
    held_out_j = jnp.asarray(held_out)
    initial = float(evaluate(params, held_out_j))
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for i in range(1, args.steps + 1):
        batch = train[rng.integers(0, len(train), args.batch_size)]
        params, opt_state, loss = step(params, opt_state, batch)
        _progress(i, args.steps, float(loss), started)
    final = float(evaluate(params, held_out_j))

    shown = held_out[:10]
    recon = np.asarray(jax.jit(lambda p, x: decode(p, encode(p, x)))(params, shown))
    save_png(out, shown, recon)
    print(f"wrote {out}")
    print(f"loss {initial:.4f} -> {final:.4f}")
    return initial, final


if __name__ == "__main__":
    main()

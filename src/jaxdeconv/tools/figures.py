"""PNG figures for ``jaxdeconv explain --figures DIR`` (matplotlib, imported lazily).

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
change), so it works headless and leaves a caller's matplotlib state alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .. import study

__all__ = ["coverage_figure", "matrix_figure", "process_figure", "write_figures"]

_INPUT, _INSERTED, _PADDING = "#9ecae1", "#eeeeee", "#ffffff"
_WINDOW, _PIXEL = "#d62728", "#ffd8b1"
MAX_ANNOTATED = 24  # cells per side beyond which values are not written in


def _figure(ncols: int, width: float, height: float, ratios=None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    kw = {"width_ratios": ratios} if ratios else None
    axes = fig.subplots(1, ncols, squeeze=False, gridspec_kw=kw)[0]
    return fig, axes


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(1, -1) if a.ndim == 1 else a


def _fmt(v: float) -> str:
    return str(round(v)) if abs(v - round(v)) < 1e-9 else f"{v:.2g}"


def _cells(
    ax, values, colors=None, *, cmap="Blues", vmin=None, vmax=None, title="", fs=None, zeros=True
):
    """Draw a grid of cells with their values written in."""
    from matplotlib.colors import to_rgb

    values = _as_2d(values).astype(float)
    rows, cols = values.shape
    image = None
    if colors is None:
        image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        rgb = np.array([[to_rgb(c) for c in row] for row in _as_2d(colors)])
        ax.imshow(rgb, interpolation="nearest")
    # cell borders as two line collections (per-cell minor ticks cost an artist each)
    ax.hlines(np.arange(-0.5, rows), -0.5, cols - 0.5, color="#888888", linewidth=0.6)
    ax.vlines(np.arange(-0.5, cols), -0.5, rows - 0.5, color="#888888", linewidth=0.6)
    ax.tick_params(which="both", length=0, labelsize=7)
    ax.set_xticks(range(cols) if cols <= MAX_ANNOTATED else [])
    ax.set_yticks(range(rows) if rows <= MAX_ANNOTATED else [])
    if max(rows, cols) <= MAX_ANNOTATED:
        size = fs or max(5.0, 11.0 - 0.35 * max(rows, cols))
        for (r, c), v in np.ndenumerate(values):
            if not zeros and v == 0:
                continue
            color = "black"
            if image is not None:  # white text on dark cells
                red, green, blue, _ = image.cmap(image.norm(v))
                if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5:
                    color = "white"
            ax.text(c, r, _fmt(v), ha="center", va="center", fontsize=size, color=color)
    ax.set_title(title, fontsize=9)


def _box(ax, r0, c0, h, w, color, lw=2.5, ls="-"):
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle((c0 - 0.5, r0 - 0.5), w, h, fill=False, edgecolor=color, linewidth=lw, ls=ls)
    )


def _check_ndim(ndim: int) -> None:
    if ndim not in (1, 2):
        raise ValueError(f"figures draw 1-D and 2-D transposed convolutions, got ndim={ndim}")


def process_figure(steps: study.Steps, path, *, pixel=None, title=None) -> Path:
    """The hand method in panels: input, zero-inserted and padded input with the sliding
    flipped kernel, the flipped kernel, output (batch 0, output channel 0).

    Args:
      steps: from :func:`jaxdeconv.study.steps`.
      path: the PNG file to write.
      pixel: the output position whose window is drawn (default: the centre).
      title: how to name the operation (default: from the spec).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    spec = steps.spec
    _check_ndim(spec.ndim)
    cig = spec.in_channels // spec.groups
    pixel = tuple(o // 2 for o in spec.output_size) if pixel is None else tuple(pixel)
    steps.window(pixel)  # validates pixel
    x = _as_2d(steps.input[0, 0])
    padded = _as_2d(steps.padded[0, 0])
    kind = _as_2d(steps.cell_kind)
    kern = _as_2d(steps.dilated_kernel[0, 0])
    y = _as_2d(steps.output[0, 0])
    one_d = spec.ndim == 1
    r0, c0 = (0, pixel[0]) if one_d else pixel
    kh, kw = (1, kern.shape[1]) if one_d else kern.shape

    widths = [x.shape[1], padded.shape[1], kern.shape[1], y.shape[1]]
    height = 2.2 if one_d else 3.6
    ratios = [max(wd, 2) for wd in widths]
    fig, axes = _figure(4, max(10.0, 0.42 * sum(ratios) + 3), height, ratios)
    vmax = max(np.abs(x).max(), 1e-9)
    _cells(axes[0], x, cmap="Blues", vmin=min(x.min(), 0), vmax=vmax, title="1. input x")

    colors = np.where(kind == 2, _INPUT, np.where(kind == 1, _INSERTED, _PADDING))
    _cells(
        axes[1],
        padded,
        colors,
        title=(
            f"2. {_stride_text(spec)} zero(s) inserted, padded {_pad_text(steps)}\n"
            "blue: input, grey: inserted zeros, white: padding"
        ),
    )
    _box(axes[1], r0, c0, kh, kw, _WINDOW)
    # ghost windows: where the kernel slides next
    for dr, dc in ((0, 1), (1, 0)) if not one_d else ((0, 1),):
        r, c = r0 + dr, c0 + dc
        if r + kh <= padded.shape[0] and c + kw <= padded.shape[1]:
            _box(axes[1], r, c, kh, kw, _WINDOW, lw=1.0, ls="--")

    flip = "flipped" + (
        ", swapped within groups" if spec.in_channels * spec.out_channels > 1 else ""
    )
    dil = f", dilated by {tuple(spec.dilation)}" if any(d > 1 for d in spec.dilation) else ""
    kmax = max(np.abs(kern).max(), 1e-9)
    _cells(axes[2], kern, cmap="RdBu_r", vmin=-kmax, vmax=kmax, title=f"3. kernel, {flip}{dil}")

    ymax = max(np.abs(y).max(), 1e-9)
    _cells(axes[3], y, cmap="RdBu_r", vmin=-ymax, vmax=ymax, title="4. output y (stride-1 slide)")
    _box(axes[3], r0, c0, 1, 1, _WINDOW)

    value = steps.output[(0, 0, *pixel)]
    where = ", ".join(map(str, pixel))
    channels = f" (summed over {cig} input channels)" if cig > 1 else ""
    fig.suptitle(
        f"{title or 'transposed convolution ' + _args(spec)}:  "
        f"y[{where}] = sum(red window * kernel) = "
        f"{_fmt(value)}{channels}",
        fontsize=10,
    )
    return _save(fig, path)


def _stride_text(spec) -> str:
    s = tuple(t - 1 for t in spec.stride)
    return str(s[0]) if len(set(s)) == 1 else str(s)


def _pad_text(steps) -> str:
    p = steps.padding
    return str(p[0]) if len(set(p)) == 1 else str(p)


def _args(spec) -> str:
    def short(v):
        return str(v[0]) if len(set(v)) == 1 else str(v)

    parts = [
        f"in {'x'.join(map(str, spec.input_size))}",
        f"k {'x'.join(map(str, spec.kernel_size))}",
        f"stride {short(spec.stride)}",
        f"crop {short(spec.crop)}",
    ]
    if any(d > 1 for d in spec.dilation):
        parts.append(f"dilation {short(spec.dilation)}")
    if spec.groups > 1:
        parts.append(f"groups {spec.groups}")
    return "(" + ", ".join(parts) + ")"


def matrix_figure(matrix: np.ndarray, path, *, spec=None) -> Path:
    """``C`` and ``C.T`` as heatmaps (values written in when small enough).

    Args:
      matrix: ``C`` from :func:`jaxdeconv.study.conv_matrix`.
      path: the PNG file to write.
      spec: optional, to label the axes with sizes.
    """
    C = np.asarray(matrix, float)
    r, c = C.shape
    vmax = max(np.abs(C).max(), 1e-9)
    cell = 0.34 if max(r, c) <= MAX_ANNOTATED else max(0.06, 9.0 / max(r, c))
    fig, axes = _figure(
        2, max(8.0, cell * (r + c) + 3.0), max(3.2, cell * max(r, c) + 1.6), ratios=[c, r]
    )
    out_desc = in_desc = ""
    if spec is not None:
        out_desc = f" [{spec.out_channels}, {'x'.join(map(str, spec.output_size))}]"
        in_desc = f" [{spec.in_channels}, {'x'.join(map(str, spec.input_size))}]"
    _cells(
        axes[0],
        C,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        fs=8,
        zeros=False,
        title=(
            f"C ({r} x {c}): forward convolution\noutput-shaped{out_desc} -> input-shaped{in_desc}"
        ),
    )
    axes[0].set_xlabel("output pixel (flattened)", fontsize=8)
    axes[0].set_ylabel("input pixel (flattened)", fontsize=8)
    _cells(
        axes[1],
        C.T,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        fs=8,
        zeros=False,
        title=f"C.T ({c} x {r}): the transposed convolution\ny = C.T @ x",
    )
    axes[1].set_xlabel("input pixel (flattened)", fontsize=8)
    axes[1].set_ylabel("output pixel (flattened)", fontsize=8)
    for ax in axes:
        ax.set_anchor("N")
    fig.colorbar(axes[1].images[0], ax=axes, shrink=0.5, label="weight value")
    fig.suptitle("conv_transpose(x).ravel() == C.T @ x.ravel()", fontsize=10)
    return _save(fig, path)


def coverage_figure(cov: np.ndarray, phase_view: study.PhaseView, path) -> Path:
    """The coverage map (kernel taps per output pixel) beside the phase map.

    Args:
      cov: from :func:`jaxdeconv.study.coverage`.
      phase_view: from :func:`jaxdeconv.study.phases`.
      path: the PNG file to write.
    """
    _check_ndim(np.ndim(cov))
    cov2 = _as_2d(cov)
    ph = _as_2d(phase_view.phase)
    n_ph = math.prod(phase_view.stride)
    w = max(8.0, 0.5 * 2 * cov2.shape[1] + 3)
    h = 2.4 if np.ndim(cov) == 1 else max(3.5, 0.45 * cov2.shape[0] + 1.8)
    fig, axes = _figure(2, w, h)
    _cells(
        axes[0],
        cov2,
        cmap="viridis",
        vmin=0,
        vmax=max(cov2.max(), 1),
        title="coverage: kernel taps reaching each output pixel",
    )
    _cells(
        axes[1],
        ph,
        cmap="tab20" if n_ph > 10 else "tab10",
        vmin=0,
        vmax=19 if n_ph > 10 else 9,
        title=f"phase (which of the {n_ph} sub-kernels produces it)",
    )
    sizes = sorted({phase_view.sizes[p] for p in phase_view.sizes})
    size_text = ", ".join("x".join(map(str, s)) for s in sizes)
    verdict = (
        f"uneven overlap: sub-kernels of sizes {size_text} -> checkerboard (kernel % stride != 0)"
        if phase_view.uneven
        else f"even overlap: every sub-kernel is {size_text}; only the borders get fewer taps"
    )
    fig.suptitle(verdict, fontsize=10)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _torch_args(spec) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Per-side padding pairs and output_padding that reproduce ``spec.crop``.

    The crop is ``(padding_lo, padding_hi - output_padding)``; a negative high
    side (``output_padding > padding``, or ``SAME`` with ``k_eff < stride``) is
    at most ``max(stride, dilation) - 1``, so it is a valid ``output_padding``.
    """
    pads = tuple((lo, max(hi, 0)) for lo, hi in spec.crop)
    ops = tuple(max(-hi, 0) for _, hi in spec.crop)
    return pads, ops


def write_figures(
    steps: study.Steps, directory, *, matrix: np.ndarray | None = None, title: str | None = None
) -> list[Path]:
    """Write ``process.png``, ``matrix.png`` and ``coverage.png`` into ``directory``.

    Args:
      steps: from :func:`jaxdeconv.study.steps`.
      directory: created if missing.
      matrix: ``C`` for the same arguments, if already computed.
      title: how to name the operation in the process figure.

    Returns:
      The paths written.

    Raises:
      ValueError: for 3-D cases.
      ImportError: without matplotlib.
    """
    spec = steps.spec
    _check_ndim(spec.ndim)
    directory = Path(directory)
    os.makedirs(directory, exist_ok=True)
    pads, ops = _torch_args(spec)
    if matrix is None:
        matrix = study.conv_matrix(
            steps.weight, spec.input_size, spec.stride, pads, ops, spec.groups, spec.dilation
        )
    shape_args = (spec.input_size, spec.kernel_size, spec.stride, pads, ops, spec.dilation)
    return [
        process_figure(steps, directory / "process.png", title=title),
        matrix_figure(matrix, directory / "matrix.png", spec=spec),
        coverage_figure(
            study.coverage(*shape_args), study.phases(*shape_args), directory / "coverage.png"
        ),
    ]

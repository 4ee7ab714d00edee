"""PNG figures for ``jaxdeconv explain --figures DIR`` (matplotlib, imported lazily).

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
change), so it works headless and leaves a caller's matplotlib state alone.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np

from .. import study

__all__ = ["coverage_figure", "matrix_figure", "process_figure", "write_figures"]

_INPUT, _INSERTED, _PADDING = "#9ecae1", "#eeeeee", "#ffffff"
_WINDOW, _PIXEL = "#d62728", "#ffd8b1"
MAX_ANNOTATED = 24  # cells per side beyond which values are not written in


def _require_matplotlib() -> None:
    from .cli import require

    require("matplotlib", "jaxdeconv's figures")


def _figure(ncols: int, width: float, height: float, ratios=None):
    _require_matplotlib()
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
    fig, axes = _figure(4, max(10.0, 0.42 * sum(ratios) + 3), height + 0.35, ratios)
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
    # ghost windows: where the same window lies for the next output pixels
    steps_shown = ((0, 1), (1, 0)) if not one_d else ((0, 1),)
    ghosts = 0
    for dr, dc in steps_shown:
        r, c = r0 + dr, c0 + dc
        if r + kh <= padded.shape[0] and c + kw <= padded.shape[1]:
            _box(axes[1], r, c, kh, kw, _WINDOW, lw=1.0, ls="--")
            ghosts += 1
    from matplotlib.lines import Line2D

    where = ", ".join(map(str, pixel))
    handles = [Line2D([], [], color=_WINDOW, lw=2.5, label=f"window of y[{where}] (red cell in 4)")]
    if ghosts:
        nxt = "the next pixel to the right" if one_d else "the next pixels right and below"
        handles.append(
            Line2D(
                [], [], color=_WINDOW, lw=1.0, ls="--", label=f"windows of {nxt}: stride-1 slide"
            )
        )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=len(handles),
        fontsize=8,
        frameon=False,
    )

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

    The two are laid out at their own sizes, top-aligned, with the colour bar
    under the shorter one, so the image holds little but the matrices.

    Args:
      matrix: ``C`` from :func:`jaxdeconv.study.conv_matrix`.
      path: the PNG file to write.
      spec: optional, to label the axes with sizes.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    C = np.asarray(matrix, float)
    r, c = C.shape
    vmax = max(np.abs(C).max(), 1e-9)
    cell = 0.3 if max(r, c) <= MAX_ANNOTATED else max(0.02, 7.0 / max(r, c))
    # Layout in inches, measured from the top left: suptitle, panel titles, the matrices.
    top = 0.35 + 0.5
    (w_c, h_c), (w_t, h_t) = (c * cell, r * cell), (r * cell, c * cell)
    slot_c, slot_t = max(w_c, 3.4), max(w_t, 3.4)  # room for the two-line panel titles
    x_c = 0.65 + (slot_c - w_c) / 2
    x_t = 0.65 + slot_c + 0.75 + (slot_t - w_t) / 2
    width = 0.65 + slot_c + 0.75 + slot_t + 0.25
    short_x, short_w, short_h = (x_c, w_c, h_c) if h_c <= h_t else (x_t, w_t, h_t)
    bar_w, bar_h = min(max(short_w, 1.5), 3.0), 0.13
    bar_x, bar_top = short_x + (short_w - bar_w) / 2, top + short_h + 0.6
    caption_top = bar_top + bar_h + 0.5
    height = max(top + max(h_c, h_t) + 0.5, caption_top + 0.9)
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)

    def axes_at(x, y_top, w, h):
        return fig.add_axes((x / width, 1 - (y_top + h) / height, w / width, h / height))

    ax_c, ax_t = axes_at(x_c, top, w_c, h_c), axes_at(x_t, top, w_t, h_t)
    out_desc = in_desc = ""
    if spec is not None:
        out_desc = f" [{spec.out_channels}, {'x'.join(map(str, spec.output_size))}]"
        in_desc = f" [{spec.in_channels}, {'x'.join(map(str, spec.input_size))}]"
    common = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax, fs=8, zeros=False)
    _cells(
        ax_c,
        C,
        **common,
        title=(
            f"C ({r} x {c}): forward convolution\noutput-shaped{out_desc} -> input-shaped{in_desc}"
        ),
    )
    ax_c.set_xlabel("output pixel (flattened)", fontsize=8)
    ax_c.set_ylabel("input pixel (flattened)", fontsize=8)
    _cells(ax_t, C.T, **common, title=f"C.T ({c} x {r}): the transposed convolution\ny = C.T @ x")
    ax_t.set_xlabel("input pixel (flattened)", fontsize=8)
    ax_t.set_ylabel("output pixel (flattened)", fontsize=8)
    bar = fig.colorbar(
        ax_t.images[0], cax=axes_at(bar_x, bar_top, bar_w, bar_h), orientation="horizontal"
    )
    bar.set_label("weight value (blank: 0)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    caption = (
        "Row i of C: input pixel i of the forward convolution, a weighted sum of output "
        "pixels. Column j of C.T is row j of C: output pixel j of the transposed "
        "convolution gathers input pixels with the same weights."
    )
    fig.text(
        (short_x + short_w / 2) / width,
        1 - caption_top / height,
        "\n".join(textwrap.wrap(caption, max(36, int(short_w * 13)))),
        ha="center",
        va="top",
        fontsize=8,
    )
    fig.suptitle("conv_transpose(x).ravel() == C.T @ x.ravel()", fontsize=10, y=1 - 0.12 / height)
    return _save(fig, path)


def coverage_verdict(cov: np.ndarray, phase_view: study.PhaseView) -> str:
    """One line on the overlap, read from the coverage map and the phases.

    Uneven when the phases' sub-kernels differ in size (the checkerboard);
    otherwise even, and "no overlap" when every sub-kernel is a single tap
    (kernel == stride). Borders are mentioned only when they really get fewer
    pairs than the inside.
    """
    sizes = sorted({phase_view.sizes[p] for p in phase_view.sizes})
    size_text = ", ".join("x".join(map(str, s)) for s in sizes)
    if phase_view.uneven:
        return (
            f"uneven overlap: sub-kernels of sizes {size_text}, so neighbouring output pixels "
            "sum different numbers of terms: a checkerboard (kernel % stride != 0)"
        )
    cov = np.asarray(cov)
    most = int(cov.max(initial=0))
    kind = "no overlap" if math.prod(sizes[0]) == 1 else "even overlap"
    text = f"{kind}: every sub-kernel is {size_text}, "
    pairs = "(input pixel, kernel tap) pair" + ("" if most == 1 else "s")
    if cov.size and int(cov.min()) == most:
        return text + f"so each output pixel sums exactly {most} {pairs}"
    return text + f"so each output pixel sums {most} {pairs}, fewer near the borders"


def coverage_figure(cov: np.ndarray, phase_view: study.PhaseView, path) -> Path:
    """The coverage map (kernel taps per output pixel) beside the phase map.

    The figure's title is :func:`coverage_verdict`.

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
        title="coverage: (input pixel, kernel tap) pairs\nsummed into each output pixel",
    )
    _cells(
        axes[1],
        ph,
        cmap="tab20" if n_ph > 10 else "tab10",
        vmin=0,
        vmax=19 if n_ph > 10 else 9,
        title=f"phase: which of the {n_ph} sub-kernel(s)\nproduces each output pixel",
    )
    fig.suptitle(coverage_verdict(cov, phase_view), fontsize=10)
    return _save(fig, path)


def _texts(fig) -> list[str]:
    """The figure's title, panel titles and legend entries, in that order."""
    texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [t.get_text() for t in (ax.title, ax._left_title, ax._right_title)]
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    for legend in fig.legends:
        texts += [t.get_text() for t in legend.get_texts()]
    texts += [t.get_text() for t in fig.texts]
    return [t.replace("\n", " ") for t in texts if t]


def _save(fig, path) -> Path:
    """Write the PNG, cropped to what is drawn; its title and captions go into the
    PNG's text chunks (``Title``, ``Description``) too, for screen readers and tests."""
    path = Path(path)
    texts = _texts(fig)
    fig.savefig(
        path,
        format="png",
        bbox_inches="tight",
        pad_inches=0.08,
        metadata={"Title": texts[0] if texts else "", "Description": "\n".join(texts[1:])},
    )
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
      jaxdeconv.tools.cli.MissingDependency: without matplotlib (an ImportError whose
        message gives the install command), before ``directory`` is created.
    """
    spec = steps.spec
    _check_ndim(spec.ndim)
    _require_matplotlib()  # before the folder is made
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

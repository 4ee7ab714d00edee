"""``jaxdeconv explain``: a transposed convolution worked step by step in the terminal.

By default the seed's example (a 3x3 input, a 2x2 kernel, stride 1); otherwise
the sizes and arguments given. Prints the input, the zero insertion, the
padding, the flipped kernel and the output, then the same output computed as
``C.T @ x`` and as the VJP of the forward convolution, and the size formula
with the numbers filled in. ``--figures DIR`` also writes PNG figures
(needs matplotlib: ``pip install 'jaxdeconv[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from collections.abc import Sequence

import numpy as np

from .. import study
from .._api import conv_transpose
from ..formulations import FORMULATIONS
from .cli import HelpFormatter, MissingDependency, plain, require

__all__ = ["explain", "main"]

MAX_MATRIX_ENTRIES = 4_000_000  # C is dense float64: 32 MB
MAX_PRINTED_MATRIX = 32  # rows and columns of C printed in full


class _Error(ValueError):
    """A bad command-line value: reported as a message, not a traceback."""


def _ints(name: str, text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[\s,x]+", text.strip()) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise _Error(
            f"{name}={text!r} must be integers separated by commas, e.g. 3 or 3,3"
        ) from None
    if not values:
        raise _Error(f"{name}={text!r} must hold at least one integer")
    return values


def _padding(text: str):
    if text.strip().upper() in ("SAME", "VALID"):
        return text.strip().upper()
    return _ints("--padding", text)


def _values(name: str, text: str) -> np.ndarray:
    text = text.strip()
    try:
        if text.startswith("["):
            arr = np.array(json.loads(text), dtype=np.float64)
        else:
            arr = np.array([float(p) for p in re.split(r"[\s,;]+", text) if p], np.float64)
    except (ValueError, TypeError) as e:
        raise _Error(
            f"{name}={text!r} must be numbers separated by commas or a nested list like "
            f"[[4,4,3],[0,3,4],[2,3,2]] ({e})"
        ) from None
    if arr.size == 0 or arr.dtype == object:
        raise _Error(f"{name}={text!r} must be a non-empty rectangular list of numbers")
    return arr


def _per_dim(name: str, values: tuple[int, ...] | None, ndim: int, default: int):
    if values is None:
        return (default,) * ndim
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise _Error(
            f"{name}={','.join(map(str, values))} must give 1 or {ndim} values "
            f"(one per spatial dimension)"
        )
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jaxdeconv explain",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
        epilog=(
            "examples:\n"
            "  jaxdeconv explain                                  # the seed's example\n"
            "  jaxdeconv explain --stride 2 --padding 1           # the seed's x and w, stride 2\n"
            "  jaxdeconv explain --input-size 4 --kernel-size 3 --stride 2 --seed 1\n"
            "  jaxdeconv explain --num-spatial-dims 1 --input 1,2,3 --kernel 1,1,1 --stride 2\n"
            "  jaxdeconv explain --figures figs/                  # also write PNG figures"
        ),
    )
    p.add_argument(
        "--input-size", metavar="SIZE", help="spatial input size, e.g. 3 or 3,4 (default 3)"
    )
    p.add_argument("--kernel-size", metavar="SIZE", help="kernel size, e.g. 2 or 2,3 (default 2)")
    p.add_argument("--stride", help="int or one per dimension (default 1)")
    p.add_argument("--padding", help="int, one per dimension, SAME or VALID (default 0)")
    p.add_argument("--output-padding", help="int or one per dimension (default 0)")
    p.add_argument("--dilation", help="int or one per dimension (default 1)")
    p.add_argument("--groups", type=int, default=1, help="channel groups (default 1)")
    p.add_argument("--in-channels", type=int, help="C_in (default: groups)")
    p.add_argument("--out-channels", type=int, help="C_out (default: groups)")
    p.add_argument(
        "--num-spatial-dims",
        type=int,
        metavar="N",
        help="spatial dimensions, 1-3 (default: from the sizes, else 2)",
    )
    # the earlier name, kept working for scripts that use it
    p.add_argument("--ndim", type=int, dest="num_spatial_dims", help=argparse.SUPPRESS)
    p.add_argument(
        "--input",
        metavar="VALUES",
        help="input values: comma-separated (C order, [C_in, *size]) or a nested list",
    )
    p.add_argument(
        "--kernel",
        metavar="VALUES",
        help="weight values: comma-separated (C order, [C_in, C_out/groups, *k]) or nested",
    )
    p.add_argument(
        "--seed", type=int, help="random integer values from this seed (default 0 when needed)"
    )
    p.add_argument(
        "--figures",
        metavar="DIR",
        help="also write PNG figures into DIR, created if missing "
        "(needs matplotlib: pip install 'jaxdeconv[plot]')",
    )
    return p


def _problem(args) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """x [1, C_in, *in], w [C_in, C_out/g, *k], conv_transpose kwargs and a source note."""
    raw = {
        "--input-size": args.input_size and _ints("--input-size", args.input_size),
        "--kernel-size": args.kernel_size and _ints("--kernel-size", args.kernel_size),
        "--stride": args.stride and _ints("--stride", args.stride),
        "--output-padding": args.output_padding and _ints("--output-padding", args.output_padding),
        "--dilation": args.dilation and _ints("--dilation", args.dilation),
    }
    padding = _padding(args.padding) if args.padding else (0,)
    x_given = _values("--input", args.input) if args.input else None
    w_given = _values("--kernel", args.kernel) if args.kernel else None

    ndim = args.num_spatial_dims
    if ndim is None:
        lengths = [len(v) for v in raw.values() if v] + (
            [len(padding)] if not isinstance(padding, str) else []
        )
        ndim = max(lengths) if lengths and max(lengths) > 1 else None
    if ndim is None and x_given is not None and x_given.ndim > 1:
        ndim = min(x_given.ndim, 3)
    if ndim is None:
        ndim = 2
    if not 1 <= ndim <= 3:
        raise _Error(f"--num-spatial-dims={ndim} must be 1, 2 or 3")

    groups = args.groups
    if groups < 1:
        raise _Error(f"--groups={groups} must be a positive int")
    c_in = args.in_channels if args.in_channels is not None else groups
    c_out = args.out_channels if args.out_channels is not None else groups
    for name, c in (("--in-channels", c_in), ("--out-channels", c_out)):
        if c < 1 or c % groups:
            raise _Error(f"{name}={c} must be a positive multiple of --groups={groups}")

    # Sizes: from the flags, else from nested values, else the seed's.
    in_size = raw["--input-size"]
    if in_size is None and x_given is not None and x_given.ndim >= ndim:
        in_size = x_given.shape[-ndim:]
    in_size = _per_dim("--input-size", in_size, ndim, 3)
    k_size = raw["--kernel-size"]
    if k_size is None and w_given is not None and w_given.ndim >= ndim:
        k_size = w_given.shape[-ndim:]
    k_size = _per_dim("--kernel-size", k_size, ndim, 2)
    if any(v < 1 for v in (*in_size, *k_size)):
        raise _Error(f"sizes must be positive, got input {in_size} and kernel {k_size}")

    x_shape = (1, c_in, *in_size)
    w_shape = (c_in, c_out // groups, *k_size)
    seed_shapes = x_shape == (1, 1, 3, 3) and w_shape == (1, 1, 2, 2)
    rng = np.random.default_rng(0 if args.seed is None else args.seed)
    notes = []
    if x_given is not None:
        if x_given.size != math.prod(x_shape):
            raise _Error(
                f"--input has {x_given.size} values but the input [C_in={c_in}, *{in_size}] "
                f"needs {math.prod(x_shape)}"
            )
        x = x_given.reshape(x_shape)
        notes.append("x as given")
    elif seed_shapes and args.seed is None:
        x = np.array(study.SEED_INPUT, np.float64)[None, None]
        notes.append("x from the seed (torch.manual_seed(0); torch.randint(5, (1, 1, 3, 3)))")
    else:
        x = rng.integers(0, 5, x_shape).astype(np.float64)
        notes.append(f"x random integers 0..4 (--seed {0 if args.seed is None else args.seed})")
    if w_given is not None:
        if w_given.size != math.prod(w_shape):
            raise _Error(
                f"--kernel has {w_given.size} values but the weight [C_in={c_in}, "
                f"C_out/groups={c_out // groups}, *{k_size}] needs {math.prod(w_shape)}"
            )
        w = w_given.reshape(w_shape)
        notes.append("w as given")
    elif seed_shapes and args.seed is None:
        w = np.array(study.SEED_KERNEL, np.float64)[None, None]
        notes.append("w from the seed")
    else:
        w = rng.integers(-2, 3, w_shape).astype(np.float64)
        notes.append(f"w random integers -2..2 (--seed {0 if args.seed is None else args.seed})")

    kwargs = dict(
        stride=_per_dim("--stride", raw["--stride"], ndim, 1),
        padding=padding if isinstance(padding, str) else _per_dim("--padding", padding, ndim, 0),
        output_padding=_per_dim("--output-padding", raw["--output-padding"], ndim, 0),
        groups=groups,
        dilation=_per_dim("--dilation", raw["--dilation"], ndim, 1),
    )
    return x, w, kwargs, "; ".join(notes)


# --------------------------------------------------------------------------- formatting


def _num(v: float, integral: bool) -> str:
    if integral:
        return str(round(v))
    return f"{v:.3g}"


def _grid(a: np.ndarray, indent: str = "    ", blank: np.ndarray | None = None) -> list[str]:
    """Right-aligned rows of a 1-, 2- or 3-D array; cells where ``blank`` is set print ``.``."""
    a = np.asarray(a, np.float64)
    integral = bool(np.all(np.abs(a - np.round(a)) < 1e-9))
    if a.ndim == 3:
        lines = []
        for d in range(a.shape[0]):
            lines.append(f"{indent}[depth {d}]")
            lines += _grid(a[d], indent + "  ", None if blank is None else blank[d])
        return lines
    rows = a.reshape(1, -1) if a.ndim == 1 else a
    marks = np.zeros(rows.shape, bool) if blank is None else np.asarray(blank).reshape(rows.shape)
    cells = [
        ["." if m else _num(v, integral) for v, m in zip(row, mrow)]
        for row, mrow in zip(rows, marks)
    ]
    width = max((len(c) for row in cells for c in row), default=1)
    return [indent + " ".join(c.rjust(width) for c in row) for row in cells]


def _size(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _channels(a: np.ndarray, name: str, axis_name: str, indent="    ", blank=None) -> list[str]:
    """One grid per channel of a [C, *spatial] array (no header when C == 1)."""
    if a.shape[0] == 1:
        return _grid(a[0], indent, blank)
    lines = []
    for c in range(a.shape[0]):
        lines.append(f"  {name}[{axis_name}={c}]:")
        lines += _grid(a[c], indent, blank)
    return lines


def _kernels(k: np.ndarray, name: str) -> list[str]:
    """A [A, B, *k] kernel, one grid per (a, b) pair (no header when 1 x 1)."""
    if k.shape[0] == 1 and k.shape[1] == 1:
        return _grid(k[0, 0])
    lines = []
    for a in range(k.shape[0]):
        for b in range(k.shape[1]):
            lines.append(f"  {name}[{a}, {b}]:")
            lines += _grid(k[a, b])
    return lines


def _short(v) -> str:
    """``(2, 2)`` -> ``2``; ``(2, 1)`` stays; strings quoted."""
    if isinstance(v, tuple) and len(set(v)) == 1 and not isinstance(v[0], tuple):
        return str(v[0])
    return repr(v) if isinstance(v, str) else str(v)


def _args_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())


# --------------------------------------------------------------------------- the walk-through


def explain(x, w, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1, note=""):
    """The walk-through text and the arrays it shows.

    Returns:
      ``(lines, data)``: the printed lines, and a dict of the numbers shown
      (``output``, ``by_matrix``, ``by_vjp``, ``conv_transpose``, ``steps``,
      ``statement``, ``coverage``, ``phases``).
    """
    kwargs = dict(
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )
    s = study.steps(x, w, **kwargs)
    spec = s.spec
    entries = (
        spec.in_channels
        * math.prod(spec.input_size)
        * spec.out_channels
        * math.prod(spec.output_size)
    )
    if entries > MAX_MATRIX_ENTRIES:
        raise _Error(
            f"explain is meant for small examples: the matrix C would have {entries} entries "
            f"(more than {MAX_MATRIX_ENTRIES}); use smaller sizes or fewer channels"
        )
    n, g = spec.ndim, spec.groups
    cig, cog = spec.in_channels // g, spec.out_channels // g
    shape_args = (
        spec.input_size,
        spec.kernel_size,
        spec.stride,
        padding,
        output_padding,
        spec.dilation,
    )
    statement = study.check_matrix_statement(x, w, **kwargs)
    by_vjp = np.asarray(study.transpose_by_vjp(x, w, **kwargs, precision="highest"), np.float64)
    y_api = np.asarray(
        conv_transpose(
            x.astype(np.float32), w.astype(np.float32), None, **kwargs, precision="highest"
        ),
        np.float64,
    )
    cov = study.coverage(*shape_args)
    pv = study.phases(*shape_args)

    L = []
    L.append("jaxdeconv explain: a transposed convolution, step by step")
    L.append("")
    call = f"conv_transpose(x, w, {_args_text(kwargs)})"
    L.append(call)
    L.append(
        f"  x: [N=1, C_in={spec.in_channels}, {_size(spec.input_size)}]   "
        f"w: [C_in={spec.in_channels}, C_out/groups={cog}, {_size(spec.kernel_size)}]  "
        "(PyTorch's ConvTranspose weight layout)"
    )
    if note:
        L.append(f"  {note}")
    L.append("")
    L.append("x (input):")
    L += _channels(s.input[0], "x", "c_in")
    L.append("w (weight):")
    L += _kernels(s.weight, "w")
    L.append("")

    zi = s.zero_inserted[0]
    L.append(
        f"Step 1. Insert stride - 1 = {_short(tuple(t - 1 for t in spec.stride))} "
        f"zero(s) between neighbouring pixels: {_size(spec.input_size)} -> {_size(zi.shape[1:])}"
    )
    L += _channels(zi, "zero-inserted", "c_in")
    L.append("")
    pads = (
        f"{s.padding[0]} in every dimension"
        if len(set(s.padding)) == 1
        else ", ".join(f"({lo}, {hi})" for lo, hi in s.padding)
    )
    L.append(
        "Step 2. Pad each side with dilation*(kernel - 1) - padding zeros (Dumoulin & Visin's "
        "p' = k - p - 1; output_padding adds to the high side): (lo, hi) = "
        f"{pads} -> {_size(s.padded.shape[2:])}"
    )
    if any(lo < 0 or hi < 0 for lo, hi in s.padding):
        L.append("  (a negative amount crops: padding is larger than dilation*(kernel - 1))")
    if (s.cell_kind == 0).any():
        L.append("  (. is a padding zero)")
    L += _channels(s.padded[0], "padded", "c_in", blank=s.cell_kind == 0)
    L.append("")
    swap = " and swap in/out channels within each group" if spec.in_channels * cog > 1 else ""
    L.append(
        f"Step 3. Flip the kernel (reverse every spatial axis{swap}): "
        f"[C_out={spec.out_channels}, C_in/groups={cig}, {_size(spec.kernel_size)}]"
    )
    L += _kernels(s.kernel, "flipped")
    if any(d > 1 for d in spec.dilation):
        L.append(f"  dilated by {spec.dilation}: dilation - 1 zeros between taps:")
        L += _kernels(s.dilated_kernel, "dilated")
    L.append("")
    L.append(
        "Step 4. Slide the flipped kernel over the padded input (stride 1, a VALID "
        f"convolution) -> {_size(spec.output_size)}"
    )
    center = tuple(o // 2 for o in spec.output_size)
    win = s.window(center)
    group0 = s.padded[0, :cig][(slice(None), *win)]
    terms = [
        f"{_num(a, True) if float(a).is_integer() else f'{a:.3g}'}*"
        f"{_num(b, True) if float(b).is_integer() else f'{b:.3g}'}"
        for a, b in zip(group0.ravel(), s.dilated_kernel[0].ravel())
    ]
    shown = " + ".join(terms[:16]) + (" + ..." if len(terms) > 16 else "")
    where = ", ".join(map(str, center))
    at = where if n == 1 else f"({where})"
    L.append(
        f"  e.g. y[0, 0, {where}] = sum(padded window at {at} * flipped kernel) = {shown} "
        f"= {_num(s.output[0, 0][center], float(s.output[0, 0][center]).is_integer())}"
    )
    L.append("  y (output):")
    L += _channels(s.output[0], "y", "c_out")
    L.append("")

    C = statement.matrix
    r, c = C.shape
    L.append(
        "The same output as C.T @ x: a transposed convolution is the transpose of a convolution."
    )
    L.append(
        f"  C ({r} x {c}) is the matrix of the forward convolution that maps an output-shaped "
        f"array [{spec.out_channels}, {_size(spec.output_size)}] to an input-shaped one "
        f"[{spec.in_channels}, {_size(spec.input_size)}] with the same stride, padding and "
        "dilation,"
    )
    L.append(
        "  reading w as its kernel (torch.nn.functional.conv"
        f"{n}d(z, w, stride=..., padding=..., dilation=..., groups=...))."
    )
    if r <= MAX_PRINTED_MATRIX and c <= MAX_PRINTED_MATRIX:
        L.append("  C (rows: input pixels, columns: output pixels, both flattened in C order):")
        L += _grid(C)
    else:
        L.append(f"  C has {np.count_nonzero(C)} non-zero entries (too large to print).")
    L.append(f"  C.T @ x.ravel(), reshaped to [{spec.out_channels}, {_size(spec.output_size)}]:")
    L += _channels(statement.by_matrix[0], "C.T @ x", "c_out")
    L.append("")
    L.append("The same output as the VJP (gradient) of that forward convolution:")
    L.append("  _, pullback = jax.vjp(forward_conv, z); pullback(x)  (any z: the map is linear)")
    L += _channels(by_vjp[0], "vjp", "c_out")
    L.append("")

    def same(a):
        err = float(np.max(np.abs(a - s.output), initial=0.0))
        return "exact" if err == 0 else f"max difference {err:.1e}"

    L.append("Agreement with step 4:")
    L.append(f"  C.T @ x: {same(statement.by_matrix)}")
    L.append(f"  VJP: {same(by_vjp)}")
    L.append(f"  conv_transpose(...) (method='auto'): {same(y_api)}")
    for m in FORMULATIONS:
        L.append(
            f"  conv_transpose(..., method={m!r}): {same(statement.results[m].astype(np.float64))}"
        )
    L.append("")
    L.append("Output size, and back (the forward convolution maps the output size to the input's):")
    for line in study.size_formula(*shape_args):
        L.append("  " + line)
    L.append("")
    L.append("Coverage: how many (input pixel, kernel tap) pairs reach each output pixel:")
    L += _grid(cov)
    sizes = sorted({pv.sizes[p] for p in pv.sizes})
    if pv.uneven:
        L.append(
            f"  Uneven: the {math.prod(spec.stride)} phases (output pixels with the same position "
            f"modulo stride) use sub-kernels of sizes {', '.join(_size(v) for v in sizes)}, so "
            "neighbouring pixels sum different numbers of terms: the checkerboard of Odena et "
            "al. (2016), whenever kernel % stride != 0."
        )
    else:
        from .figures import coverage_verdict  # no matplotlib needed for the words

        verdict = coverage_verdict(cov, pv)
        L.append(
            f"  {verdict[0].upper()}{verdict[1:]} (all {math.prod(spec.stride)} phase(s) alike)."
        )
    if math.prod(spec.stride) > 1:
        L.append("  Phase of each output pixel (which sub-kernel produces it):")
        L += _grid(pv.phase)
    data = dict(
        call=call,
        steps=s,
        output=s.output,
        by_matrix=statement.by_matrix,
        by_vjp=by_vjp,
        conv_transpose=y_api,
        statement=statement,
        coverage=cov,
        phases=pv,
    )
    return _wrap(L), data


_GRID_LINE = re.compile(r"^[\s\d.eE+-]*$")


def _wrap(lines: list[str], width: int = 100) -> list[str]:
    """Wrap prose lines to ``width``, keeping their indent; number grids stay as they are."""
    out = []
    for line in lines:
        if len(line) <= width or _GRID_LINE.match(line):
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out += textwrap.wrap(
            line.strip(),
            width,
            initial_indent=indent,
            subsequent_indent=indent + "  ",
            break_on_hyphens=False,
            break_long_words=False,
        )
    return out


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own message for a malformed flag
        return int(e.code or 0)
    try:
        if args.figures:  # before any work, and before the folder is made
            require("matplotlib", "--figures")
        x, w, kwargs, note = _problem(args)
        if args.figures and x.ndim - 2 > 2:
            raise _Error("--figures draws 1-D and 2-D cases only; this one is 3-D")
        lines, data = explain(x, w, note=note, **kwargs)
    except MissingDependency as e:
        print(f"jaxdeconv explain: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:
        print(f"jaxdeconv explain: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.figures:
        from . import figures as _figures

        try:
            paths = _figures.write_figures(
                data["steps"], args.figures, matrix=data["statement"].matrix, title=data["call"]
            )
        except OSError as e:
            print(
                f"jaxdeconv explain: error: cannot write figures to {args.figures}: {e}",
                file=sys.stderr,
            )
            return 1
        print("\nFigures:")
        for p in paths:
            print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``jaxdeconv verify``: reproduce the seed, then cross-check every formulation.

On whatever backend JAX sees, each configuration of a built-in grid is computed
by every formulation, with and without ``jax.jit``, and compared with the NumPy
definition and (when installed and the arguments are expressible in it)
PyTorch. Under jit, the gradients are checked too: reverse mode (the VJP with
respect to input, weight and bias) against the NumPy definition's VJP and
``torch.autograd``, forward mode (the JVP) against the bilinear form's
derivative. Exit status 1 on any disagreement.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import textwrap
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import study
from .._api import conv_transpose
from .._reference import numpy_conv_transpose
from ..formulations import FORMULATIONS

__all__ = ["Case", "grid", "main", "run_case"]

# Errors are max|y - ref| / max(1, max|ref|), computed at precision="highest".
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}

SEED_X = study.SEED_INPUT
SEED_W = study.SEED_KERNEL
SEED_RESULTS = {0: study.SEED_OUTPUT, 1: study.SEED_OUTPUT_PADDING_1}


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration of the grid, in PyTorch's terms."""

    name: str
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: Any = 1
    padding: Any = 0
    output_padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    c_in_per_group: int = 2
    c_out_per_group: int = 3
    batch: int = 2
    bias: bool = True
    output_size: tuple[int, ...] | None = None
    channels_last: bool = False
    unbatched: bool = False

    @property
    def torch_expressible(self) -> bool:
        p = self.padding
        return not isinstance(p, str) and not (
            isinstance(p, (tuple, list)) and any(isinstance(v, (tuple, list)) for v in p)
        )

    def arrays(self, dtype=np.float32):
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        n = len(self.kernel)
        c_in = self.c_in_per_group * self.groups
        x = rng.standard_normal((self.batch, c_in, *self.in_size)).astype(dtype)
        w = rng.standard_normal((c_in, self.c_out_per_group, *self.kernel)).astype(dtype)
        b = rng.standard_normal(self.c_out_per_group * self.groups).astype(dtype)
        if self.unbatched:
            x = x[0]
        return x, w, (b if self.bias else None), n

    def describe(self) -> str:
        parts = [f"{len(self.kernel)}d in={self.in_size} k={self.kernel}"]
        for field in ("stride", "padding", "output_padding", "dilation", "groups"):
            value = getattr(self, field)
            default = 1 if field in ("stride", "dilation", "groups") else 0
            if value != default:
                parts.append(f"{field}={value}")
        if self.output_size is not None:
            parts.append(f"output_size={self.output_size}")
        if self.channels_last:
            parts.append("channels_last")
        if self.unbatched:
            parts.append("unbatched")
        return " ".join(parts)


def _named_cases() -> list[Case]:
    return [
        Case("seed k2", (3, 3), (2, 2), c_in_per_group=1, c_out_per_group=1, batch=1),
        Case("seed k2 p1", (3, 3), (2, 2), padding=1, c_in_per_group=1, c_out_per_group=1),
        Case("1d k3 s2 p1 op1", (7,), (3,), 2, 1, 1),
        Case("1d vocoder k16 s8 p4", (9,), (16,), 8, 4),
        Case("1d stride>kernel", (5,), (2,), 3),
        Case("1d SAME k3 s2", (6,), (3,), 2, "SAME"),
        Case("1d VALID k2 s3", (5,), (2,), 3, "VALID"),
        Case("2d dcgan k4 s2 p1", (4, 5), (4, 4), 2, 1),
        Case("2d unet k2 s2", (5, 4), (2, 2), 2),
        Case("2d k3 s2 p1 op1", (5, 5), (3, 3), 2, 1, 1),
        Case("2d dilation>stride op>=stride", (4, 4), (3, 2), 2, 1, (2, 1), (3, 2)),
        Case("2d groups cin/g=2 cout/g=3", (4, 4), (3, 3), 2, 1, groups=2),
        Case(
            "2d depthwise", (5, 5), (3, 3), 2, 1, 1, groups=4, c_in_per_group=1, c_out_per_group=1
        ),
        Case("2d padding>dilation*(k-1)", (6, 5), (2, 3), 3, (3, 4)),
        Case("2d per-side padding", (4, 4), (3, 4), 2, ((1, 0), (0, 2)), 1),
        Case("2d SAME k3 s2", (5, 4), (3, 3), 2, "SAME"),
        Case("2d SAME k2 s3", (4, 4), (2, 2), 3, "same"),
        Case("2d SAME dilated", (4, 5), (3, 2), (2, 1), "SAME", dilation=2),
        Case("2d VALID k3 s2", (4, 4), (3, 3), 2, "VALID"),
        Case("2d output_size", (4, 4), (3, 3), 2, 1, output_size=(8, 7)),
        Case("2d unbatched", (4, 4), (3, 3), 2, 1, 1, unbatched=True),
        Case("2d channels_last groups", (4, 5), (4, 3), 2, 1, groups=2, channels_last=True),
        Case("2d channels_last SAME", (4, 5), (3, 3), 2, "SAME", channels_last=True),
        Case("2d no bias", (3, 3), (3, 3), 1, 1, bias=False),
        Case("3d k3 s2 p1 op1", (3, 3, 2), (3, 3, 3), 2, 1, 1),
        Case("3d k2 s2 groups", (2, 3, 2), (2, 2, 2), 2, groups=2),
        Case(
            "3d channels_last dilated",
            (2, 2, 3),
            (2, 3, 2),
            (1, 2, 2),
            (0, 1, 1),
            (0, 1, 0),
            2,
            channels_last=True,
        ),
    ]


QUICK_NAMES = {
    "seed k2",
    "seed k2 p1",
    "1d k3 s2 p1 op1",
    "1d SAME k3 s2",
    "2d dcgan k4 s2 p1",
    "2d dilation>stride op>=stride",
    "2d groups cin/g=2 cout/g=3",
    "2d padding>dilation*(k-1)",
    "2d per-side padding",
    "2d SAME k2 s3",
    "2d VALID k3 s2",
    "2d output_size",
    "2d unbatched",
    "2d channels_last groups",
    "3d k3 s2 p1 op1",
}


# --quick checks gradients on these; the full grid on every named case (the sweep
# checks values only, to keep the main job at a few minutes).
QUICK_GRADIENT_NAMES = {
    "1d k3 s2 p1 op1",
    "2d dilation>stride op>=stride",
    "2d per-side padding",
    "2d channels_last groups",
}


def _sweep_cases() -> list[Case]:
    cases = []
    for k, s, p, d in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 2), (1, 2)):
        g = 2 if (k + s + d) % 2 else 1
        op = max(s, d) - 1 if (k + s + p) % 2 else 0
        size = (3 + k % 2, 4)
        try:
            from .._spec import make_spec

            make_spec((1, 2 * g, *size), (2 * g, 2, k, k), s, p, op, g, d)
        except ValueError:
            continue
        cases.append(
            Case(
                f"sweep k{k} s{s} p{p} d{d} g{g} op{op}",
                size,
                (k, k),
                s,
                p,
                op,
                d,
                g,
                c_out_per_group=2,
                batch=1,
                channels_last=bool((k + p + d) % 2),
            )
        )
    return cases


def grid(quick: bool = False) -> list[Case]:
    """The built-in grid: named cases (``quick``: a subset) plus, in full, a sweep."""
    named = _named_cases()
    if quick:
        return [c for c in named if c.name in QUICK_NAMES]
    return named + _sweep_cases()


def _torch_reference(case: Case, x, w, b):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not case.torch_expressible:
        return None
    n = len(case.kernel)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    xt = torch.from_numpy(np.asarray(x, np.float64))
    wt = torch.from_numpy(np.asarray(w, np.float64))
    bt = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    op = case.output_padding
    if case.output_size is not None:
        # torch's module computes output_padding from output_size; do the same by hand.
        mod = {
            1: torch.nn.ConvTranspose1d,
            2: torch.nn.ConvTranspose2d,
            3: torch.nn.ConvTranspose3d,
        }[n](
            wt.shape[0],
            wt.shape[1] * case.groups,
            case.kernel,
            case.stride,
            case.padding,
            0,
            case.groups,
            b is not None,
            case.dilation,
            dtype=torch.float64,
        )
        with torch.no_grad():
            mod.weight.copy_(wt)
            if bt is not None:
                mod.bias.copy_(bt)
            return mod(xt, output_size=list(case.output_size)).numpy()
    with torch.no_grad():
        return fn(xt, wt, bt, case.stride, case.padding, op, case.groups, case.dilation).numpy()


def _plan_label(case: Case) -> str:
    """What ``method="auto"`` runs for the case (:func:`jaxdeconv.plan`'s label)."""
    from .._api import plan

    x, w, b, _ = case.arrays()
    xl, wl = _to_layout(case, x, w)
    return plan(
        xl,
        wl,
        b,
        case.stride,
        case.padding,
        case.output_padding,
        case.groups,
        case.dilation,
        output_size=case.output_size,
        channels_last=case.channels_last,
    ).label


def _to_layout(case: Case, x, w):
    if not case.channels_last:
        return x, w
    n = len(case.kernel)
    return np.moveaxis(x, -n - 1, -1), np.moveaxis(w, (0, 1), (-2, -1))


def _from_layout(case: Case, y):
    if not case.channels_last:
        return y
    return np.moveaxis(y, -1, -len(case.kernel) - 1)


def _error(y, ref) -> float:
    if y.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(y - ref), initial=0.0) / max(1.0, np.max(np.abs(ref), initial=0.0)))


def _gradient_references(case: Case, x, w, b, xl, wl):
    """Cotangent, tangents and float64 references for reverse and forward mode.

    Arrays are in the case's layout (and batching). References: the NumPy
    definition's VJP and, the operation being bilinear, ``T(tx, w) + T(x, tw) +
    tb`` for the JVP (always), and ``torch.autograd`` (where torch can express
    the case).
    """
    from .. import testing
    from .._spec import make_spec, output_padding_for_size

    rng = np.random.default_rng(zlib.crc32(case.name.encode()) + 1)
    batched = (lambda a: a) if not case.unbatched else (lambda a: a[None])
    spec = make_spec(
        batched(xl).shape,
        wl.shape,
        case.stride,
        case.padding,
        case.output_padding,
        case.groups,
        case.dilation,
        output_size=case.output_size,
        channels_last=case.channels_last,
    )
    out_shape = spec.output_shape[1:] if case.unbatched else spec.output_shape
    ct = rng.standard_normal(out_shape).astype(np.float32)
    tx, tw = (rng.standard_normal(a.shape).astype(np.float32) for a in (xl, wl))
    tb = None if b is None else rng.standard_normal(b.shape).astype(np.float32)
    dx, dw, db = testing.numpy_conv_transpose_vjp(batched(xl), wl, batched(ct), spec)
    rev = [dx[0] if case.unbatched else dx, dw] + ([] if b is None else [db])
    fwd = testing.numpy_reference(batched(tx), wl, spec) + testing.numpy_reference(
        batched(xl), tw, spec
    )
    if tb is not None:
        fwd = fwd + tb.reshape([-1 if a == spec.channel_axis else 1 for a in range(fwd.ndim)])
    fwd = fwd[0] if case.unbatched else fwd
    rev_torch = None
    if case.torch_expressible:
        op = case.output_padding
        if case.output_size is not None:
            op = output_padding_for_size(
                case.output_size,
                spec.input_size,
                case.kernel,
                case.stride,
                case.padding,
                case.dilation,
            )
        try:
            _, grads = testing.torch_reference(
                x,
                w,
                b,
                case.stride,
                case.padding,
                op,
                case.groups,
                case.dilation,
                cotangent=_from_layout(case, ct),
            )
        except ImportError:
            grads = None
        if grads is not None:
            gx, gw, gb = (*_to_layout(case, grads[0], grads[1]), grads[2])
            rev_torch = [gx, gw] + ([] if b is None else [gb])
    return (ct, tx, tw, tb), rev, fwd, rev_torch


def _errors(got, refs) -> float:
    return max(_error(np.asarray(g, np.float64), r) for g, r in zip(got, refs))


def _numpy_reference(case: Case, x, w, b):
    """The NumPy definition; ``output_size`` becomes ``output_padding`` by torch's rule.

    The rule is applied to the sizes the NumPy definition itself produces with
    ``output_padding=0``, so no jaxdeconv shape arithmetic is involved.
    """
    args = (case.stride, case.padding, case.output_padding, case.groups, case.dilation)
    if case.output_size is None:
        return numpy_conv_transpose(x, w, b, *args)
    n = len(case.kernel)
    smallest = numpy_conv_transpose(x, w, b, *args).shape[-n:]
    op = tuple(want - got for want, got in zip(case.output_size[-n:], smallest))
    return numpy_conv_transpose(x, w, b, case.stride, case.padding, op, case.groups, case.dilation)


def run_case(
    case: Case, methods=None, jit_modes=(False, True), gradients: bool = True
) -> list[dict]:
    """Rows of ``{case, method, jit, err_numpy, err_torch, err_rev, err_fwd, ok}``.

    With ``gradients``, the jitted rows also hold the reverse-mode (VJP w.r.t.
    input, weight and bias) and forward-mode (JVP) errors, each the larger of
    the errors against the NumPy definition and, where expressible, torch.
    """
    x, w, b, _ = case.arrays()
    ref = _numpy_reference(case, x, w, b)
    ref_t = _torch_reference(case, x, w, b)
    xl, wl = _to_layout(case, x, w)
    kwargs = dict(
        stride=case.stride,
        padding=case.padding,
        output_padding=case.output_padding,
        groups=case.groups,
        dilation=case.dilation,
        output_size=case.output_size,
        channels_last=case.channels_last,
        precision="highest",
    )
    if gradients:
        tangents, rev_ref, fwd_ref, rev_torch = _gradient_references(case, x, w, b, xl, wl)
    rows = []
    tol = TOLERANCE["float32"]
    for method in methods or FORMULATIONS:
        for jit in jit_modes:

            def f(x_, w_, b_, method=method):
                return conv_transpose(x_, w_, b_, method=method, **kwargs)

            err_rev = err_fwd = None
            if jit and gradients:
                ct, tx, tw, tb = tangents

                def all_modes(x_, w_, b_, ct_, tx_, tw_, tb_, f=f):
                    primals = (x_, w_) if b_ is None else (x_, w_, b_)
                    tans = (tx_, tw_) if b_ is None else (tx_, tw_, tb_)
                    g = (lambda *p: f(*p, None)) if b_ is None else f
                    y_, pullback = jax.vjp(g, *primals)
                    return y_, pullback(ct_), jax.jvp(g, primals, tans)[1]

                y, rev, fwd = jax.jit(all_modes)(xl, wl, b, ct, tx, tw, tb)
                err_rev = _errors(rev, rev_ref)
                if rev_torch is not None:
                    err_rev = max(err_rev, _errors(rev, rev_torch))
                err_fwd = _error(np.asarray(fwd, np.float64), fwd_ref)
            else:
                fn = jax.jit(f) if jit else f
                y = fn(xl, wl, b)
            y = _from_layout(case, np.asarray(y, np.float64))
            err_np = _error(y, ref) if ref is not None else None
            err_t = _error(y, ref_t) if ref_t is not None else None
            errs = [e for e in (err_np, err_t) if e is not None]
            grad_ok = not (jit and gradients) or (
                err_rev is not None and max(err_rev, err_fwd) <= tol
            )
            rows.append(
                dict(
                    case=case.describe(),
                    name=case.name,
                    method=method,
                    jit=jit,
                    err_numpy=err_np,
                    err_torch=err_t,
                    err_rev=err_rev,
                    err_fwd=err_fwd,
                    ok=bool(errs) and max(errs) <= tol and grad_ok,
                )
            )
    return rows


def check_seed() -> list[dict]:
    """The seed's two results, exactly, from every formulation."""
    x = jnp.asarray([[SEED_X]], jnp.float32)
    w = jnp.asarray([[SEED_W]], jnp.float32)
    rows = []
    for padding, want in SEED_RESULTS.items():
        for method in FORMULATIONS:
            y = np.asarray(conv_transpose(x, w, padding=padding, method=method))[0, 0]
            rows.append(
                dict(
                    padding=padding,
                    method=method,
                    ok=bool(np.array_equal(y, want)),
                    value=y.tolist(),
                )
            )
    return rows


WIDTH = 100  # the report fits this many columns

# What a cell shows when it holds no error; each word means one thing (see LEGEND).
NO_TORCH = "no torch"  # skipped: torch is not installed
NO_FORM = "no form"  # not applicable: torch has no form of this case
JIT_ONLY = "jit only"  # gradients are checked in the jit rows
VALUES = "values"  # gradients not checked for this configuration (values only)
OFF = "off"  # gradients not checked: --no-gradients

TORCH_HOWTO = (
    "To add the PyTorch comparison: pip install torch==2.13.0 (the CPU wheel), "
    "then rerun this command."
)


def _fmt(e) -> str:
    return f"{e:9.2e}"


def _compact(value) -> str:
    """A nested list of floats, whole numbers without ``.0``."""
    a = np.asarray(value, np.float64)
    if np.all(a == np.round(a)):
        return str(a.astype(np.int64).tolist())
    return str(np.round(a, 4).tolist())


def _wrap(text: str, indent: str = "  ", width: int = WIDTH) -> list[str]:
    return textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def _torch_cell(r, torch_installed: bool) -> str:
    if r["err_torch"] is not None:
        return _fmt(r["err_torch"])
    return NO_TORCH if not torch_installed else NO_FORM


def _grad_cells(r, gradients: bool) -> tuple[str, str]:
    if r["err_rev"] is not None:
        return _fmt(r["err_rev"]), _fmt(r["err_fwd"])
    if not gradients:
        return OFF, OFF
    if not r["jit"]:
        return JIT_ONLY, JIT_ONLY
    return VALUES, VALUES


def _legend(torch_installed: bool, gradients: bool) -> list[str]:
    words = [
        f"{NO_TORCH!r} = skipped, torch is not installed"
        if not torch_installed
        else f"{NO_FORM!r} = not applicable, torch has no form of this case "
        "(string or per-side padding)",
    ]
    if gradients:
        words += [
            f"{JIT_ONLY!r} = gradients are checked in the jit row",
            f"{VALUES!r} = gradients not checked for this configuration, values only",
        ]
    else:
        words.append(f"{OFF!r} = gradients not checked (--no-gradients)")
    return _wrap("Cells without an error: " + "; ".join(words) + ".")


def _row(cid: str, r, torch_installed: bool, gradients: bool) -> str:
    rev, fwd = _grad_cells(r, gradients)
    return (
        f"  {cid:<5}{r['method']:<15} {'yes' if r['jit'] else 'no':<4}"
        f"{_fmt(r['err_numpy']):>9} {_torch_cell(r, torch_installed):>9} "
        f"{rev:>9} {fwd:>9}  {'ok' if r['ok'] else 'FAIL'}"
    )


def main(argv=None) -> int:
    from .cli import HelpFormatter, plain

    parser = argparse.ArgumentParser(
        prog="jaxdeconv verify", description=plain(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small grid (under a minute)")
    parser.add_argument(
        "--method",
        action="append",
        choices=sorted(FORMULATIONS),
        help="only these formulations (repeatable; default: all)",
    )
    parser.add_argument(
        "--no-gradients",
        action="store_true",
        help="skip the reverse- and forward-mode gradient checks",
    )
    args = parser.parse_args(argv)
    gradients = not args.no_gradients
    start = time.perf_counter()
    try:
        import torch

        torch_installed, torch_note = True, f"torch {torch.__version__}"
    except ImportError:
        torch_installed, torch_note = False, "torch not installed"
    print(
        f"jaxdeconv verify: jax {jax.__version__}, backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), {torch_note}"
    )
    if torch_installed:
        print("  References: the NumPy definition and PyTorch.")
    else:
        print("  References: the NumPy definition only; the PyTorch comparison is skipped.")
        print("\n".join(_wrap(TORCH_HOWTO)))
    print("\nThe seed's worked example (x 3x3, w 2x2, stride 1):")
    seed_rows = check_seed()
    for r in seed_rows:
        line = (
            f"  padding={r['padding']} {r['method']:<15} {'exact' if r['ok'] else 'WRONG'} "
            f"{_compact(r['value'])}"
        )
        print("\n".join(_wrap(line.strip(), indent="  ") if len(line) > WIDTH else [line]))
    cases = grid(args.quick)
    width = len(str(len(cases)))
    ids = {case.name: f"c{i:0{width}d}" for i, case in enumerate(cases, 1)}
    print()
    print(
        "\n".join(
            _wrap(
                f"Cross-check: {len(cases)} configurations x "
                f"{len(args.method or FORMULATIONS)} formulations x (eager, jit); "
                f"error = max|y - ref| / max(1, max|ref|), tolerance {TOLERANCE['float32']:g}.",
                indent="",
            )
        )
    )
    if gradients:
        print(
            "\n".join(
                _wrap(
                    "grad rev: the VJP w.r.t. input, weight and bias; grad fwd: the JVP; both "
                    "under jit, against the NumPy definition and torch.autograd (where torch "
                    "can express the case)"
                    + (
                        f"; --quick checks them on {len(QUICK_GRADIENT_NAMES)} configurations."
                        if args.quick
                        else "; the sweep checks values only."
                    )
                )
            )
        )
    print("\n".join(_legend(torch_installed, gradients)))
    header = (
        f"  {'id':<5}{'method':<15} {'jit':<4}{'vs numpy':>9} {'vs torch':>9} "
        f"{'grad rev':>9} {'grad fwd':>9}  result"
    )
    print(header)
    rows = []
    for case in cases:
        cid = ids[case.name]
        check_grads = gradients and (
            case.name in QUICK_GRADIENT_NAMES if args.quick else not case.name.startswith("sweep")
        )
        print("\n".join(_wrap(f"{cid} {case.name}: {case.describe()}", indent="")))
        print("\n".join(_wrap(f"auto runs {_plan_label(case)}", indent="    ")))
        for r in run_case(case, args.method, gradients=check_grads):
            r["id"] = cid
            rows.append(r)
            print(_row(cid, r, torch_installed, gradients), flush=True)
    failed = [r for r in rows if not r["ok"]]
    failed_seed = [r for r in seed_rows if not r["ok"]]
    worst = max(
        (e for r in rows for e in (r["err_numpy"], r["err_torch"]) if e is not None),
        default=0.0,
    )
    grad_rows = [r for r in rows if r["err_rev"] is not None]
    worst_grad = max((max(r["err_rev"], r["err_fwd"]) for r in grad_rows), default=0.0)
    torch_rows = sum(r["err_torch"] is not None for r in rows)
    summary = (
        f"Summary: seed {sum(r['ok'] for r in seed_rows)}/{len(seed_rows)} exact; "
        f"{sum(r['ok'] for r in rows)}/{len(rows)} rows agree ({torch_rows} also against "
        f"torch{'' if torch_installed else ': not installed'}), worst error {worst:.2e}; "
        + (
            f"gradients (reverse and forward mode) checked in {len(grad_rows)} rows, "
            f"worst error {worst_grad:.2e}; "
            if gradients
            else "gradients not checked; "
        )
        + f"{time.perf_counter() - start:.1f}s"
    )
    print()
    print("\n".join(_wrap(summary, indent="")))
    if not torch_installed:
        print(
            "\n".join(
                _wrap(
                    "PyTorch comparison skipped: torch is not installed. " + TORCH_HOWTO, indent=""
                )
            )
        )
    if failed or failed_seed:
        print(f"\nFAILED: {len(failed) + len(failed_seed)} disagreement(s):")
        for r in failed_seed:
            want = _compact(SEED_RESULTS[r["padding"]])
            got = _compact(r["value"])
            text = f"seed padding={r['padding']} {r['method']}: got {got}, want {want}"
            print("\n".join(_wrap(text)))
        for r in failed:
            case = next(c for c in cases if ids[c.name] == r["id"])
            rev, fwd = _grad_cells(r, gradients)
            text = (
                f"{r['id']} {case.name} ({case.describe()}), method={r['method']}, "
                f"{'jit' if r['jit'] else 'eager'}: vs numpy {_fmt(r['err_numpy']).strip()}, "
                f"vs torch {_torch_cell(r, torch_installed).strip()}, "
                f"grad rev {rev.strip()}, grad fwd {fwd.strip()}"
            )
            print("\n".join(_wrap(text)))
        return 1
    print("OK: every formulation agrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())

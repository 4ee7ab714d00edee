"""``jaxdeconv verify``: reproduce the seed, then cross-check every formulation.

On whatever backend JAX sees, each configuration of a built-in grid is computed
by every formulation, with and without ``jax.jit``, and compared with the NumPy
definition and (when installed and the arguments are expressible in it)
PyTorch. Exit status 1 on any disagreement.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._api import conv_transpose
from ._formulations import FORMULATIONS
from ._reference import numpy_conv_transpose

__all__ = ["Case", "grid", "main", "run_case"]

# Errors are max|y - ref| / max(1, max|ref|), computed at precision="highest".
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}

SEED_X = [[4.0, 4.0, 3.0], [0.0, 3.0, 4.0], [2.0, 3.0, 2.0]]
SEED_W = [[1.0, 2.0], [0.0, 1.0]]
SEED_RESULTS = {
    0: [[4, 12, 11, 6], [0, 7, 14, 11], [2, 7, 11, 8], [0, 2, 3, 2]],
    1: [[7, 14], [7, 11]],
}


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


def _sweep_cases() -> list[Case]:
    cases = []
    for k, s, p, d, g in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2), (1, 2)):
        op = max(s, d) - 1 if (k + s + p) % 2 else 0
        size = (3 + k % 2, 4)
        try:
            from ._shapes import make_spec

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


def run_case(case: Case, methods=None, jit_modes=(False, True)) -> list[dict]:
    """Rows of ``{case, method, jit, err_numpy, err_torch, ok}`` for one case."""
    x, w, b, _ = case.arrays()
    ref = (
        numpy_conv_transpose(
            x, w, b, case.stride, case.padding, case.output_padding, case.groups, case.dilation
        )
        if case.output_size is None
        else None
    )
    ref_t = _torch_reference(case, x, w, b)
    if ref is None:
        ref = ref_t
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
    rows = []
    tol = TOLERANCE["float32"]
    for method in methods or FORMULATIONS:
        for jit in jit_modes:

            def f(x_, w_, b_, method=method):
                return conv_transpose(x_, w_, b_, method=method, **kwargs)

            fn = jax.jit(f) if jit else f
            y = _from_layout(case, np.asarray(fn(xl, wl, b), np.float64))
            err_np = _error(y, ref) if ref is not None else None
            err_t = _error(y, ref_t) if ref_t is not None else None
            errs = [e for e in (err_np, err_t) if e is not None]
            rows.append(
                dict(
                    case=case.describe(),
                    name=case.name,
                    method=method,
                    jit=jit,
                    err_numpy=err_np,
                    err_torch=err_t,
                    ok=bool(errs) and max(errs) <= tol,
                )
            )
    return rows


def check_seed() -> list[dict]:
    """The seed's two results, exactly, from every formulation."""
    x = jnp.asarray([[SEED_X]])
    w = jnp.asarray([[SEED_W]])
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


def _fmt(e):
    return "   n/a   " if e is None else f"{e:9.2e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxdeconv verify", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small grid (under a minute)")
    parser.add_argument(
        "--method",
        action="append",
        choices=sorted(FORMULATIONS),
        help="only these formulations (repeatable)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        import torch

        torch_note = f"torch {torch.__version__}"
    except ImportError:
        torch_note = "torch not installed: NumPy definition only"
    print(
        f"jaxdeconv verify: jax {jax.__version__}, backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), {torch_note}"
    )
    print("\nThe seed's worked example (x 3x3, w 2x2, stride 1):")
    seed_rows = check_seed()
    for r in seed_rows:
        print(
            f"  padding={r['padding']} {r['method']:<15} {'exact' if r['ok'] else 'WRONG'} "
            f"{r['value']}"
        )
    cases = grid(args.quick)
    print(
        f"\nCross-check, {len(cases)} configurations x {len(args.method or FORMULATIONS)} "
        f"formulations x (eager, jit); error = max|y - ref| / max(1, max|ref|), "
        f"tolerance {TOLERANCE['float32']:g}"
    )
    print(f"  {'configuration':<66} {'method':<15} {'jit':<5} {'vs numpy':>9} {'vs torch':>9}  ok")
    rows = []
    for case in cases:
        for r in run_case(case, args.method):
            rows.append(r)
            print(
                f"  {r['case'][:66]:<66} {r['method']:<15} {r['jit']!s:<5} "
                f"{_fmt(r['err_numpy'])} {_fmt(r['err_torch'])}  "
                f"{'ok' if r['ok'] else 'FAIL'}",
                flush=True,
            )
    failed = [r for r in rows if not r["ok"]] + [r for r in seed_rows if not r["ok"]]
    worst = max(
        (max(e for e in (r["err_numpy"], r["err_torch"]) if e is not None) for r in rows),
        default=0.0,
    )
    torch_rows = sum(r["err_torch"] is not None for r in rows)
    print(
        f"\nSummary: seed {sum(r['ok'] for r in seed_rows)}/{len(seed_rows)} exact; "
        f"{sum(r['ok'] for r in rows)}/{len(rows)} rows agree ({torch_rows} also against torch), "
        f"worst error {worst:.2e}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    if failed:
        print(f"FAILED: {len(failed)} disagreement(s)")
        return 1
    print("OK: every formulation agrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each phase-formulation kernel costs on one CPU device, and so which ones run.

The plan for a layer (:func:`choose`) is the cheapest forward kernel and the
cheapest pair of gradient kernels among those that apply, each costed by
:func:`estimate` from the layer's FLOPs, the bytes of the buffers the kernel
materializes and the shapes of its GEMMs and convolutions, with a machine's figures
(:class:`Machine`):

``time = sum(flops / (peak * e(m) * e(n) * e(k))) + bytes / bandwidth + ops * overhead``

where ``e(x) = x / (x + half)`` is the efficiency lost to a short GEMM/convolution
dimension ``x`` (``half``: the dimension at which it is one half), ``peak`` the
GEMM's (or XLA's stride-1 convolution's) rate and ``ops`` the kernels' op count
(per-tap dots in the convolution gradients). GEMM + col2im adds its overlap-add's
``elements * shifts / (scalar_rate * lanes)``, or past ``COL2IM_FUSED_MAX_SHIFTS`` shifts
its passes one dimension at a time (:func:`_overlap_add`).

The machine figures are built-in defaults (fitted on the project's 2-core CPU)
unless :func:`calibrate` was run once on this machine: it measures a GEMM, a
convolution, a copy and a tiny call, scales the defaults by their ratios to the same
measurements on the fitting machine (:data:`REFERENCE`) and caches the figures on
disk (:func:`cache_dir`, ``$JAXDECONV_CACHE_DIR`` or ``~/.cache/jaxdeconv``) in a file
keyed by the machine, the jax/jaxlib versions and the device kind
(:func:`machine_key`). Nothing is ever measured implicitly.

Measured mode (opt-in, like cuDNN's benchmark mode): with ``JAXDECONV_AUTOTUNE=1``
in the environment or inside ``with autotune():``, the planner times the candidate
kernels once for the concrete (spec, dtype) on this device and caches the winners on
disk under the same key, so later runs (and other processes) reuse them and another
machine, jax version or device kind does not. Planning happens while tracing, also
under ``jit``: measuring then compiles and runs separate small programs on random
arrays of the layer's shapes (a few seconds per new layer, once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import platform
import threading
import time

import numpy as np

from ._phases import phase_plan
from ._spec import ConvTransposeSpec

__all__ = [
    "MAX_COLS_BYTES",
    "Machine",
    "autotune",
    "batch_chunks",
    "cache_dir",
    "calibrate",
    "choose",
    "chunks_fit",
    "cols_bytes",
    "cols_kernel",
    "cols_kernels",
    "estimate",
    "forward_chunks",
    "gemm_applies",
    "kernel_calls",
    "machine",
    "machine_key",
]

# The GEMM lowering's largest buffer (the im2col'd cotangent G or the forward's cols)
# holds prod(kernel)/prod(stride) times the output. Never more than this.
MAX_COLS_BYTES = 1 << 30
# The forward's cols buffer, 32 MiB or more, is a fresh mmap on every call (glibc serves
# allocations that large so; see the README's "Temporaries over 32 MiB"), paged in at
# about 0.4 ms per MiB: the GEMM + col2im forward then runs in batch chunks of at most
# FORWARD_CHUNK_BYTES of cols each (forward_chunks). The forward alone, whole against
# chunked, interleaved in one process (2026-12-02 06:07 UTC, load 0.17, this machine):
# WaveGAN's k25 s4 256->128 (50 MiB, 4 chunks) 53.7 -> 41.2 ms, Mask R-CNN's mask head
# (49 MiB, 4) 65.8 -> 59.4 ms, CenterNet's k4 s2 256->256 at 16x16, batch 8 (exactly 32
# MiB, its forward's only temporary; 2) 44.2 -> 34.2 ms, a k4 s2 128->64 at 32x32, batch
# 32 (128 MiB, 8) 108.5 -> 90.3 ms. Under 32 MiB chunks gained nothing (tfgan.up2, 19
# MiB: 9.4 -> 10.2 ms in 2) and the gradients, which build the im2col'd cotangent once
# per gradient in chunks, lost (WaveGAN's 114 -> 139 ms; both at load 1-1.5), so only
# the forward chunks, and only from that size.
FORWARD_CHUNK_ABOVE = 32 << 20
FORWARD_CHUNK_BYTES = 16 << 20
# Channels-first layers may run the im2col GEMM kernels channels-last ("_nhwc"), the
# operands and the result transposed around them; the estimates decide. The gradients
# used to run so whenever C_in <= 32 (a GEMM with C_in rows runs under peak), but on
# 120 layers (the suite and 90 random ones, 2026-12-01) that rule's picks were 1.13x
# slower than the fastest gradient kernel in geomean and up to 2.5x (the small inputs,
# N * in <= 512, where the channels-last GEMM has few rows), the estimates' 1.07x.
# Kernels whose program has one op per tap (the convolution lowering's weight
# gradient) or per phase (the phase GEMM gradients, the phase convolutions'
# interleave) are not candidates beyond these counts: compile time would grow.
MAX_UNROLLED = 64
# Within that bound the phase convolutions (one per window shape, then one slice per
# phase into the interleave) still compile for a while: 0.55-1.4 s at 9-36 phases, 3.1
# s at 64 (3-d k7 s4), against 0.11-0.18 s for the sub-pixel convolution, which ran
# within 8% of them or faster on all ten layers timed (2026-12-02 06:12 UTC, load 0.8,
# this machine). On one CPU they are a forward candidate only up to this many phases (the
# recorded kernel times: the picks' forward scores unchanged, seed 41's 1.126x ->
# 1.113x). The phase GEMM gradients compile about 15 ms per op (3-d k4 s2, 72 ops:
# 1.1 s, lax's autodiff 0.3 s) but ran up to 7.7x faster than the im2col GEMMs on
# such layers, so they keep the bound above.
PHASE_CONVS_MAX_PHASES = 8
# The phase convolutions (sub-kernel windows, several phases stacked on the output
# channels, then the interleave) ran at 0.5-0.6 of a plain stride-1 convolution's
# rate on the bench's layers here (forward, 16 layers timed against GEMM + col2im;
# jaxdeconv bench, 2026-12-01); the model charges them that fraction of conv_peak.
PHASE_CONV_RATE = 0.55
# Gradient kernels estimated within this fraction of the cheapest are a tie the model
# cannot resolve (its estimates were off by 10-50% against measurements here); a tie
# goes to the kernel with the smaller program, which compiles faster: the im2col'd
# GEMMs (one op per shift) before the phase GEMMs (one per phase and tap) before the
# convolution gradients (one dot per tap). HiFi-GAN's k16 s8 256->128: both GEMM
# gradients 10 ms, compile 0.23 s against 0.7 s.
TIE = 0.05
# XLA:CPU's convolutions have a heavy tail the model does not see (on random layers the
# sub-pixel or phase convolutions ran 9-200x slower than GEMM + col2im where the
# estimates were close), and their estimate's balance with the GEMMs' moves with the
# calibrated figures. So a convolution forward kernel is picked only when estimated
# this much faster than the GEMM kernels. Over the suite and three seeds of 30 random
# layers (kernel_picks.py data, 2026-12-01) the forward picks' geomean over the fastest
# kernel went 1.046/1.050/1.111/1.085x -> 1.046/1.054/1.066/1.093x; with the
# convolution figure 20% higher (a calibration's spread here) 1.048/1.107/1.199/1.114x,
# worst 9.1x -> 1.036/1.061/1.111/1.091x, worst 2.9x.
CONV_MARGIN = 0.1
_CONV_FORWARD = ("subpixel", "phase_convs")
# A channels-first layer may run its GEMMs one per image ("gemm_cols_batched",
# jaxdeconv.formulations.phase.gemm._cols_per_image and _cotangent_cols_per_image): the
# activations read and written where they lie, instead of copied to and from
# [C, N, *in] around one GEMM over the batch, at the price of the weight broadcast to
# every image (and, for the weight gradient, N partial weights) and of smaller GEMMs.
# Timed against "gemm_cols" on the 168 channels-first layers of kernel_picks.py's data
# (the suite twice, seeds 11, 23, 41 and 53; 2026-12-01, this 2-core machine): the forward
# ran 0.39-0.95x as long on a third of them (large inputs, small weights: Conv-TasNet's
# decoder 26.7 -> 4.8 ms), the gradients 0.32-0.86x on a quarter (hifigan.up4 0.65x),
# and up to 140x (forward) and 40x (gradients) longer where the weight dwarfs the input
# (dcgan.up1). The estimates credit the copies saved at half their bytes (the fitted
# figures of "gemm_cols" include them; other credits scored worse). The picks' geomean
# over the fastest kernel, suite / seeds 11, 23, 41, 53 (kernel_picks.py --load):
# forward 1.051 / 1.091, 1.094, 1.223, 1.121 without these kernels, 1.063 / 1.076,
# 1.081, 1.126, 1.070 with them; gradients 1.086 / 1.151, 1.141, 1.181, 1.186 and
# 1.055 / 1.062, 1.079, 1.026, 1.069 (the per-image times of the layers where they
# were close, 75 of them, retimed with 8 rounds). A penalty for small per-image GEMMs
# (XLA:CPU runs many small batched products at about half the rate of one large one)
# scored worse on the gradients and 1% better on the forward picks.
_PROGRAM_RANK = {
    "gemm_cols": 0,
    "gemm_cols_nhwc": 0,
    "gemm_cols_batched": 0,
    "gemm_phase": 1,
    "convs": 2,
}
# col2im's overlap-add (a sum of one shifted slice of cols per shift), the interleave
# of the output phases and the crop are one loop that XLA:CPU fuses and runs in the
# output's order. Channels-last its innermost axis is C_out, contiguous in every
# operand: vectorized (VECTOR float32 lanes, fewer with fewer channels). Channels-first
# it is the last spatial axis, whose consecutive elements come from different residues
# (other planes of cols) wherever that axis is strided: one scalar at a time, 0.25-0.45
# ns per element and operand here (dilated.d3's forward 7.8 ms channels-first, 3.2 ms
# computed channels-last with both transposes; tfgan.up2 14.9 against 9.4), so the
# channels-last route ("gemm_cols_nhwc") is a forward candidate for channels-first
# layers.
VECTOR = 8
# Grouped layers run group by group in the GEMM and sub-pixel kernels
# (jaxdeconv._split.by_group): XLA:CPU ran a dot_general with the groups as a batch
# dimension, [4,1024,64] @ [4,64,2048], at 85 GF/s against 272 for one [1024,64] @
# [64,2048], and a grouped convolution under the per-group ones. The split and the
# concatenation copy the operands and the result once; each group pays the overhead.
# The convolution gradients keep XLA's grouped convolution and batched per-tap dots:
# on 8 grouped layers (groups 4-32, 1-d to 3-d, either layout) they ran 2-7x slower
# than the group-by-group im2col GEMM gradients (58.9 against 24.6 ms at groups 16,
# k4 s2, N8; 7.7 against 1.3 ms in 3-d), so where those apply they are the only
# gradient candidate (2026-12-01, this 2-core machine).


@dataclasses.dataclass(frozen=True)
class Machine:
    """A machine's figures (float32): rates in FLOP/s, bandwidth in B/s, overhead in s,
    ``scalar_rate`` in operand elements per second of an unvectorized fused loop
    (col2im's overlap-add where it interleaves the output's last axis, see
    :func:`_overlap_add`)."""

    gemm_peak: float = 200e9
    gemm_half: float = 12.0
    conv_peak: float = 100e9
    conv_half: float = 24.0
    bandwidth: float = 6e9
    overhead: float = 4e-6
    # fitted with bandwidth (which copies measure at 4-21 GB/s by size) to the forward
    # and gradient picks over 120 layers (the suite and 90 random), 30 held out: the
    # picks' time over the fastest kernel's 1.085x forward, 1.058x gradients there
    # (1.196x, 1.071x with the earlier model) (2026-12-01, this 2-core machine)
    scalar_rate: float = 3e9
    source: str = "built-in defaults"


DEFAULT_MACHINE = Machine()


# ----------------------------------------------------------------------------- cache


def cache_dir() -> pathlib.Path:
    """``$JAXDECONV_CACHE_DIR``, else ``~/.cache/jaxdeconv``."""
    env = os.environ.get("JAXDECONV_CACHE_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "jaxdeconv"


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device_kind: str | None = None) -> str:
    """What cached figures and measurements are valid for: the CPU model and count,
    the jax and jaxlib versions and the device kind, as a short hash."""
    import jax
    import jaxlib

    if device_kind is None:
        device_kind = jax.devices()[0].device_kind
    parts = [
        platform.machine(),
        _cpu_model(),
        str(os.cpu_count()),
        jax.__version__,
        jaxlib.__version__,
        device_kind,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _read(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: concurrent writers never leave a torn file


def _calibration_path(key: str) -> pathlib.Path:
    return cache_dir() / f"calibration-{key}.json"


def _autotune_path(key: str) -> pathlib.Path:
    return cache_dir() / f"autotune-{key}.json"


@functools.lru_cache(maxsize=8)
def _machine_for(path: str) -> Machine:
    data = _read(pathlib.Path(path))
    fields = {f.name for f in dataclasses.fields(Machine)}
    if not data or not fields.issuperset(data):
        return DEFAULT_MACHINE
    return Machine(**data)


def machine() -> Machine:
    """This machine's calibrated figures (:func:`calibrate`), else the defaults."""
    return _machine_for(str(_calibration_path(machine_key())))


def _micro_benchmarks(seconds: float, rounds: int = 5) -> dict[str, float]:
    """This machine's raw figures: XLA's GEMM rate (FLOP/s), a stride-1 convolution's
    rate (FLOP/s), a copy's bandwidth (B/s) and a tiny call's time (s). Each is timed
    for about ``seconds`` in all, interleaved with the others over ``rounds`` rounds
    and its best kept, so that a busy spell of the machine moves them alike (the
    estimates compare them with each other)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    x, w, big = arr(8, 64, 32, 32), arr(64, 64, 3, 3), arr(64, 1024, 256)
    calls = {  # name: (function, operands, work: FLOPs or bytes, None for a time)
        "gemm": (jnp.matmul, (arr(1024, 1024), arr(1024, 1024)), 2 * 1024**3),
        "conv": (
            lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME"),
            (x, w),
            2 * 8 * 64 * 64 * 9 * 32 * 32,
        ),
        "copy": (lambda a: a * 2.0, (big,), 2 * big.size * 4),
        "call": (lambda a: a + 1.0, (arr(8),), None),
    }
    fns = {k: jax.jit(f) for k, (f, _, _) in calls.items()}
    for k, (_, args, _) in calls.items():
        jax.block_until_ready(fns[k](*args))
    best = dict.fromkeys(calls, math.inf)
    for _ in range(rounds):
        for k, (_, args, _) in calls.items():
            n, end = 0, time.perf_counter() + seconds / rounds
            while time.perf_counter() < end or n < 2:
                t = time.perf_counter()
                jax.block_until_ready(fns[k](*args))
                best[k] = min(best[k], time.perf_counter() - t)
                n += 1
    return {k: best[k] if work is None else work / best[k] for k, (_, _, work) in calls.items()}


# What _micro_benchmarks measured on the machine the built-in figures were fitted on
# (the project's 2-core x86_64 CPU, jax 0.10.2): the median of 5 calibrations at the
# default 0.2 s, load under 1.3 (2026-12-01; their GEMM 223-268 GF/s, GEMM over
# convolution 1.99-2.30).
REFERENCE = {"gemm": 2.6e11, "conv": 1.2e11, "copy": 7.2e9, "call": 6.4e-6}


def _scaled(raw: dict[str, float], source: str) -> Machine:
    """:data:`DEFAULT_MACHINE`'s figures scaled by this machine's measurements over
    :data:`REFERENCE`'s: the GEMM and convolution peaks and the bandwidth by the rate
    ratios, the per-op overhead by the tiny call's time ratio. The half-efficiency
    dimensions and ``scalar_rate`` keep their fitted figures (a skinny GEMM's relative
    rate, which would set the halves, varied 0.55-0.72 between runs here). On the
    reference machine this gives the built-in figures back: the figures fitted to the
    measurements directly (this function's first version) made the forward picks
    1.08-1.35x the fastest kernel in geomean against 1.05-1.11x with the built-in ones
    (kernel_picks.py on the suite and two seeds, 2026-12-01)."""
    d, ref = DEFAULT_MACHINE, REFERENCE
    return dataclasses.replace(
        d,
        gemm_peak=d.gemm_peak * raw["gemm"] / ref["gemm"],
        conv_peak=d.conv_peak * raw["conv"] / ref["conv"],
        bandwidth=d.bandwidth * raw["copy"] / ref["copy"],
        overhead=d.overhead * min(raw["call"], 50e-6) / ref["call"],
        source=source,
    )


def calibrate(*, seconds: float = 0.2) -> Machine:
    """Measure this machine and cache its figures on disk (see the module docstring).

    Times XLA's GEMM, a stride-1 convolution, a copy and a tiny call
    (:func:`_micro_benchmarks`) and scales the built-in figures by the ratio of each
    measurement to the same one on the machine they were fitted on (:func:`_scaled`),
    so that the relations the model was fitted with (to measured kernel picks) hold.
    """
    m = _scaled(_micro_benchmarks(seconds), f"calibrated {time.strftime('%Y-%m-%d %H:%M:%S')}")
    path = _calibration_path(machine_key())
    _write(path, dataclasses.asdict(m))
    _machine_for.cache_clear()
    return m


# ----------------------------------------------------------------------------- applicability


def cols_bytes(spec: ConvTransposeSpec, dtype) -> int:
    """Bytes of the GEMM lowering's cols / im2col'd cotangent ``[C_out * K, N * in]``."""
    taps = math.prod(spec.kernel_size)
    per_tap = spec.batch * math.prod(spec.input_size) * spec.out_channels
    return per_tap * taps * np.dtype(dtype).itemsize


def gemm_applies(spec: ConvTransposeSpec, dtype) -> bool:
    """Whether the GEMM lowering's cols strategy can serve ``spec``: its buffers for one
    image under ``MAX_COLS_BYTES`` (a larger batch runs in chunks, :func:`batch_chunks`)."""
    if spec.batch == 0:
        return False
    return cols_bytes(spec, dtype) // spec.batch <= MAX_COLS_BYTES


def chunks_fit(spec: ConvTransposeSpec, dtype, chunks: int) -> bool:
    """Whether ``chunks`` equal chunks of the batch keep the GEMM buffers under
    ``MAX_COLS_BYTES`` (``chunks`` divides the batch)."""
    return spec.batch % chunks == 0 and cols_bytes(spec, dtype) // chunks <= MAX_COLS_BYTES


def batch_chunks(spec: ConvTransposeSpec, dtype) -> int:
    """The fewest equal chunks of the batch that fit (:func:`chunks_fit`; 1 if the
    whole batch does)."""
    return next((c for c in range(1, spec.batch + 1) if chunks_fit(spec, dtype, c)), spec.batch)


def forward_chunks(spec: ConvTransposeSpec, dtype) -> int:
    """Equal chunks of the batch the GEMM + col2im forward runs in: 1 while its cols
    buffer is under ``FORWARD_CHUNK_ABOVE``, else the fewest whose cols are at most
    ``FORWARD_CHUNK_BYTES`` each (or one image each), and never fewer than
    :func:`batch_chunks`."""
    cols = cols_bytes(spec, dtype)
    least = batch_chunks(spec, dtype)
    if cols < FORWARD_CHUNK_ABOVE or spec.batch <= 1:
        return least
    return next(
        (
            c
            for c in range(least, spec.batch + 1)
            if spec.batch % c == 0 and cols // c <= FORWARD_CHUNK_BYTES
        ),
        spec.batch,
    )


def cols_kernels(spec: ConvTransposeSpec) -> tuple[str, ...]:
    """The GEMM + col2im forward kernels, or the im2col GEMM gradient kernels, for
    ``spec``: a channels-first layer computed as it is (one GEMM over the batch, the
    activations copied to and from ``[C, N, *in]``), channels-last
    (``"gemm_cols_nhwc"``) or one GEMM per image (``"gemm_cols_batched"``)."""
    if spec.channels_last:
        return ("gemm_cols",)
    return ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched")


def cols_kernel(spec: ConvTransposeSpec, dtype, which: str) -> str:
    """The cheapest of :func:`cols_kernels` as the forward pass or the gradients
    (``which``: ``"forward"`` or ``"grads"``), by :func:`estimate`."""
    m_ = machine()
    return min(cols_kernels(spec), key=lambda k: estimate(spec, dtype, k, which, m_))


def _n_phase_ops(spec: ConvTransposeSpec) -> int:
    """Ops the phase GEMM gradients unroll: per member phase and per tap of a window."""
    n = 0
    for combo, members in phase_plan(spec).convolutions():
        n += len(members) * (1 + math.prod(g.n_taps for g in combo))
    return n


def candidates(spec: ConvTransposeSpec, dtype) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The forward kernels and the gradient kernels that may serve ``spec``."""
    gemm = gemm_applies(spec, dtype)
    taps = math.prod(spec.kernel_size)
    fwd = ["subpixel"]
    if math.prod(spec.stride) <= PHASE_CONVS_MAX_PHASES:  # see there
        fwd.append("phase_convs")
    grads = ["convs"] if taps <= MAX_UNROLLED else []
    if gemm:
        fwd[:0] = cols_kernels(spec)
        if spec.groups > 1:  # see the comment on grouped layers above
            grads = list(cols_kernels(spec))
        else:
            grads[:0] = cols_kernels(spec)
            # In batch chunks (a lax.map body) XLA compiled the phase GEMMs' weight
            # gradient for 5.3 s against 1.2 s whole (3-d k3 s2 at 64^3, batch 4; the
            # im2col'd GEMMs 0.2 s either way), so they are not candidates there.
            if _n_phase_ops(spec) <= 4 * MAX_UNROLLED and batch_chunks(spec, dtype) == 1:
                grads.append("gemm_phase")
    if not grads:  # many taps and no GEMM: the convolutions, the weight gradient as one
        grads = ["convs"]  # (jaxdeconv._plan._bounded)
    return tuple(fwd), tuple(grads)


# ----------------------------------------------------------------------------- the estimate


def _e(x: float, half: float) -> float:
    return x / (x + half)


def _gemm(m_: Machine, m: int, n: int, k: int) -> float:
    if not (m and n and k):  # an empty product (e.g. a batch of zero) costs nothing
        return 0.0
    eff = _e(m, m_.gemm_half) * _e(n, m_.gemm_half) * _e(k, m_.gemm_half)
    return 2.0 * m * n * k / (m_.gemm_peak * eff)


def _conv(m_: Machine, flops: float, c_in_taps: int, c_out: int, pixels: int) -> float:
    if not (flops and c_in_taps and c_out and pixels):
        return 0.0
    eff = _e(c_in_taps, m_.conv_half) * _e(c_out, m_.conv_half) * _e(pixels, m_.conv_half)
    return flops / (m_.conv_peak * eff)


def _overlap_add(spec: ConvTransposeSpec, channels_last: bool, item: int, m_: Machine) -> float:
    """Seconds of col2im's fused loop beyond its bytes (see VECTOR above)."""
    # lazily: the formulations import this module
    from .formulations.phase.gemm import COL2IM_FUSED_MAX_SHIFTS, _geometry

    geo = _geometry(spec)
    shifts = math.prod(len(shift) for *_, shift in geo)
    if shifts > COL2IM_FUSED_MAX_SHIFTS:
        # one dimension at a time: each pass reads the previous one's result and writes
        # its own, the taps of the dimensions not yet added still in it, whose short
        # rows leave nothing to vectorize (3-d k7 d2 s1, 343 shifts: 0.74 s for the
        # overlap-add of a 360 MB cols, estimated 43 ms as one fused sum)
        size = spec.batch * spec.out_channels * math.prod(spec.kernel_size)
        size *= math.prod(spec.input_size)
        t = 0.0
        for m, (se, _, q, shift) in enumerate(geo):
            size = size * se * q // (spec.kernel_size[m] * spec.input_size[m])
            t += size * len(shift) / m_.scalar_rate
            if m < len(geo) - 1:  # written, then read by the next pass
                t += 2 * size * item / m_.bandwidth
        return t
    elements = spec.batch * spec.out_channels * math.prod(se * q for se, _, q, _ in geo)
    if channels_last:
        lanes = min(spec.out_channels // spec.groups, VECTOR)
    else:
        lanes = VECTOR if geo[-1][0] == 1 else 1
    return elements * shifts / (m_.scalar_rate * lanes)


def estimate(spec: ConvTransposeSpec, dtype, kernel: str, which: str, m_: Machine) -> float:
    """Seconds for ``kernel`` as the forward pass (``which="forward"``) or as both
    gradients (``which="grads"``) of ``spec`` on a machine with figures ``m_``."""
    item = np.dtype(dtype).itemsize
    g = spec.groups
    n, ci, co = spec.batch, spec.in_channels, spec.out_channels
    taps = math.prod(spec.kernel_size)
    pin, pout = math.prod(spec.input_size), math.prod(spec.output_size)
    x_b, y_b, w_b = n * ci * pin * item, n * co * pout * item, ci * co // g * taps * item
    cols = cols_bytes(spec, dtype)
    bw = m_.bandwidth
    # by group (see above): the split and concatenation, an overhead per group
    split = (g > 1) * ((x_b + y_b if which == "forward" else 2 * x_b + y_b + w_b) / bw)
    split += (g > 1) * g * m_.overhead
    if kernel in ("gemm_cols", "gemm_cols_nhwc", "gemm_cols_batched"):
        cig, cog = ci // g, co // g
        # gemm_cols_batched: one GEMM per image (reps of them, each over one image's
        # rows), W broadcast to every image (written, then read; for dW also the N
        # partial weights), without the copies of the activations to and from
        # [C, N, *in] that "gemm_cols" makes on a batch of several images (credited at
        # half their bytes: see the per-image GEMMs above)
        per_image = kernel == "gemm_cols_batched"
        reps, rows = (n, pin) if per_image else (1, n * pin)
        if which == "forward":  # GEMM into cols, col2im reads it and writes y
            t = g * reps * _gemm(m_, cog * taps, rows, cig)
            nhwc = kernel == "gemm_cols_nhwc" and not spec.channels_last
            t += _overlap_add(spec, spec.channels_last or nhwc, item, m_)
            moved = x_b + w_b + 2 * cols + y_b + nhwc * 2 * (x_b + y_b)  # + the transposes
            if per_image:
                moved += (2 * n - 1) * w_b - (n > 1) * x_b
            return t + split + moved / bw + 4 * m_.overhead
        # im2col (reads g, writes G), dX = W @ G and dW = X @ G^T read G
        t = g * reps * (_gemm(m_, cig, rows, cog * taps) + _gemm(m_, cig, cog * taps, rows))
        extra = 2 * (x_b + y_b) if kernel == "gemm_cols_nhwc" else 0
        if per_image:
            extra = 4 * n * w_b - 2 * (n > 1) * x_b
        if batch_chunks(spec, dtype) > 1:
            # each gradient loops over the chunks on its own: G is built twice (in one
            # program XLA shares it between them)
            extra += y_b + cols
        return t + split + (y_b + 3 * cols + 2 * x_b + w_b + extra) / bw + 8 * m_.overhead
    if kernel == "subpixel" and which == "forward":
        from .formulations.phase import subpixel  # lazily: the formulations import the planner

        window, residues, rows = subpixel.window(spec)
        pixels = n * rows
        flops = 2.0 * pixels * ci * window * residues * co // g
        t = _conv(m_, flops, ci // g * window, co // g * residues, pixels)
        y2_b = pixels * co * residues * item  # the convolution's result, then interleaved
        return t + split + (x_b + w_b + 2 * y2_b + y_b) / bw + 4 * m_.overhead
    if kernel == "phase_convs" and which == "forward":
        t, moved = 0.0, x_b + 2 * y_b
        for combo, members in phase_plan(spec).convolutions():
            window = math.prod(grp.n_taps for grp in combo)
            pixels = n * math.prod(grp.size for grp in combo)
            rows = len(members) * co // g
            flops = 2.0 * pixels * ci * window * rows
            t += _conv(m_, flops, ci // g * window, rows, pixels) / PHASE_CONV_RATE
            moved += len(members) * pixels * co * item
        return t + moved / bw + 4 * m_.overhead
    if kernel == "gemm_phase":  # dK = Y @ P^T, dP = K^T @ Y, col2im of dP
        t, moved = 0.0, 2 * y_b + 2 * x_b + w_b
        for combo, members in phase_plan(spec).convolutions():
            window = math.prod(grp.n_taps for grp in combo)
            size = n * math.prod(grp.size for grp in combo)
            rows = len(members) * co
            # 1.2: the GEMMs' operands are gathered windows, not one dense buffer
            t += 1.2 * (_gemm(m_, rows, ci * window, size) + _gemm(m_, ci * window, size, rows))
            moved += 3 * ci * window * size * item + rows * size * item
        return t + moved / bw + _n_phase_ops(spec) * m_.overhead
    if kernel == "convs":  # the strided convolution, one dot per tap
        flops = 2.0 * n * pin * ci * co // g * taps
        # 4: XLA:CPU's strided (input-gradient) convolution runs under its stride-1 rate
        t = 4.0 * _conv(m_, flops, co // g * taps, ci, n * pin)
        t += taps * _gemm(m_, ci // g, co, n * pin) if g == 1 else _conv(m_, flops, n * pin, ci, co)
        moved = 2 * x_b + 2 * y_b + w_b + cols
        return t + moved / bw + (4 + 2 * taps) * m_.overhead
    raise ValueError(f"no estimate for {kernel!r} ({which})")


# ----------------------------------------------------------------------------- measured mode

_state = threading.local()


@contextlib.contextmanager
def autotune(enabled: bool = True):
    """Plan by measuring inside this block (see the module docstring)."""
    old = getattr(_state, "autotune", None)
    _state.autotune = enabled
    try:
        yield
    finally:
        _state.autotune = old


def autotune_enabled() -> bool:
    on = getattr(_state, "autotune", None)
    if on is None:
        return os.environ.get("JAXDECONV_AUTOTUNE", "") not in ("", "0", "false", "False")
    return on


def _spec_key(spec: ConvTransposeSpec, dtype) -> str:
    return f"{np.dtype(dtype).name}:{spec!r}"


def _kernels(spec: ConvTransposeSpec, fwd: str, grads: str, dtype):
    """Forward kernel ``fwd`` and gradient kernels ``grads``, bounded and in batch chunks
    as the plan would run them."""
    from ._plan import PhaseKernels, _bounded, _chunked

    lowering = "gemm" if "gemm" in fwd + grads else "conv"
    kernels = PhaseKernels(lowering, fwd, grads, grads)
    return _chunked(_bounded(kernels, spec), spec, dtype)


def kernel_calls(spec: ConvTransposeSpec, dtype, fwd_kernels, grad_kernels) -> dict:
    """One call per kernel on random arrays of ``spec``'s shapes, each jitted and
    blocking until done: ``("forward", k)`` runs forward kernel ``k``, ``("grads", k)``
    both gradients with kernel ``k``. Measured mode times them (:func:`_time_kernels`),
    and so does ``benchmarks/kernel_picks.py``. Make and call them inside
    ``jax.ensure_compile_time_eval()`` where an outer jit may be tracing."""
    import jax
    import jax.numpy as jnp

    from .formulations.phase import primitives as prims

    rng = np.random.default_rng(0)
    x, w, g = (
        jnp.asarray(rng.standard_normal(shape), dtype)
        for shape in (spec.input_shape, spec.weight_shape, spec.output_shape)
    )
    params = dict(spec=spec, precision=None, preferred_element_type=None)
    calls = {}
    for k in fwd_kernels:
        kern = _kernels(spec, k, grad_kernels[0], dtype)
        f = jax.jit(lambda x, w, kern=kern: prims.forward_p.bind(x, w, kernels=kern, **params))
        calls["forward", k] = lambda f=f: jax.block_until_ready(f(x, w))
    for k in grad_kernels:
        kern = _kernels(spec, fwd_kernels[0], k, dtype)

        def both(x, w, g, kern=kern):
            dx = prims.input_grad_p.bind(g, w, kernels=kern, **params)
            return dx, prims.weight_grad_p.bind(x, g, kernels=kern, **params)

        f = jax.jit(both)
        calls["grads", k] = lambda f=f: jax.block_until_ready(f(x, w, g))
    return calls


def _time_kernels(spec: ConvTransposeSpec, dtype, fwd_kernels, grad_kernels):
    """Seconds (best of a few runs) of each forward and each gradient kernel."""
    import jax

    def best(call):
        call()  # compile
        out = math.inf
        for _ in range(3):
            t = time.perf_counter()
            call()
            out = min(out, time.perf_counter() - t)
        return out

    with jax.ensure_compile_time_eval():  # run now, also while an outer jit traces
        calls = kernel_calls(spec, dtype, fwd_kernels, grad_kernels)
        return {key: best(call) for key, call in calls.items()}


def _measured(spec: ConvTransposeSpec, dtype, fwd_c, grad_c) -> tuple[str, str, str]:
    path = _autotune_path(machine_key())
    key = _spec_key(spec, dtype)
    entry = _read(path).get(key)
    if entry and entry.get("forward") in fwd_c and entry.get("grads") in grad_c:
        return entry["forward"], entry["grads"], "measured (cached)"
    times = _time_kernels(spec, dtype, fwd_c, grad_c)
    fwd = min(fwd_c, key=lambda k: times["forward", k])
    grads = min(grad_c, key=lambda k: times["grads", k])
    data = _read(path)
    data[key] = {
        "forward": fwd,
        "grads": grads,
        "times_ms": {f"{a}:{b}": round(v * 1e3, 4) for (a, b), v in times.items()},
    }
    _write(path, data)
    return fwd, grads, "measured: " + _describe(times)


def _describe(times) -> str:
    parts = []
    for which in ("forward", "grads"):
        ts = sorted((v, k) for (w, k), v in times.items() if w == which)
        parts.append(f"{which} " + " vs ".join(f"{k} {v * 1e3:.3g} ms" for v, k in ts))
    return "; ".join(parts)


def choose(spec: ConvTransposeSpec, dtype) -> tuple[str, str, str]:
    """``(forward kernel, gradient kernel, reason)`` for ``spec`` on one CPU device."""
    fwd_c, grad_c = candidates(spec, dtype)
    if autotune_enabled() and spec.batch > 0 and (len(fwd_c) > 1 or len(grad_c) > 1):
        return _measured(spec, dtype, fwd_c, grad_c)
    m_ = machine()
    times = {}
    for k in fwd_c:
        times["forward", k] = estimate(spec, dtype, k, "forward", m_)
    for k in grad_c:
        times["grads", k] = estimate(spec, dtype, k, "grads", m_)
    fwd = min(fwd_c, key=lambda k: times["forward", k] * (1 + CONV_MARGIN * (k in _CONV_FORWARD)))
    # Gradient kernels the model cannot tell apart: the smaller program (compile time)
    best = min(times["grads", k] for k in grad_c)
    near = [k for k in grad_c if times["grads", k] <= (1 + TIE) * best]
    grads = min(near, key=lambda k: (_PROGRAM_RANK[k], times["grads", k]))
    return fwd, grads, f"cost model ({m_.source}): " + _describe(times)

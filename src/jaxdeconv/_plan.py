"""Which algorithm runs: the one place that decides.

:func:`make_plan` maps (spec, dtype, method, backend, device placement) to a
:class:`Plan`: the formulation, whether grouped layers run group by group, and,
for the phase formulation, the kernels of its forward pass and of both gradients
(:class:`PhaseKernels`). ``conv_transpose``, the phase primitives (forward and
both gradients, and again under ``vmap``), :mod:`jaxdeconv.sharding` and every
report (``jaxdeconv bench``, ``verify``, :func:`jaxdeconv.plan`) read this plan;
none of them re-derives it.

The phase kernels on one CPU device come from :mod:`jaxdeconv._cost` (a cost
model, or measured times in its opt-in measured mode); elsewhere
the rules are structural: on a mesh only what XLA's partitioner splits with halo
exchanges, on GPU and TPU the convolutions XLA hands to cuDNN or the TPU's convolution units.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from . import _cost
from ._spec import ConvTransposeSpec

__all__ = ["PhaseKernels", "Plan", "calibrate", "make_plan", "on_several_devices", "phase_kernels"]

# Depthwise-like layers (one input channel per group, few outputs per group): XLA's
# grouped convolutions are slow there and the work is memory-bound, so the layer runs as
# fused elementwise products (jaxdeconv.formulations.phase.conv: the forward over the
# up-sampled input, the weight gradient batched, looped or per tap).
ELEMENTWISE_MAX_OUT_PER_GROUP = 4
# On one CPU device the fused products serve the forward pass of depthwise layers with
# up to this many outputs per group (128 groups, 32x32, k4 s2, N8: 89 ms at 8 outputs
# per group against 183-284 for the GEMM and convolution kernels and 278 for torch; 24.6
# against 71-85 at 2); their gradients only with one output per group (42 against the
# GEMM gradients' 50 ms; at 2, 140 against 81), else the GEMM gradients group by group,
# computed channels-last (91 ms against 144 channels-first at 2 outputs per group, 348
# against 499 at 8; the cost model does not see that difference) (2026-12-01, this
# 2-core machine).
ELEMENTWISE_CPU_FORWARD_MAX_OUT_PER_GROUP = 16

FORWARD_KERNELS = (
    "gemm_cols",
    "gemm_cols_nhwc",
    "gemm_cols_batched",
    "subpixel",
    "phase_convs",
    "elementwise",
)
GRAD_KERNELS = (
    "gemm_cols",
    "gemm_cols_nhwc",
    "gemm_cols_batched",
    "gemm_phase",
    "convs",
    "filter_conv",
    "elementwise",
)


@dataclasses.dataclass(frozen=True)
class PhaseKernels:
    """How the phase primitives compute one layer: the forward pass and both gradients.

    Attributes:
      lowering: ``"gemm"`` (plain row-major GEMMs, one CPU device) or ``"conv"``
        (stride-1 convolutions, which XLA partitions with halos and hands to cuDNN).
      forward: ``"gemm_cols"`` (GEMM + col2im), ``"gemm_cols_nhwc"`` (the same,
        computed channels-last), ``"gemm_cols_batched"`` (the same, one GEMM per
        image of a channels-first input, read in place), ``"subpixel"`` (one stride-1
        convolution to every output phase, then depth-to-space), ``"phase_convs"``
        (one stride-1 convolution per group of phases) or ``"elementwise"``
        (depthwise-like layers: fused elementwise products).
      input_grad, weight_grad: ``"gemm_cols"`` (from the im2col'd cotangent),
        ``"gemm_cols_nhwc"`` (the same, computed channels-last),
        ``"gemm_cols_batched"`` (the same, one GEMM per image),
        ``"gemm_phase"`` (the phase convolutions' transposes as GEMMs), ``"convs"``
        (the strided convolution / one dot per tap), ``"filter_conv"`` (the weight
        gradient as one convolution, past ``MAX_UNROLLED`` taps) or ``"elementwise"``.
      batch_chunks: the GEMM kernels run on this many equal chunks of the batch, one
        after another, so that their buffers stay under ``MAX_COLS_BYTES`` on layers
        too large to run whole (1: the whole batch at once).
      forward_chunks: the same for a GEMM forward kernel alone (at least
        ``batch_chunks``): more where its cols buffer would reach 32 MiB
        (:func:`jaxdeconv._cost.forward_chunks`), where the forward is not
        differentiated (under ``jvp``/``grad`` it runs in ``batch_chunks``).
      fold_leading: run 3-d (and higher) phase convolutions as 2-d ones with the
        leading taps folded into channels (faster on XLA:CPU; off on a mesh,
        where the partitioner would gather the folded activation).
      backend, on_mesh: what the kernels were chosen for, so that a changed spec
        (under ``vmap``) is planned for the same place.
      reason: why these kernels (the cost model's estimates, or the measured
        times); not part of the kernels' identity.
    """

    lowering: str
    forward: str
    input_grad: str
    weight_grad: str
    batch_chunks: int = 1
    forward_chunks: int = 1
    fold_leading: bool = True
    backend: str = "cpu"
    on_mesh: bool = False
    reason: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        if self.forward not in FORWARD_KERNELS:
            raise ValueError(f"forward={self.forward!r} is not one of {FORWARD_KERNELS}")
        for name in ("input_grad", "weight_grad"):
            if getattr(self, name) not in GRAD_KERNELS:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {GRAD_KERNELS}")
        for name in ("batch_chunks", "forward_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        gemm = [k for k in (self.forward, self.input_grad, self.weight_grad) if "gemm" in k]
        if gemm and self.lowering != "gemm":
            raise ValueError(
                f"kernels {gemm} are GEMM kernels: they need lowering='gemm' (one CPU device, "
                f"checked against the layer), got lowering={self.lowering!r}"
            )

    @property
    def label(self) -> str:
        fwd = {
            "gemm_cols": "GEMM+col2im",
            "gemm_cols_nhwc": "GEMM+col2im via NHWC",
            "gemm_cols_batched": "GEMM+col2im per image",
            "subpixel": "sub-pixel conv",
            "phase_convs": "phase convs",
            "elementwise": "elementwise",
        }[self.forward]
        grads = {
            "gemm_cols": "im2col GEMM grads",
            "gemm_cols_nhwc": "im2col GEMM grads via NHWC",
            "gemm_cols_batched": "im2col GEMM grads per image",
            "gemm_phase": "phase GEMM grads",
            "convs": "conv grads",
            "filter_conv": "filter-conv weight grad",
            "elementwise": "elementwise grads",
        }
        g = grads[self.input_grad]
        if self.weight_grad != self.input_grad:
            g = f"{g} / {grads[self.weight_grad]}"
        if self.forward.startswith("gemm") and self.forward_chunks > self.batch_chunks:
            fwd = f"{fwd} (in {self.forward_chunks} batch chunks undifferentiated)"
        chunks = f", in {self.batch_chunks} batch chunks" if self.batch_chunks > 1 else ""
        return f"{fwd}, {g}{chunks}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``conv_transpose`` runs for one call, and why.

    Attributes:
      method: what was asked for (``"auto"`` or a formulation's name).
      formulation: the registered formulation that runs.
      per_group: a grouped layer runs as ``groups`` ungrouped calls (on a mesh,
        where XLA's partitioner all-gathers grouped convolutions).
      kernels: for ``"phase"``, its :class:`PhaseKernels`; else ``None``.
      backend: the backend planned for.
      on_mesh: whether the arrays sit on a mesh of several devices.
      reason: one sentence on why.
    """

    method: str
    formulation: str
    per_group: bool
    kernels: PhaseKernels | None
    backend: str
    on_mesh: bool
    reason: str

    @property
    def label(self) -> str:
        """A short description: ``"phase: GEMM+col2im, im2col GEMM grads"``."""
        text = self.formulation
        if self.per_group:
            text = f"per_group({text})"
        if self.kernels is not None:
            text = f"{text}: {self.kernels.label}"
        return text


def on_several_devices(*arrays) -> bool:
    """Whether the arrays (concrete or traced) are placed on a mesh of several devices."""
    try:
        if jax.sharding.get_abstract_mesh().size > 1:
            return True
    except (AttributeError, ValueError):
        pass
    for a in arrays:
        mesh = getattr(getattr(jax.typeof(a), "sharding", None), "mesh", None)
        if mesh is not None and getattr(mesh, "size", 1) > 1:
            return True
        sharding = getattr(a, "sharding", None)  # a concrete array
        if sharding is not None and len(getattr(sharding, "device_set", ())) > 1:
            return True
    return False


def elementwise(spec: ConvTransposeSpec, max_out: int = ELEMENTWISE_MAX_OUT_PER_GROUP) -> bool:
    """Depthwise-like: one input channel per group and at most ``max_out`` outputs per group."""
    return (
        spec.groups > 1
        and spec.in_channels == spec.groups
        and spec.out_channels // spec.groups <= max_out
    )


STRATEGIES = ("cols", "phase", "convs")


def phase_kernels(
    spec: ConvTransposeSpec,
    dtype,
    *,
    backend: str = "cpu",
    on_mesh: bool = False,
    strategy: str | None = None,
) -> PhaseKernels:
    """The phase primitives' kernels for ``spec`` on ``backend``.

    On one CPU device the cost model (:func:`jaxdeconv._cost.choose`) picks the
    cheapest forward kernel and the cheapest gradient kernels that apply (or, in
    measured mode, the fastest measured); ``strategy`` (one of :data:`STRATEGIES`)
    forces a combination: ``"cols"`` GEMM + col2im with im2col'd GEMM gradients,
    ``"phase"`` the phase convolutions with their GEMM transposes, ``"convs"`` the
    convolution lowering (a GEMM strategy where the GEMM lowering cannot serve
    ``spec`` is a ``ValueError``). Elsewhere the convolutions (``"convs"``).
    """
    return _phase_kernels(
        spec,
        np.dtype(dtype),
        backend=backend,
        on_mesh=on_mesh,
        strategy=strategy,
        autotune=_cost.autotune_enabled(),
    )


@functools.lru_cache(maxsize=4096)
def _phase_kernels(spec, dtype, *, backend, on_mesh, strategy, autotune) -> PhaseKernels:
    del autotune  # part of the cache key only
    kernels = _bounded(
        _choose_kernels(spec, dtype, backend=backend, on_mesh=on_mesh, strategy=strategy), spec
    )
    return _chunked(kernels, spec, dtype)


def _chunked(kernels: PhaseKernels, spec: ConvTransposeSpec, dtype) -> PhaseKernels:
    """``kernels`` with the batch chunks the GEMM lowering runs ``spec`` in: all its
    kernels in :func:`jaxdeconv._cost.batch_chunks`, a GEMM forward in
    :func:`jaxdeconv._cost.forward_chunks` (at least as many)."""
    if kernels.lowering != "gemm":
        return kernels
    chunks = _cost.batch_chunks(spec, dtype)
    fwd = _cost.forward_chunks(spec, dtype) if kernels.forward.startswith("gemm") else chunks
    return dataclasses.replace(kernels, batch_chunks=chunks, forward_chunks=fwd)


def _bounded(kernels: PhaseKernels, spec: ConvTransposeSpec) -> PhaseKernels:
    """``kernels`` with the ones whose program grows with the phases or the taps replaced
    past ``MAX_UNROLLED`` of them, so that compile time stays bounded on every backend:
    the phase convolutions (one slice per phase into the interleave) by the sub-pixel
    convolution (one convolution, one depth-to-space), the per-tap weight-gradient
    dots by one convolution (``"filter_conv"``). A 3-d k8 s8 layer (512 taps and
    phases) on the convolution lowering compiled its forward in 20 s and its weight
    gradient in 10 s before; a depthwise 3-d k16 s16 one (4096) did not compile its
    forward in 10 minutes (2026-12-01, this 2-core machine). The elementwise kernels
    of depthwise-like layers bound themselves (loops over the taps past the bound).
    """
    if kernels.forward == "phase_convs" and math.prod(spec.stride) > _cost.MAX_UNROLLED:
        kernels = dataclasses.replace(kernels, forward="subpixel")
    if kernels.weight_grad == "convs" and math.prod(spec.kernel_size) > _cost.MAX_UNROLLED:
        kernels = dataclasses.replace(kernels, weight_grad="filter_conv")
    return kernels


def _choose_kernels(spec, dtype, *, backend, on_mesh, strategy) -> PhaseKernels:
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    local_cpu = backend == "cpu" and not on_mesh
    if strategy in ("cols", "phase") and not (local_cpu and _cost.gemm_applies(spec, dtype)):
        raise ValueError(
            f"strategy={strategy!r} needs the GEMM lowering: one CPU device, a batch, and "
            f"buffers under {_cost.MAX_COLS_BYTES} bytes; got batch={spec.batch}, "
            f"backend={backend!r}, on_mesh={on_mesh}"
        )
    if strategy == "phase":
        if spec.groups != 1:
            raise ValueError(f"strategy='phase' needs groups=1, got groups={spec.groups}")
        return PhaseKernels("gemm", "phase_convs", "gemm_phase", "gemm_phase")
    if strategy == "cols":
        grads = _cost.cols_kernel(spec, dtype, "grads")
        return PhaseKernels("gemm", _cost.cols_kernel(spec, dtype, "forward"), grads, grads)
    if (
        local_cpu
        and strategy is None
        and elementwise(spec, ELEMENTWISE_CPU_FORWARD_MAX_OUT_PER_GROUP)
    ):
        reason = "depthwise-like: fused elementwise products"
        if spec.out_channels == spec.groups or not _cost.gemm_applies(spec, dtype):
            return PhaseKernels("conv", "elementwise", "elementwise", "elementwise", reason=reason)
        grads = "gemm_cols" if spec.channels_last else "gemm_cols_nhwc"  # see above
        reason += " forward; several outputs per group: im2col GEMM gradients, group by group"
        return PhaseKernels("gemm", "elementwise", grads, grads, reason=reason)
    ew = elementwise(spec)
    if local_cpu and strategy is None and not ew:
        fwd, grads, reason = _cost.choose(spec, dtype)
        lowering = "gemm" if "gemm" in fwd + grads else "conv"
        return PhaseKernels(lowering, fwd, grads, grads, reason=reason)
    return PhaseKernels(
        "conv",
        "elementwise" if ew else "phase_convs",
        "elementwise" if ew else "convs",
        "elementwise" if ew else "convs",
        fold_leading=not on_mesh,
        backend=backend,
        on_mesh=on_mesh,
        reason="depthwise-like: fused elementwise products" if ew else "",
    )


def make_plan(
    spec: ConvTransposeSpec,
    dtype,
    method: str = "auto",
    *,
    backend: str | None = None,
    on_mesh: bool = False,
) -> Plan:
    """The plan for one call (see the module docstring).

    Args:
      spec: the operation.
      dtype: the computation dtype (the promoted input/weight dtype).
      method: ``"auto"``, a registered formulation's name, or ``"per_group"``
        (``"lhs_dilated"`` group by group).
      backend: ``jax.default_backend()`` when ``None``.
      on_mesh: whether the arrays sit on several devices (or the call must
        partition with halo exchanges only, as :mod:`jaxdeconv.sharding` asks).
    """
    backend = backend or jax.default_backend()
    return _make_plan(
        spec, np.dtype(dtype), method, backend, on_mesh, autotune=_cost.autotune_enabled()
    )


@functools.lru_cache(maxsize=4096)
def _make_plan(spec, dtype, method, backend, on_mesh, *, autotune) -> Plan:
    del autotune  # part of the cache key only
    if method == "auto":
        if on_mesh:
            name = "lhs_dilated"
            reason = "on a mesh: the one convolution XLA's partitioner splits with halos only"
        elif backend == "cpu":
            name = "phase"
            reason = "on CPU: zero-free phase decomposition with its own gradient kernels"
        else:
            name = "lhs_dilated"
            reason = f"on {backend}: the form XLA hands to cuDNN's backward-data kernel"
    elif method == "per_group":
        name, reason = "lhs_dilated", "asked for groups one by one"
    else:
        name, reason = method, "asked for"
    per_group = spec.groups > 1 and (on_mesh or method == "per_group")
    if per_group:
        reason += "; groups run one by one (XLA all-gathers grouped convolutions on a mesh)"
    kernels = None
    if name == "phase" and not per_group:
        kernels = phase_kernels(spec, dtype, backend=backend, on_mesh=on_mesh)
        if kernels.reason:
            reason = f"{reason}; {kernels.reason}"
    return Plan(method, name, per_group, kernels, backend, on_mesh, reason)


def calibrate(*, seconds: float = 0.2):
    """Measure this machine's GEMM, convolution and copy rates for the cost model.

    The figures are cached on disk (``$JAXDECONV_CACHE_DIR``, default
    ``~/.cache/jaxdeconv``), keyed by CPU model, CPU count, jax/jaxlib version and
    device kind, and used by every later plan on a machine with the same key; without
    a calibration the cost model uses built-in figures. Plans made before are
    forgotten; programs already compiled keep theirs.

    Returns:
      The measured figures (a ``jaxdeconv._cost.Machine``).
    """
    figures = _cost.calibrate(seconds=seconds)
    _phase_kernels.cache_clear()
    _make_plan.cache_clear()
    return figures

"""What the phase formulation costs on one CPU device, and so which strategy it takes.

:func:`cpu_strategy` picks one of the GEMM lowering's strategies (``"cols"``:
GEMM + col2im forward, im2col'd cotangent gradients; ``"phase"``: the phase
convolutions forward, their transposes as GEMMs) or the convolution lowering
(``"convs"``). Only :mod:`jaxdeconv._plan` calls it.
"""

from __future__ import annotations

import math

import numpy as np

from ._phases import phase_plan
from ._spec import ConvTransposeSpec

__all__ = ["MAX_COLS_BYTES", "cols_bytes", "cols_grads_via_nhwc", "cpu_strategy", "gemm_applies"]

# The GEMM lowering's largest buffer (the im2col'd cotangent G or the forward's cols)
# holds prod(kernel)/prod(stride) times the output. Never more than this.
MAX_COLS_BYTES = 1 << 30
# Above this ratio (e.g. stride 1 with a 3x3 kernel) the convolution lowering, which
# needs no such buffer, is used.
MAX_COLS_RATIO = 8
# Up to this C_in the cols strategy's GEMMs (inner dimension C_in) run well under the
# GEMM's peak and the phase strategy is used where it applies.
SMALL_C_IN = 128
# Channels-first cols gradients with at most this many input channels run channels-last
# (a GEMM with C_in rows runs far under peak).
NHWC_MAX_C_IN = 32


def cols_bytes(spec: ConvTransposeSpec, dtype) -> int:
    """Bytes of the GEMM lowering's cols / im2col'd cotangent ``[C_out * K, N * in]``."""
    taps = math.prod(spec.kernel_size)
    per_tap = spec.batch * math.prod(spec.input_size) * spec.out_channels
    return per_tap * taps * np.dtype(dtype).itemsize


def gemm_applies(spec: ConvTransposeSpec, dtype) -> bool:
    """Whether the GEMM lowering can serve ``spec`` (one group, bounded buffers)."""
    if spec.groups != 1 or spec.batch == 0:
        return False
    return cols_bytes(spec, dtype) <= MAX_COLS_BYTES


def phase_is_one_convolution(spec: ConvTransposeSpec) -> bool:
    """Whether all output phases form one dense convolution with several taps."""
    groups = phase_plan(spec).groups
    return all(len(dim) == 1 and dim[0].n_taps > 1 for dim in groups) and all(
        k % s == 0 for k, s in zip(spec.kernel_size, spec.stride)
    )


def cpu_strategy(spec: ConvTransposeSpec, dtype) -> str:
    """``"cols"``, ``"phase"`` or ``"convs"`` for ``spec`` on one CPU device."""
    ratio = math.prod(spec.kernel_size) / math.prod(spec.stride)
    if not gemm_applies(spec, dtype) or ratio > MAX_COLS_RATIO:
        return "convs"
    if phase_is_one_convolution(spec) and spec.ndim <= 2 and spec.in_channels <= SMALL_C_IN:
        return "phase"
    return "cols"


def cols_grads_via_nhwc(spec: ConvTransposeSpec, dtype) -> bool:
    """Channels-first cols gradients with few input channels run channels-last."""
    del dtype
    return not spec.channels_last and spec.in_channels <= NHWC_MAX_C_IN

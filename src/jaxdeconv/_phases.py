"""The phase plan: which taps serve which output phase, and which phases share a convolution.

A stride-``s`` transposed convolution computes output ``o`` (position ``o + lo`` of the
full result) from the taps ``j`` with ``j * dilation = o + lo  (mod s)``: splitting the
output by ``o mod s`` gives ``s`` phases per dimension, each a dense stride-1
convolution with a sub-kernel (:mod:`jaxdeconv.formulations.phase`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

from ._spec import ConvTransposeSpec

__all__ = ["MERGE_WASTE", "DimGroup", "DimPhase", "PhasePlan", "phase_plan"]

# Merge phases with equal tap counts but offset windows into one convolution when the
# extra output rows cost at most this fraction (per dimension).
MERGE_WASTE = 0.15


@dataclasses.dataclass(frozen=True)
class DimPhase:
    """One output phase along one spatial dimension.

    Output positions ``o = p + s * q`` for ``q in range(n)`` are
    ``sum_u xpad[q + u * dil] * w[taps[u]]`` where ``xpad`` is the input padded with
    ``lo`` on the low side (negative: cropped).
    """

    p: int
    n: int
    taps: tuple[int, ...]
    dil: int
    lo: int

    def pad(self, in_size: int) -> tuple[int, int]:
        """Low and high padding of an ``in_size`` input for this phase's window."""
        return self.lo, self.n + (len(self.taps) - 1) * self.dil - in_size - self.lo


@dataclasses.dataclass(frozen=True)
class DimGroup:
    """Phases of one dimension computed by one convolution: window at ``lo``, ``size`` outputs.

    Member ``i`` reads the convolution's outputs ``[offsets[i], offsets[i] + n_i)``.
    """

    members: tuple[DimPhase, ...]
    lo: int
    size: int

    @property
    def n_taps(self) -> int:
        return len(self.members[0].taps)

    @property
    def dil(self) -> int:
        return self.members[0].dil

    def offset(self, m: DimPhase) -> int:
        return self.lo - m.lo

    def pad(self, in_size: int) -> tuple[int, int]:
        """Low and high padding of an ``in_size`` input for the convolution's window."""
        return self.lo, self.size + (self.n_taps - 1) * self.dil - in_size - self.lo


def _dim_phases(k: int, s: int, d: int, crop_lo: int, out: int) -> tuple[DimPhase, ...]:
    g = math.gcd(d, s)
    phases = []
    for p in range(min(s, out)):
        n = -(-(out - p) // s)
        r, base = (p + crop_lo) % s, (p + crop_lo) // s
        taps = [j for j in range(k) if (j * d) % s == r]
        if not taps:
            phases.append(DimPhase(p, n, (), d // g, 0))
            continue
        t = len(taps)
        m0 = (taps[0] * d - r) // s
        lo = m0 + (t - 1) * (d // g) - base
        phases.append(DimPhase(p, n, tuple(reversed(taps)), d // g, lo))
    return tuple(phases)


def _dim_groups(phases: tuple[DimPhase, ...], merge_waste: float) -> tuple[DimGroup, ...]:
    by_taps: dict[int, list[DimPhase]] = {}
    for ph in phases:
        if ph.taps:
            by_taps.setdefault(len(ph.taps), []).append(ph)
    groups = []
    for members in by_taps.values():
        lo = max(m.lo for m in members)
        size = max(m.n + lo - m.lo for m in members)
        useful = sum(m.n for m in members)
        if size * len(members) <= (1 + merge_waste) * useful:
            groups.append(DimGroup(tuple(members), lo, size))
            continue
        # Too wasteful: merge only phases with the same window position (free).
        by_lo: dict[int, list[DimPhase]] = {}
        for m in members:
            by_lo.setdefault(m.lo, []).append(m)
        for lo, same in by_lo.items():
            groups.append(DimGroup(tuple(same), lo, max(m.n for m in same)))
    return tuple(groups)


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """Per-dimension phases and the convolutions (products of per-dimension groups)."""

    phases: tuple[tuple[DimPhase, ...], ...]
    groups: tuple[tuple[DimGroup, ...], ...]

    def convolutions(self):
        """Per convolution: its group in every dimension and its member phases."""
        for combo in itertools.product(*self.groups):
            yield combo, list(itertools.product(*(grp.members for grp in combo)))


@functools.lru_cache(maxsize=512)
def phase_plan(spec: ConvTransposeSpec, merge_waste: float = MERGE_WASTE) -> PhasePlan:
    """The phase decomposition of ``spec``, computed from its fields."""
    phases = tuple(
        _dim_phases(k, s, d, lo, o)
        for k, s, d, (lo, _), o in zip(
            spec.kernel_size,
            spec.stride,
            spec.dilation,
            spec.crop,
            spec.output_size,
        )
    )
    return PhasePlan(phases, tuple(_dim_groups(p, merge_waste) for p in phases))

"""The zero-free phase (sub-pixel, polyphase) formulation.

* :mod:`jaxdeconv._phases`: which taps serve which output phase (pure arithmetic);
* :mod:`.primitives`: the three bilinear primitives (forward and both gradients),
  their JVP, transpose and batching rules, dispatching on the plan's kernels;
* :mod:`.conv`: the convolution lowering (meshes, GPU, TPU, grouped layers);
* :mod:`.gemm`: the GEMM lowering (one CPU device);
* :mod:`.subpixel`: the forward pass as one stride-1 convolution + depth-to-space.

A GPU- or TPU-specific lowering (e.g. Pallas) would be one more module here, one
more kernel name in :class:`jaxdeconv._plan.PhaseKernels`, and one rule in
:mod:`jaxdeconv._plan`.
"""

from .primitives import phase, phase_input_grad, phase_weight_grad

__all__ = ["phase", "phase_input_grad", "phase_weight_grad"]

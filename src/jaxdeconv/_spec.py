"""All shape arithmetic of jaxdeconv: argument normalization and output sizes.

Every size, padding and layout decision is made here, once, and recorded in a
:class:`ConvTransposeSpec`. The formulations only read the spec; none of them
re-derives a size.

Conventions, per spatial dimension, with ``k_eff = dilation * (kernel - 1) + 1``:

* The *full* transposed convolution scatters input pixel ``i`` through kernel tap
  ``j`` to position ``i * stride + j * dilation`` and has
  ``full = (input - 1) * stride + k_eff`` positions.
* The output is the window ``[crop_lo, full - crop_hi)`` of the full result.
  A negative crop extends the output with positions that no input reaches
  (they hold zero, plus bias).
* PyTorch's ``padding=p, output_padding=op`` is ``crop = (p, p - op)``, so
  ``output = (input - 1) * stride - 2 * p + dilation * (kernel - 1) + op + 1``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ConvTransposeSpec",
    "PaddingLike",
    "conv_transpose_output_size",
    "make_spec",
    "output_padding_for_size",
    "resolve_padding",
    "spatial_output_size",
    "to_lax_padding",
]

IntOrSeq = int | Sequence[int]
PaddingLike = str | int | Sequence[int] | Sequence[Sequence[int]]

_STATIC_HINT = (
    "it must be a static Python value; under jax.jit mark it static "
    "(static_argnames=...) or close over it"
)


def _is_traced(value: Any) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)


def _as_int(name: str, value: Any, *, sequence_ok: bool = True) -> int:
    if _is_traced(value):
        raise TypeError(f"{name} got a traced value {value!r}; {_STATIC_HINT}.")
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    if _is_array(value) and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iu":
        return int(np.asarray(value))
    what = "an int or a sequence of ints" if sequence_ok else "an int"
    raise TypeError(f"{name} must be {what}, got {value!r}")


def _is_array(value: Any) -> bool:
    """A concrete NumPy or JAX array (tracers are rejected before this is asked)."""
    return isinstance(value, np.ndarray) or (
        hasattr(value, "__array__") and hasattr(value, "ndim") and hasattr(value, "dtype")
    )


def _check_static(name: str, value: Any) -> None:
    """Reject a traced value, or a sequence holding one, with the mark-it-static hint."""
    if _is_traced(value) or (
        isinstance(value, (list, tuple)) and any(_is_traced(v) for v in value)
    ):
        raise TypeError(f"{name} got a traced value {value!r}; {_STATIC_HINT}.")


def _as_tuple(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """An int or a sequence of 1 or ``ndim`` ints (torch's rule) -> ``ndim`` ints."""
    if _is_traced(value):
        raise TypeError(f"{name} got a traced value {value!r}; {_STATIC_HINT}.")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}")
    if isinstance(value, Sequence) or (_is_array(value) and np.ndim(value) == 1):
        items = tuple(_as_int(name, v) for v in value)
        if len(items) == 1:
            return items * ndim
        if len(items) != ndim:
            raise ValueError(
                f"{name}={value!r} must be a single int or a sequence of {ndim} ints "
                f"(one per spatial dimension), got {len(items)} values"
            )
        return items
    return (_as_int(name, value),) * ndim


def as_array(name: str, value: Any, *, xp=None):
    """``value`` as an array (``xp.asarray``: NumPy by default), or a ``TypeError`` naming
    ``name``. A ``torch.Tensor`` is detached and moved to the CPU first (torch is not
    imported); strings and ``None`` are refused."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be an array, got {value!r}")
    try:
        return (xp or np).asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}: {e}") from None


def _spatial_ndim(*sizes: Any) -> int:
    """The number of spatial dimensions: the length of the first sequence, else 1."""
    for v in sizes:
        if isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, str):
            return len(v)
    return 1


def _is_pair_sequence(value: Any) -> bool:
    if _is_array(value):
        return np.ndim(value) == 2 and len(value) > 0
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(
            (isinstance(v, Sequence) and not isinstance(v, (str, bytes)))
            or (_is_array(v) and np.ndim(v) == 1)
            for v in value
        )
    )


def resolve_padding(
    padding: PaddingLike,
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: IntOrSeq = 1,
    dilation: IntOrSeq = 1,
    output_padding: IntOrSeq = 0,
) -> tuple[tuple[int, int], ...]:
    """Per-side crops ``((lo, hi), ...)`` of the full transposed convolution.

    Args:
      padding: PyTorch's int or per-dimension ints (``p`` crops ``p`` from both
        sides); per-side pairs ``((lo, hi), ...)``; or ``"SAME"`` / ``"VALID"``
        (case-insensitive), defined as in TensorFlow, Keras and
        ``lax.conv_transpose``: ``SAME`` gives ``output = input * stride`` and,
        when ``k_eff - stride`` is odd, crops the odd pixel from the high end;
        ``VALID`` gives ``output = input * stride + max(k_eff - stride, 0)``.
      input_size, kernel_size: spatial sizes.
      stride, dilation, output_padding: ints or per-dimension ints.
        ``output_padding`` is taken off the high-side crop.

    Returns:
      One ``(lo, hi)`` crop per spatial dimension; a negative ``hi`` extends the
      output with zeros.
    """
    ndim = len(kernel_size)
    stride = _as_tuple("stride", stride, ndim)
    dilation = _as_tuple("dilation", dilation, ndim)
    output_padding = _as_tuple("output_padding", output_padding, ndim)
    if _is_traced(padding):
        raise TypeError(f"padding got a traced value {padding!r}; {_STATIC_HINT}.")
    if isinstance(padding, str):
        mode = padding.upper()
        crops = []
        for k, s, d in zip(kernel_size, stride, dilation):
            k_eff = d * (k - 1) + 1
            if mode == "SAME":
                total = k_eff - s
                lo = total // 2 if total >= 0 else 0
                crops.append((lo, total - lo))
            elif mode == "VALID":
                crops.append((0, min(k_eff - s, 0)))
            else:
                raise ValueError(
                    f"padding={padding!r} is not a padding mode; expected 'SAME', 'VALID', "
                    "an int, a sequence of ints or a sequence of (lo, hi) pairs"
                )
    elif _is_pair_sequence(padding):
        if len(padding) != ndim:
            raise ValueError(
                f"padding={padding!r} must give one (lo, hi) pair per spatial dimension "
                f"({ndim}), got {len(padding)}"
            )
        crops = []
        for pair in padding:
            if len(pair) != 2:
                raise ValueError(
                    f"padding={padding!r} must hold (lo, hi) pairs, got an entry of length "
                    f"{len(pair)}: {pair!r}"
                )
            crops.append((_as_int("padding", pair[0]), _as_int("padding", pair[1])))
    else:
        p = _as_tuple("padding", padding, ndim)
        crops = [(v, v) for v in p]
    for lo, hi in crops:
        if not isinstance(padding, str) and (lo < 0 or hi < 0):
            raise ValueError(f"padding={padding!r} must be non-negative")
    return tuple((lo, hi - op) for (lo, hi), op in zip(crops, output_padding))


def conv_transpose_output_size(
    input_size: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    dilation: IntOrSeq = 1,
) -> tuple[int, ...]:
    """Spatial output size of a transposed convolution.

    ``output = (input - 1) * stride - pad_lo - pad_hi + dilation * (kernel - 1)
    + output_padding + 1`` per dimension; with PyTorch's symmetric ``padding=p``
    that is ``(input - 1) * stride - 2 * p + dilation * (kernel - 1) +
    output_padding + 1``. The number of spatial dimensions is taken from
    whichever of ``input_size`` / ``kernel_size`` is a sequence.

    Examples:
      >>> conv_transpose_output_size(3, 2)                     # the seed's example
      (4,)
      >>> conv_transpose_output_size((4, 4), 4, stride=2, padding=1)
      (8, 8)
      >>> conv_transpose_output_size(5, 3, stride=3, dilation=2)
      (17,)
      >>> conv_transpose_output_size(5, 3, stride=2, padding="SAME")
      (10,)
    """
    ndim = _spatial_ndim(input_size, kernel_size)
    ins = _as_tuple("input_size", input_size, ndim)
    ks = _as_tuple("kernel_size", kernel_size, ndim)
    crops = resolve_padding(padding, ins, ks, stride, dilation, output_padding)
    st = _as_tuple("stride", stride, ndim)
    dl = _as_tuple("dilation", dilation, ndim)
    return tuple(
        (i - 1) * s + d * (k - 1) + 1 - lo - hi
        for i, k, s, d, (lo, hi) in zip(ins, ks, st, dl, crops)
    )


def output_padding_for_size(
    output_size: IntOrSeq,
    input_size: IntOrSeq,
    kernel_size: IntOrSeq,
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    dilation: IntOrSeq = 1,
) -> tuple[int, ...]:
    """The ``output_padding`` that makes the output ``output_size`` (torch's rule).

    As in ``torch.nn.ConvTranspose2d.forward(x, output_size)``: ``output_size``
    may also carry leading batch and channel sizes (they are ignored), and each
    spatial size must lie in ``[min, min + stride - 1]`` where ``min`` is the
    size with ``output_padding=0``.

    Raises:
      ValueError: if a requested size is outside that range.

    Examples:
      >>> output_padding_for_size((8, 8), (4, 4), 3, stride=2, padding=1)
      (1, 1)
    """
    ndim = _spatial_ndim(input_size, kernel_size)
    if isinstance(output_size, (Sequence, np.ndarray)) and len(output_size) in (
        ndim + 1,
        ndim + 2,
    ):
        output_size = tuple(output_size)[-ndim:]
    wanted = _as_tuple("output_size", output_size, ndim)
    smallest = conv_transpose_output_size(input_size, kernel_size, stride, padding, 0, dilation)
    st = _as_tuple("stride", stride, ndim)
    for want, lo, s in zip(wanted, smallest, st):
        if not lo <= want <= lo + s - 1:
            raise ValueError(
                f"output_size={tuple(wanted)} is not reachable: with stride={st} each size "
                f"must lie between {tuple(smallest)} and "
                f"{tuple(m + t - 1 for m, t in zip(smallest, st))}"
            )
    return tuple(w - m for w, m in zip(wanted, smallest))


def spatial_output_size(output_size: Any, ndim: int, *, batched: bool) -> Any:
    """The spatial part of ``output_size``, with torch's rule for leading sizes.

    As in ``torch.nn.ConvTranspose{1,2,3}d.forward``: a batched input takes
    ``ndim`` sizes or ``ndim + 2`` (batch and channel sizes first, ignored), an
    unbatched one ``ndim`` or ``ndim + 1``. A single int stands for every
    dimension (an extension; torch needs a sequence).

    Examples:
      >>> spatial_output_size((1, 3, 8, 8), 2, batched=True)
      (8, 8)
      >>> spatial_output_size((3, 8, 8), 2, batched=True)
      Traceback (most recent call last):
      ...
      ValueError: output_size=(3, 8, 8) must have 2 or 4 elements for a batched input ...
    """
    _check_static("output_size", output_size)
    if isinstance(output_size, (str, bytes)):
        raise TypeError(f"output_size must be an int or a sequence of ints, got {output_size!r}")
    if not (isinstance(output_size, Sequence) or (_is_array(output_size) and np.ndim(output_size))):
        return output_size
    lead = 2 if batched else 1
    if len(output_size) == ndim + lead:
        return tuple(output_size)[lead:]
    if len(output_size) != ndim:
        kind = "a batched" if batched else "an unbatched"
        raise ValueError(
            f"output_size={output_size!r} must have {ndim} or {ndim + lead} elements for "
            f"{kind} input with {ndim} spatial dimension(s), got {len(output_size)}"
        )
    return output_size


def to_lax_padding(
    padding: PaddingLike,
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: IntOrSeq = 1,
    dilation: IntOrSeq = 1,
    output_padding: IntOrSeq = 0,
) -> tuple[tuple[int, int], ...]:
    """Padding to give ``lax.conv_general_dilated(..., lhs_dilation=stride)``.

    The transposed convolution is a stride-1 convolution of the
    ``lhs_dilation``-dilated input with the flipped kernel, padded with
    ``k_eff - 1 - crop`` on each side (negative values crop). This is also the
    ``padding`` that ``lax.conv_transpose`` needs to reproduce PyTorch.

    Examples:
      >>> to_lax_padding(1, (4, 4), (4, 4), stride=2)
      ((2, 2), (2, 2))
    """
    crops = resolve_padding(padding, input_size, kernel_size, stride, dilation, output_padding)
    dl = _as_tuple("dilation", dilation, len(kernel_size))
    return tuple(
        (d * (k - 1) - lo, d * (k - 1) - hi) for k, d, (lo, hi) in zip(kernel_size, dl, crops)
    )


@dataclasses.dataclass(frozen=True)
class ConvTransposeSpec:
    """A validated, normalized, hashable description of one transposed convolution.

    The input is always batched here (``[N, C_in, *spatial]`` or, with
    ``channels_last``, ``[N, *spatial, C_in]``). The weight is
    ``[C_in, C_out / groups, *kernel]`` or, with ``channels_last``,
    ``[*kernel, C_in, C_out / groups]``.

    Attributes:
      batch: N.
      in_channels, out_channels, groups: channel counts.
      input_size, kernel_size, output_size: spatial sizes.
      stride, dilation: per spatial dimension.
      crop: ``(lo, hi)`` per dimension, taken from the full result
        (``output_padding`` already folded in; negative means extend).
      channels_last: the layout of input, weight and output.
    """

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    input_size: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    crop: tuple[tuple[int, int], ...]
    output_size: tuple[int, ...]
    channels_last: bool = False

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    @property
    def effective_kernel_size(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    @property
    def full_size(self) -> tuple[int, ...]:
        """Size of the uncropped result: ``(input - 1) * stride + k_eff``."""
        return tuple(
            (i - 1) * s + ke
            for i, s, ke in zip(self.input_size, self.stride, self.effective_kernel_size)
        )

    @property
    def zero_inserted_size(self) -> tuple[int, ...]:
        """Spatial size of the zero-inserted, padded input that ``zero_insertion`` builds.

        ``(input - 1) * stride + 1`` plus the non-negative sides of
        :attr:`lhs_dilated_padding` (negative sides are cropped afterwards).
        """
        return tuple(
            (i - 1) * s + 1 + max(lo, 0) + max(hi, 0)
            for i, s, (lo, hi) in zip(self.input_size, self.stride, self.lhs_dilated_padding)
        )

    @property
    def lhs_dilated_padding(self) -> tuple[tuple[int, int], ...]:
        """Padding of the equivalent stride-1 conv of the lhs-dilated input."""
        return tuple(
            (ke - 1 - lo, ke - 1 - hi)
            for ke, (lo, hi) in zip(self.effective_kernel_size, self.crop)
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.channels_last:
            return (self.batch, *self.input_size, self.in_channels)
        return (self.batch, self.in_channels, *self.input_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        per_group = self.out_channels // self.groups
        if self.channels_last:
            return (*self.kernel_size, self.in_channels, per_group)
        return (self.in_channels, per_group, *self.kernel_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.channels_last:
            return (self.batch, *self.output_size, self.out_channels)
        return (self.batch, self.out_channels, *self.output_size)

    @property
    def channel_axis(self) -> int:
        return self.ndim + 1 if self.channels_last else 1

    @property
    def flops(self) -> int:
        """Useful multiply-adds times two: ``2 N prod(in) C_in C_out/g prod(k)``."""
        return (
            2
            * self.batch
            * math.prod(self.input_size)
            * self.in_channels
            * (self.out_channels // self.groups)
            * math.prod(self.kernel_size)
        )


def _check_output_padding(op_t, stride_t, dilation_t) -> None:
    for o, s, d in zip(op_t, stride_t, dilation_t):
        if o >= max(s, d):
            raise ValueError(
                f"output_padding={op_t} must be smaller than stride or dilation, got "
                f"stride={stride_t}, dilation={dilation_t}"
            )


def _static_arguments(
    weight_shape, stride, padding, output_padding, groups, dilation, channels_last
):
    """Validate what does not depend on the input: ``(groups, stride, dilation, op)``."""
    ndim = len(weight_shape) - 2
    if channels_last:
        kernel, w_in, w_out = weight_shape[:-2], weight_shape[-2], weight_shape[-1]
    else:
        kernel, w_in, w_out = weight_shape[2:], weight_shape[0], weight_shape[1]
    groups = _as_int("groups", groups, sequence_ok=False)
    if groups < 1:
        raise ValueError(f"groups={groups} must be a positive int")
    if w_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={w_in}")
    if any(k < 1 for k in kernel):
        raise ValueError(f"kernel size {kernel} (weight.shape={weight_shape}) must be positive")
    if w_out < 1 or w_in < 1:
        raise ValueError(
            f"channel counts must be positive, got C_in={w_in} and "
            f"C_out/groups={w_out} (weight.shape={weight_shape})"
        )
    stride_t = _as_tuple("stride", stride, ndim)
    dilation_t = _as_tuple("dilation", dilation, ndim)
    op_t = _as_tuple("output_padding", output_padding, ndim)
    if any(s < 1 for s in stride_t):
        raise ValueError(f"stride={stride!r} must be positive")
    if any(d < 1 for d in dilation_t):
        raise ValueError(f"dilation={dilation!r} must be positive")
    if any(o < 0 for o in op_t):
        raise ValueError(f"output_padding={output_padding!r} must be non-negative")
    resolve_padding(padding, (1,) * ndim, kernel, stride_t, dilation_t, op_t)  # its format
    return groups, stride_t, dilation_t, op_t


def check_arguments(
    weight_shape: Sequence[int],
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    channels_last: bool = False,
) -> None:
    """Validate the arguments that do not depend on the input, as :func:`make_spec` does.

    For layers, which know their weight but not yet their input. ``output_padding`` is
    checked against ``stride`` and ``dilation``; the output size needs the input.

    Raises:
      ValueError, TypeError: naming the argument and the offending value.
    """
    weight_shape = tuple(int(s) for s in weight_shape)
    if len(weight_shape) < 3:
        raise ValueError(
            f"weight must have shape [C_in, C_out/groups, *kernel] with at least one spatial "
            f"dimension, got weight.shape={weight_shape}"
        )
    _check_static("channels_last", channels_last)
    _, stride_t, dilation_t, op_t = _static_arguments(
        weight_shape, stride, padding, output_padding, groups, dilation, channels_last
    )
    _check_output_padding(op_t, stride_t, dilation_t)


def make_spec(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: IntOrSeq = 1,
    padding: PaddingLike = 0,
    output_padding: IntOrSeq = 0,
    groups: int = 1,
    dilation: IntOrSeq = 1,
    *,
    output_size: Sequence[int] | int | None = None,
    channels_last: bool = False,
) -> ConvTransposeSpec:
    """Validate PyTorch-style arguments against shapes and build the spec.

    ``input_shape`` must be batched here. Accepts exactly what
    ``torch.nn.functional.conv_transpose{1,2,3}d`` accepts for its arguments,
    plus per-side padding pairs, ``"SAME"``/``"VALID"``, ``output_size`` and
    channels-last layouts.

    Raises:
      ValueError, TypeError: naming the argument and the offending values.
    """
    input_shape = tuple(int(s) for s in input_shape)
    weight_shape = tuple(int(s) for s in weight_shape)
    ndim = len(weight_shape) - 2
    if ndim < 1:
        raise ValueError(
            f"weight must have shape [C_in, C_out/groups, *kernel] with at least one spatial "
            f"dimension, got weight.shape={weight_shape}"
        )
    if len(input_shape) != ndim + 2:
        raise ValueError(
            f"input.shape={input_shape} does not match weight.shape={weight_shape}: a weight "
            f"with {ndim} spatial dimension(s) needs a batched input of rank {ndim + 2} "
            f"or an unbatched one of rank {ndim + 1}"
        )
    _check_static("channels_last", channels_last)
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
    if channels_last:
        batch, in_channels, in_size = input_shape[0], input_shape[-1], input_shape[1:-1]
        kernel = weight_shape[:-2]
        w_in, w_out = weight_shape[-2], weight_shape[-1]
    else:
        batch, in_channels, in_size = input_shape[0], input_shape[1], input_shape[2:]
        kernel = weight_shape[2:]
        w_in, w_out = weight_shape[0], weight_shape[1]
    if w_in != in_channels:
        layout = (
            "[*kernel, C_in, C_out/groups]" if channels_last else ("[C_in, C_out/groups, *kernel]")
        )
        raise ValueError(
            f"input has {in_channels} channels but weight.shape={weight_shape} (layout "
            f"{layout}) expects C_in={w_in}"
        )
    if any(s < 1 for s in in_size):
        raise ValueError(
            f"input spatial size {in_size} (input.shape={input_shape}) must be positive"
        )
    groups, stride_t, dilation_t, op_t = _static_arguments(
        weight_shape, stride, padding, output_padding, groups, dilation, channels_last
    )
    if output_size is not None:
        if any(op_t):
            raise ValueError(
                f"give output_size={output_size!r} or output_padding={output_padding!r}, not both"
            )
        output_size = spatial_output_size(output_size, ndim, batched=True)
        op_t = output_padding_for_size(output_size, in_size, kernel, stride_t, padding, dilation_t)
    _check_output_padding(op_t, stride_t, dilation_t)
    crop = resolve_padding(padding, in_size, kernel, stride_t, dilation_t, op_t)
    out_size = tuple(
        (i - 1) * s + d * (k - 1) + 1 - lo - hi
        for i, k, s, d, (lo, hi) in zip(in_size, kernel, stride_t, dilation_t, crop)
    )
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"the output would have spatial size {out_size} (input size {in_size}, kernel "
            f"{kernel}, stride={stride_t}, padding={padding!r}, output_padding={op_t}, "
            f"dilation={dilation_t}); every size must be positive"
        )
    return ConvTransposeSpec(
        batch=batch,
        in_channels=in_channels,
        out_channels=w_out * groups,
        groups=groups,
        input_size=in_size,
        kernel_size=kernel,
        stride=stride_t,
        dilation=dilation_t,
        crop=crop,
        output_size=out_size,
        channels_last=bool(channels_last),
    )

"""A plain NumPy definition of transposed convolution, for tests and study.

It shares no code with the JAX side (not even the shape arithmetic): it is the
definition itself. Every input pixel ``i`` adds ``weight[tap] * input[i]`` into
the output at ``i * stride + tap * dilation - pad_lo``; positions outside the
output are dropped. Computed in float64.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["numpy_conv_transpose"]


def _per_dim(value, n):
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


def numpy_conv_transpose(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    *,
    channels_last=False,
) -> np.ndarray:
    """Transposed convolution by its scatter-add definition, in float64 NumPy.

    Same arguments and layouts as :func:`jaxdeconv.conv_transpose` (PyTorch's),
    without ``output_size``; ``padding`` may be an int, one int per dimension,
    ``((lo, hi), ...)`` pairs, ``"SAME"`` or ``"VALID"``. Does no validation:
    give it valid arguments.

    Examples:
      >>> x = np.array([[[[4, 4, 3], [0, 3, 4], [2, 3, 2]]]])
      >>> w = np.array([[[[1, 2], [0, 1]]]])
      >>> numpy_conv_transpose(x, w, padding=1)[0, 0]
      array([[ 7., 14.],
             [ 7., 11.]])
    """
    x = np.asarray(input, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    n = w.ndim - 2
    if channels_last:
        x = np.moveaxis(x, -1, -n - 1)
        w = np.moveaxis(w, (n, n + 1), (0, 1))
    unbatched = x.ndim == n + 1
    if unbatched:
        x = x[None]
    batch, c_in = x.shape[:2]
    size_in, kernel = x.shape[2:], w.shape[2:]
    c_out_g = w.shape[1]
    c_in_g = c_in // groups
    s = _per_dim(stride, n)
    d = _per_dim(dilation, n)
    op = _per_dim(output_padding, n)

    full = [(i - 1) * st + dl * (k - 1) + 1 for i, st, dl, k in zip(size_in, s, d, kernel)]
    lo, size_out = [], []
    for ax in range(n):
        k_eff = d[ax] * (kernel[ax] - 1) + 1
        if isinstance(padding, str) and padding.upper() == "SAME":
            lo.append(max(k_eff - s[ax], 0) // 2)
            size_out.append(size_in[ax] * s[ax] + op[ax])
        elif isinstance(padding, str) and padding.upper() == "VALID":
            lo.append(0)
            size_out.append(size_in[ax] * s[ax] + max(k_eff - s[ax], 0) + op[ax])
        else:
            pair = padding if isinstance(padding, (int, np.integer)) else padding[ax]
            if isinstance(pair, (int, np.integer)):
                pair = (pair, pair)
            lo.append(int(pair[0]))
            size_out.append(full[ax] - int(pair[0]) - int(pair[1]) + op[ax])

    # Scatter into a buffer that holds both the full result and the output window.
    buf_size = [max(f, l + o) for f, l, o in zip(full, lo, size_out)]
    buf = np.zeros((batch, c_out_g * groups, *buf_size))
    for tap in itertools.product(*(range(k) for k in kernel)):
        where = tuple(
            slice(t * dl, t * dl + (i - 1) * st + 1, st) for t, dl, i, st in zip(tap, d, size_in, s)
        )
        for g in range(groups):
            xg = x[:, g * c_in_g : (g + 1) * c_in_g]
            wg = w[(slice(g * c_in_g, (g + 1) * c_in_g), slice(None), *tap)]
            buf[(slice(None), slice(g * c_out_g, (g + 1) * c_out_g), *where)] += np.einsum(
                "nc...,co->no...", xg, wg
            )
    y = buf[(slice(None), slice(None), *(slice(l, l + o) for l, o in zip(lo, size_out)))]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape(-1, *(1,) * n)
    if unbatched:
        y = y[0]
    if channels_last:
        y = np.moveaxis(y, -n - 1, -1)
    return y


def relative_error(y, ref) -> float:
    """``max |y - ref| / max(1, max |ref|)`` in float64; ``inf`` for different shapes."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(y - ref), initial=0.0) / max(1.0, np.max(np.abs(ref), initial=0.0)))

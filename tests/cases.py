"""Shared test data: the named configurations and the one PyTorch reference.

Every test that compares with PyTorch goes through :func:`torch_conv_transpose`
(``jaxdeconv.testing.torch_reference`` at the arrays' own dtype), and the suites that
sweep PyTorch's arguments share :data:`CASES`.
"""

import numpy as np

from jaxdeconv.testing import torch_reference

# (id, input shape [N, C_in, *S], weight shape [C_in, C_out/g, *k], kwargs)
CASES = [
    ("1d k3 s2 p1 op1", (2, 3, 7), (3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    ("1d vocoder k16 s8 p4", (1, 4, 6), (4, 3, 16), dict(stride=8, padding=4)),
    ("1d dilated", (2, 2, 5), (2, 2, 3), dict(stride=2, dilation=3, output_padding=2)),
    ("2d seed-like", (1, 1, 3, 3), (1, 1, 2, 2), dict()),
    ("2d dcgan k4 s2 p1", (2, 4, 4, 5), (4, 3, 4, 4), dict(stride=2, padding=1)),
    ("2d unet k2 s2", (2, 3, 5, 4), (3, 2, 2, 2), dict(stride=2)),
    ("2d k3 s2 p1 op1", (1, 2, 5, 5), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    (
        "2d per-dim args",
        (2, 2, 4, 6),
        (2, 2, 3, 2),
        dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2)),
    ),
    ("2d groups cin/g>1 cout/g>1", (2, 6, 4, 4), (6, 4, 3, 3), dict(stride=2, padding=1, groups=3)),
    ("2d depthwise", (1, 4, 5, 5), (4, 1, 3, 3), dict(stride=2, padding=1, groups=4)),
    (
        "2d dilation>stride op>=stride",
        (1, 2, 4, 4),
        (2, 2, 3, 3),
        dict(stride=2, dilation=3, output_padding=2),
    ),
    ("2d stride>kernel", (2, 2, 3, 4), (2, 2, 2, 2), dict(stride=3)),
    ("2d very large stride", (1, 1, 2, 3), (1, 2, 2, 1), dict(stride=(7, 5))),
    ("2d padding>dilation*(k-1)", (1, 2, 6, 5), (2, 2, 2, 3), dict(stride=3, padding=(3, 4))),
    (
        "2d list-of-ints args",
        (1, 2, 4, 4),
        (2, 2, 3, 3),
        dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2]),
    ),
    (
        "2d grouped dilated padded",
        (2, 4, 3, 4),
        (4, 3, 3, 2),
        dict(stride=2, padding=2, output_padding=1, groups=2, dilation=2),
    ),
    (
        "3d k3 s2 p1 op1",
        (1, 2, 3, 3, 2),
        (2, 2, 3, 3, 3),
        dict(stride=2, padding=1, output_padding=1),
    ),
    ("3d k2 s2 groups", (2, 4, 2, 3, 2), (4, 1, 2, 2, 2), dict(stride=2, groups=2)),
    (
        "3d mixed",
        (1, 2, 2, 3, 2),
        (2, 3, 2, 3, 1),
        dict(stride=(1, 2, 3), padding=(0, 1, 0), dilation=(2, 1, 1), output_padding=(1, 0, 2)),
    ),
]


def torch_conv_transpose(x, w, b=None, **kwargs) -> np.ndarray:
    """``torch.nn.functional.conv_transpose{n}d`` on NumPy arrays, at ``x``'s dtype."""
    x = np.asarray(x)
    value, _ = torch_reference(x, w, b, dtype=x.dtype, **kwargs)
    return value

"""jaxdeconv: PyTorch-exact transposed convolution for JAX, computed several ways.

>>> import jaxdeconv
>>> sorted(jaxdeconv.FORMULATIONS)
['lhs_dilated', 'phase', 'vjp', 'zero_insertion']
"""

from . import layouts as layouts  # the public module jaxdeconv.layouts
from . import sharding as sharding  # the public module jaxdeconv.sharding
from . import study as study  # the public module jaxdeconv.study (matrix, VJP, steps views)
from ._api import conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d
from ._formulations import FORMULATIONS
from ._init import init_conv_transpose
from ._reference import numpy_conv_transpose
from ._shapes import (
    ConvTransposeSpec,
    conv_transpose_output_size,
    make_spec,
    output_padding_for_size,
    resolve_padding,
    to_lax_padding,
)

__version__ = "0.1.0"

__all__ = [
    "FORMULATIONS",
    "ConvTransposeSpec",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_output_size",
    "init_conv_transpose",
    "make_spec",
    "numpy_conv_transpose",
    "output_padding_for_size",
    "resolve_padding",
    "to_lax_padding",
]

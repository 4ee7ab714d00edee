"""jaxdeconv: PyTorch-exact transposed convolution for JAX, computed several ways.

``import jaxdeconv`` loads the functions below and their formulations only; the
public submodules :mod:`jaxdeconv.layouts`, :mod:`jaxdeconv.sharding`,
:mod:`jaxdeconv.distributed`, :mod:`jaxdeconv.porting`, :mod:`jaxdeconv.study`,
:mod:`jaxdeconv.testing` and :mod:`jaxdeconv.formulations` load on first use; the
layers (:mod:`jaxdeconv.flax`, :mod:`jaxdeconv.linen`, :mod:`jaxdeconv.equinox`)
need their extras and are imported by name.

>>> import jaxdeconv
>>> sorted(jaxdeconv.FORMULATIONS)
['lhs_dilated', 'phase', 'vjp', 'zero_insertion']
"""

import importlib as _importlib

from ._api import conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d, plan
from ._cost import autotune
from ._init import init_conv_transpose
from ._plan import PhaseKernels, Plan, calibrate
from ._reference import numpy_conv_transpose
from ._spec import (
    ConvTransposeSpec,
    conv_transpose_output_size,
    make_spec,
    output_padding_for_size,
    resolve_padding,
    to_lax_padding,
)
from .formulations import FORMULATIONS, register

__version__ = "0.1.0"

__all__ = [
    "FORMULATIONS",
    "ConvTransposeSpec",
    "PhaseKernels",
    "Plan",
    "autotune",
    "calibrate",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_output_size",
    "init_conv_transpose",
    "make_spec",
    "numpy_conv_transpose",
    "output_padding_for_size",
    "plan",
    "register",
    "resolve_padding",
    "to_lax_padding",
]

# Public submodules, imported on first attribute access (PEP 562).
_LAZY = ("distributed", "formulations", "layouts", "porting", "sharding", "study", "testing")


def __getattr__(name):
    if name in _LAZY:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})

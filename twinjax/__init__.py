"""twinjax: differentiable, probabilistic digital twins for computational nuclear oncology.

Units everywhere (see `twinjax.units`): time h, activity MBq, amount nmol, volume L, mass kg,
energy MeV, dose Gy.
"""

from __future__ import annotations

import os as _os

import jax as _jax

# twinjax computes in float64 by default (doses and cumulated activities accumulate over weeks;
# float32 loses the tails).  Set TWINJAX_X64=0 before import for float32 runs on accelerators.
if _os.environ.get("TWINJAX_X64", "1") != "0":
    _jax.config.update("jax_enable_x64", True)

from ._errors import InputError as InputError
from ._errors import SolverError as SolverError
from .nuclides import DecayChain as DecayChain
from .nuclides import Nuclide as Nuclide
from .nuclides import known_nuclides as known_nuclides
from .nuclides import nuclide as nuclide

__version__ = "0.1.0"

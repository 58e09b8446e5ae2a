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

from . import cohort as cohort
from . import decision as decision
from . import dosimetry as dosimetry
from . import models as models
from . import radiobiology as radiobiology
from . import units as units
from ._errors import InputError as InputError
from ._errors import OutputError as OutputError
from ._errors import SolverError as SolverError
from .imaging import load_patient as load_patient
from .imaging import read_tacs as read_tacs
from .imaging.observe import LognormalError as LognormalError
from .imaging.observe import PoissonCounts as PoissonCounts
from .inference import Observed as Observed
from .inference import PopulationPrior as PopulationPrior
from .inference import Posterior as Posterior
from .inference import assimilate as assimilate
from .inference import compare_single_timepoint as compare_single_timepoint
from .inference import fit as fit
from .inference import fit_cohort as fit_cohort
from .models import CompartmentalModel as CompartmentalModel
from .models import Trajectory as Trajectory
from .models import simulate as simulate
from .models import simulate_tandem as simulate_tandem
from .models.library import Template as Template
from .models.library import list_templates as list_templates
from .models.library import load_template as load_template
from .models.pbpk import Organ as Organ
from .models.pbpk import whole_body as whole_body
from .nuclides import DecayChain as DecayChain
from .nuclides import Nuclide as Nuclide
from .nuclides import known_nuclides as known_nuclides
from .nuclides import nuclide as nuclide
from .schedule import Administration as Administration
from .schedule import Schedule as Schedule
from .tandem import Tandem as Tandem
from .twin import DigitalTwin as DigitalTwin

__version__ = "0.1.0"

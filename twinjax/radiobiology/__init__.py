"""Radiobiology: the linear-quadratic effect of continuously delivered dose (Lea-Catcheside G,
BED, EQD2 for any dose-rate curve and any number of cycles), oxygen effect, cell survival, TCP and
NTCP, tumour response (volume, marker, time to progression, PFS), and a cited tissue-parameter
library.

Units: time h, dose Gy, dose rate Gy/h, alpha 1/Gy, beta 1/Gy^2, alpha/beta Gy, repair half-time
h, pO2 mmHg, volume cm^3.
"""

from ._effect import geud as geud
from ._effect import hypoxia_modified_lq as hypoxia_modified_lq
from ._effect import ntcp_lkb as ntcp_lkb
from ._effect import oxygen_enhancement_ratio as oxygen_enhancement_ratio
from ._effect import surviving_fraction as surviving_fraction
from ._effect import tcp as tcp
from ._lq import DoseRate as DoseRate
from ._lq import ExponentialDoseRate as ExponentialDoseRate
from ._lq import SampledDoseRate as SampledDoseRate
from ._lq import absorbed_dose as absorbed_dose
from ._lq import bed as bed
from ._lq import bed_acute as bed_acute
from ._lq import bed_monoexponential as bed_monoexponential
from ._lq import eqd2 as eqd2
from ._lq import eqd2_from_bed as eqd2_from_bed
from ._lq import protraction_factor as protraction_factor
from ._model_bed import bed_from_model as bed_from_model
from ._model_bed import response_from_model as response_from_model
from ._response import TumourResponse as TumourResponse
from ._response import progression_free_survival as progression_free_survival
from ._response import time_to_progression as time_to_progression
from ._response import tumour_response as tumour_response
from ._tissues import LKB as LKB
from ._tissues import Tissue as Tissue
from ._tissues import known_tissues as known_tissues
from ._tissues import tissue as tissue

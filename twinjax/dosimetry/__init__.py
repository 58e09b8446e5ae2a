"""Dosimetry: time-integrated activity to absorbed dose.

- `sphere_s_value`, `sphere_absorbed_fractions`: self-dose of uniformly filled spheres (lesions,
  organs) for any nuclide (chains included) and any mass, differentiable in the mass.
- `organ_doses`, `reference_mass_kg`: MIRD organ self-dose with the patient's or ICRP 89 masses.
- Single-time-point estimates of the time-integrated activity (Hänscheid, Madsen).

Units: activity MBq, time h, TIA MBq h, mass kg, density kg/L, dose Gy, S Gy/(MBq h).
"""

from ._spheres import sphere_absorbed_fractions as sphere_absorbed_fractions
from ._spheres import sphere_s_value as sphere_s_value
from .mird import known_reference_organs as known_reference_organs
from .mird import organ_doses as organ_doses
from .mird import reference_mass_kg as reference_mass_kg
from .single_timepoint import effective_half_life_h as effective_half_life_h
from .single_timepoint import hanscheid_relative_error as hanscheid_relative_error
from .single_timepoint import hanscheid_tia as hanscheid_tia
from .single_timepoint import madsen_relative_error as madsen_relative_error
from .single_timepoint import madsen_tia as madsen_tia

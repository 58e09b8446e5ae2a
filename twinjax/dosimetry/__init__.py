"""Dosimetry: time-integrated activity to absorbed dose.

- `sphere_s_value`, `sphere_absorbed_fractions`: self-dose of uniformly filled spheres (lesions,
  organs) for any nuclide (chains included) and any mass, differentiable in the mass.
- `organ_doses`, `reference_mass_kg`: MIRD organ self-dose with the patient's or ICRP 89 masses.
- `voxel_s_kernel`, `dose_map`, `local_deposition_dose`, `dose_volume_histogram`,
  `dose_metrics`: voxel dosimetry (kernels from the same point-source physics, FFT convolution).
- `tia_trapezoid`, `fit_exponential`: conventional TIA from a measured TAC (trapezoid with tails;
  mono/bi/uptake/tri-exponential fits, convertible to dose-rate curves for BED).
- `tissue_dose`, `absorbed_dose_map`, `protraction_map`, `let_kernels`: dose, BED and
  hypoxia-modified survival maps of a tissue-scale radioligand simulation (`twinjax.pde`).
- `dose_uncertainty_budget`: variance shares of kinetics, calibration, mass and S-value.
- Single-time-point estimates of the time-integrated activity (Hänscheid, Madsen).

Units: activity MBq, time h, TIA MBq h, mass kg, density kg/L, dose Gy, S Gy/(MBq h).
"""

from ._spheres import photon_cross_s_value as photon_cross_s_value
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
from .tac import ExponentialFit as ExponentialFit
from .tac import fit_exponential as fit_exponential
from .tac import tia_trapezoid as tia_trapezoid
from .tissue import TissueDose as TissueDose
from .tissue import absorbed_dose_map as absorbed_dose_map
from .tissue import let_kernels as let_kernels
from .tissue import protraction_map as protraction_map
from .tissue import tissue_dose as tissue_dose
from .uncertainty import dose_uncertainty_budget as dose_uncertainty_budget
from .voxel import VoxelKernel as VoxelKernel
from .voxel import dose_map as dose_map
from .voxel import dose_metrics as dose_metrics
from .voxel import dose_volume_histogram as dose_volume_histogram
from .voxel import local_deposition_dose as local_deposition_dose
from .voxel import voxel_s_kernel as voxel_s_kernel

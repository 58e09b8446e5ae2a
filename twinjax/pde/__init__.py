"""Tissue-scale reaction-diffusion twins on regular grids: finite-volume operators with
heterogeneous diffusivity, method-of-lines time integration (explicit, implicit or IMEX,
matrix-free) and steady states; procedural and loaded tissue maps (vessels, perfusion, fibrosis,
necrosis, cellularity, target expression); oxygen, PET tracer (FDG, FMISO, FLOD, FLT),
radioligand and tumour-growth models.

Units: length mm, time h, diffusivity mm^2/h, rates 1/h.
"""

from ._fields import TARGET_DENSITY_NMOL_PER_L as TARGET_DENSITY_NMOL_PER_L
from ._fields import cellularity as cellularity
from ._fields import fibrosis_patches as fibrosis_patches
from ._fields import gaussian_field as gaussian_field
from ._fields import load_map as load_map
from ._fields import lognormal_field as lognormal_field
from ._fields import necrotic_core as necrotic_core
from ._fields import perfusion_map as perfusion_map
from ._fields import target_expression as target_expression
from ._grid import Grid as Grid
from ._growth import TumourGrowthPDE as TumourGrowthPDE
from ._growth import front_position_mm as front_position_mm
from ._growth import simulate_growth as simulate_growth
from ._growth import tumour_burden as tumour_burden
from ._growth import tumour_radius_mm as tumour_radius_mm
from ._maps import TISSUE_CLASSES as TISSUE_CLASSES
from ._maps import TissueMaps as TissueMaps
from ._maps import VesselNetwork as VesselNetwork
from ._maps import render_vessels as render_vessels
from ._maps import synthetic_tumour as synthetic_tumour
from ._maps import vessel_network as vessel_network
from ._operators import Diffusion as Diffusion
from ._oxygen import OxygenModel as OxygenModel
from ._oxygen import hypoxic_fraction as hypoxic_fraction
from ._oxygen import oxygen_field as oxygen_field
from ._oxygen import oxygen_summary as oxygen_summary
from ._radioligand import PSMA617_TUMOUR as PSMA617_TUMOUR
from ._radioligand import PlasmaInput as PlasmaInput
from ._radioligand import RadioligandParams as RadioligandParams
from ._radioligand import RadioligandTissue as RadioligandTissue
from ._radioligand import TissueTrajectory as TissueTrajectory
from ._radioligand import swabb_diffusivity_mm2_per_h as swabb_diffusivity_mm2_per_h
from ._radioligand import template_rates as template_rates
from ._radioligand import vascular_exchange_rate as vascular_exchange_rate
from ._solve import solve_pde as solve_pde
from ._solve import steady_state as steady_state
from ._tracer_core import SampledInput as SampledInput
from ._tracer_core import TracerParams as TracerParams
from ._tracer_core import TracerPDE as TracerPDE
from ._tracer_solve import TracerActivity as TracerActivity
from ._tracer_solve import simulate_tracer as simulate_tracer
from ._tracer_solve import tacs as tacs
from ._tracers import FDG_PHELPS_1979_PER_H as FDG_PHELPS_1979_PER_H
from ._tracers import fdg_model as fdg_model
from ._tracers import flod_model as flod_model
from ._tracers import flt_model as flt_model
from ._tracers import fmiso_model as fmiso_model
from ._tracers import kelly_brady_trapping as kelly_brady_trapping
from ._tracers import tracer_diffusivity_mm2_per_h as tracer_diffusivity_mm2_per_h

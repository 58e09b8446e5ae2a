"""How the patient is seen: observation models, clinical data input, image synthesis and PET
biomarkers (layer 3)."""

from .features import TruthLinks as TruthLinks
from .features import auc_csh as auc_csh
from .features import biomarkers as biomarkers
from .features import coefficient_of_variation as coefficient_of_variation
from .features import glcm_features as glcm_features
from .features import histogram_entropy as histogram_entropy
from .features import link_to_truth as link_to_truth
from .features import mtv as mtv
from .features import segment as segment
from .features import suv as suv
from .features import suv_max as suv_max
from .features import suv_mean as suv_mean
from .features import suv_peak as suv_peak
from .features import tlg as tlg
from .io import Patient as Patient
from .io import TimeActivityData as TimeActivityData
from .io import check_against_patient as check_against_patient
from .io import load_patient as load_patient
from .io import read_tacs as read_tacs
from .observe import LognormalError as LognormalError
from .observe import PoissonCounts as PoissonCounts
from .observe import sphere_recovery as sphere_recovery
from .synth import Frames as Frames
from .synth import Scanner as Scanner
from .synth import blur as blur
from .synth import counts_to_image as counts_to_image
from .synth import decay_correction_factor as decay_correction_factor
from .synth import frame_average as frame_average
from .synth import frame_average_fn as frame_average_fn
from .synth import poisson_image as poisson_image
from .synth import region_tacs as region_tacs
from .synth import simulate_image as simulate_image
from .synth import to_scanner_grid as to_scanner_grid

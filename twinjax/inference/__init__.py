"""Bayesian calibration of twins from sparse imaging (NumPyro): priors, model, fit, diagnostics,
sequential assimilation, cohorts, calibration checks, single-time-point comparison, tissue-twin
calibration (`fit_tissue`)."""

from .cohort import CohortPosterior as CohortPosterior
from .cohort import fit_cohort as fit_cohort
from .diagnostics import Diagnostics as Diagnostics
from .fit import Posterior as Posterior
from .fit import SavedPosterior as SavedPosterior
from .fit import fit as fit
from .fit import load_posterior as load_posterior
from .model import Observed as Observed
from .model import calibration_model as calibration_model
from .priors import PopulationPrior as PopulationPrior
from .sbc import SBCResult as SBCResult
from .sbc import simulation_based_calibration as simulation_based_calibration
from .sequential import assimilate as assimilate
from .sequential import gaussian_update as gaussian_update
from .single_timepoint import STPComparison as STPComparison
from .single_timepoint import compare_single_timepoint as compare_single_timepoint
from .tissue import TissuePosterior as TissuePosterior
from .tissue import fit_tissue as fit_tissue

# isort: split
# uncertainty studies and scan design (appended: preposterior analysis, Sobol, elasticities)
from .design import ScanDesign as ScanDesign
from .design import SobolIndices as SobolIndices
from .design import dose_elasticities as dose_elasticities
from .design import expected_posterior_variance as expected_posterior_variance
from .design import next_scan_time as next_scan_time
from .design import sobol_indices as sobol_indices

"""How the patient is seen: observation models and clinical data input (layer 3)."""

from .io import Patient as Patient
from .io import TimeActivityData as TimeActivityData
from .io import check_against_patient as check_against_patient
from .io import load_patient as load_patient
from .io import read_tacs as read_tacs
from .observe import LognormalError as LognormalError
from .observe import PoissonCounts as PoissonCounts
from .observe import sphere_recovery as sphere_recovery

"""Dose uncertainty budget: first-order shares against a Monte Carlo of the same sources, the
mass sensitivity against its physics (local absorption: -1), and limits."""

import numpy as np
import pytest

from twinjax import InputError
from twinjax.dosimetry.uncertainty import dose_uncertainty_budget

RNG = np.random.default_rng(3)
TIA = 1e5 * np.exp(0.15 * RNG.standard_normal(4000))  # kinetics: CV about 15 %


def test_budget_matches_monte_carlo_and_sums_to_one():
    b = dose_uncertainty_budget(TIA, "Lu-177", 0.310, mass_cv=0.1, calibration_cv=0.05)
    assert sum(b["share"].values()) == pytest.approx(1.0)
    assert b["total_cv"] == pytest.approx(b["monte_carlo_cv"], rel=0.03)
    assert b["variance"]["kinetics"] == pytest.approx(0.15**2, rel=0.06)
    # A 310 g kidney absorbs Lu-177's electrons locally: S ~ 1/m, d ln S / d ln m close to -1
    # (a little above: photons absorbed more in a larger organ).
    assert -1.0 < b["mass_sensitivity"] < -0.95
    assert max(b["share"], key=b["share"].get) == "kinetics"


def test_small_lesions_are_less_mass_sensitive_and_sources_switch_off():
    organ = dose_uncertainty_budget(TIA, "Y-90", 0.3)
    lesion = dose_uncertainty_budget(TIA, "Y-90", 1e-4)  # 0.1 g: most electrons escape
    assert abs(lesion["mass_sensitivity"]) < abs(organ["mass_sensitivity"])
    only = dose_uncertainty_budget(TIA, "Lu-177", 0.3, mass_cv=0, calibration_cv=0, s_value_cv=0)
    assert only["share"]["kinetics"] == pytest.approx(1.0)
    assert only["total_cv"] == pytest.approx(np.sqrt(np.expm1(np.var(np.log(TIA), ddof=1))))


def test_bad_input():
    with pytest.raises(InputError, match="at least two finite, positive draws"):
        dose_uncertainty_budget([1.0, -1.0], "Lu-177", 0.3)
    with pytest.raises(InputError, match="mass_cv = -0.1"):
        dose_uncertainty_budget(TIA, "Lu-177", 0.3, mass_cv=-0.1)
    with pytest.raises(InputError, match="mass_kg = 0.0"):
        dose_uncertainty_budget(TIA, "Lu-177", 0.0)

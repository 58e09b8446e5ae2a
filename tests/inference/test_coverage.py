"""Interval coverage on 50 simulated patients (Laplace, linear test template): 90 % intervals of
kidney and tumour TIA cover the truth at a rate inside the 99 % binomial band; a fit that
assumes a third of the real measurement noise does not."""

import pytest

import twinjax
from twinjax import InputError
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed
from twinjax.inference.coverage import interval_coverage

NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08}, calibration_cv=0.05)
TIMES = (4.0, 24.0, 48.0, 96.0)


@pytest.fixture(scope="module")
def design(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    )
    obs = Observed.design(("kidneys", "tumour", "whole_body"), TIMES)
    return tpl, patient, obs


def test_laplace_intervals_cover_at_the_nominal_rate(design):
    tpl, patient, obs = design
    res = interval_coverage(tpl, patient, obs, NOISE, n_patients=50, num_samples=250, seed=3)
    lo, hi = res.band()
    assert (lo, hi) == pytest.approx((0.78, 0.98), abs=0.021)  # binom(50, 0.9), 99 % band
    assert res.failed_fits == 0
    for roi in ("kidneys", "tumour"):
        assert res.inside_band(roi), res.table()
    # Misspecified control: the real noise is 3x what the fit assumes -> intervals too narrow.
    loud = LognormalError({k: 3 * v for k, v in NOISE.cv.items()}, calibration_cv=0.15)
    bad = interval_coverage(
        tpl, patient, obs, NOISE, n_patients=50, num_samples=250, seed=3, true_noise=loud
    )
    assert not bad.inside_band("kidneys") and bad.rate("kidneys") < lo, bad.table()


def test_bad_arguments(design):
    tpl, patient, obs = design
    with pytest.raises(InputError, match="method = 'vi'"):
        interval_coverage(tpl, patient, obs, NOISE, method="vi")
    with pytest.raises(InputError, match="n_patients = 1"):
        interval_coverage(tpl, patient, obs, NOISE, n_patients=1)

"""Single-time-point comparison on the linear test template (one scan at 72 h, 24 virtual
patients): the standard methods are the formulas applied to the simulated scan, the twin's
estimate is the TIA at the posterior mode of the public `twinjax.fit` (whose Laplace median agrees
with it), and with a correct prior the twin is more accurate than Hänscheid and Madsen in the
kidneys.

Runtime is compilation (each patient's fit then takes ~0.1 s), so the module compiles twice: the
comparison (mode path) and one `twinjax.fit` Laplace fit. The comparison's ``"median"`` path
(Laplace draws) costs a third compilation of the forward-over-forward Hessian and is exercised
by `benchmarks/single_timepoint.py --twin-estimate median`, not here."""

import math

import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax.dosimetry import hanscheid_tia, madsen_tia
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed
from twinjax.inference._laplace import LatentSpace
from twinjax.inference.single_timepoint import compare_single_timepoint

NOISE = LognormalError({"kidneys": 0.10, "tumour": 0.15}, calibration_cv=0.05)
SCAN_H = 72.0
LU177_HALF_LIFE_H = 6.647 * 24.0  # ICRP-107


@pytest.fixture(scope="module")
def setup(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    )
    res = compare_single_timepoint(
        tpl,
        patient,
        NOISE,
        scan_time_h=SCAN_H,
        n_patients=24,
        n_reference=40,
        seed=1,
        twin_estimate="mode",
    )
    return tpl, patient, res


def test_standard_methods_apply_their_formulas_to_the_scan(setup):
    _, _, res = setup
    assert res.n == 24 and res.failed_fits == 0 and res.rois == ("kidneys", "tumour")
    for roi in res.rois:
        y = res.measured_MBq[roi]
        np.testing.assert_allclose(res.estimates["hanscheid"][roi], hanscheid_tia(y, SCAN_H))
        half = res.half_life_h[roi]
        np.testing.assert_allclose(res.estimates["madsen"][roi], madsen_tia(y, SCAN_H, half))
        # Clearance only shortens the effective half-life below the physical one.
        assert 0.0 < half < LU177_HALF_LIFE_H
    # The reference floor inherits only the scan error: its errors are the measurement errors.
    e = np.log1p(res.errors("scan_only", "kidneys") / 100.0)
    sigma = math.sqrt(math.log1p(0.10**2) + math.log1p(0.05**2))
    assert 0.5 * sigma < np.std(e, ddof=1) < 1.6 * sigma


def test_twin_estimate_is_the_fit_mode_and_beats_the_standard_methods(setup):
    tpl, patient, res = setup
    # Patient 0 refitted with the public API (Laplace): the TIA at its mode equals the
    # comparison's twin estimate (BFGS to |grad| < 1e-4 there, Newton-polished here), and the
    # median of the Laplace TIA draws agrees with it (module docs: a monotone function of a
    # Gaussian keeps the median; the rest is curvature of log TIA and the Monte Carlo error of
    # 400 draws).
    y = np.array([res.measured_MBq["kidneys"][0], res.measured_MBq["tumour"][0]])
    data = Observed(("kidneys", "tumour"), np.array([SCAN_H, SCAN_H]), y)
    post = twinjax.fit(tpl, patient, data, noise=NOISE, method="laplace", num_samples=400)
    mode = LatentSpace(post.gaussian["sites"]).unflatten(np.asarray(post.gaussian["mean"]))
    prior = twinjax.PopulationPrior.from_template(tpl, patient.covariates)
    params = tpl.derive({**prior.base, **prior.theta(mode["z"])})
    tr = twinjax.simulate(tpl.model, params, patient.schedule, np.array([SCAN_H]))
    for roi in res.rois:
        at_mode = float(sum(tr.tia(g) for g in tpl.roi(roi)))
        assert at_mode == pytest.approx(res.estimates["twin"][roi][0], rel=1e-6)
        median = float(np.median(post.draws(f"tia_{roi}")))
        assert median == pytest.approx(at_mode, rel=0.05)
    # With the prior the cohort is drawn from, one scan + prior beats the population formulas.
    rmse = {m: res.summary(m, "kidneys")["rmse"] for m in ("hanscheid", "madsen", "twin")}
    assert rmse["twin"] < rmse["madsen"] and rmse["twin"] < rmse["hanscheid"], rmse
    assert abs(res.summary("twin", "kidneys")["median"]) < 10.0
    table = res.table()
    assert "Hänscheid" in table and "20 % (102/500)" in table


def test_given_population_half_life_and_bad_arguments(setup):
    tpl, patient, _ = setup
    with pytest.raises(InputError, match="scan_time_h = 0"):
        compare_single_timepoint(tpl, patient, NOISE, scan_time_h=0)
    with pytest.raises(InputError, match="n_patients = 1"):
        compare_single_timepoint(tpl, patient, NOISE, n_patients=1)
    with pytest.raises(InputError, match="twin_estimate = 'mean'"):
        compare_single_timepoint(tpl, patient, NOISE, twin_estimate="mean")
    with pytest.raises(InputError, match=r"population_half_life_h\['tumour'\] = -1"):
        compare_single_timepoint(
            tpl, patient, NOISE, population_half_life_h={"kidneys": 30.0, "tumour": -1.0}
        )
    with pytest.raises(InputError, match="no value for"):
        compare_single_timepoint(tpl, patient, NOISE, population_half_life_h={"kidneys": 30.0})
    with pytest.raises(InputError, match="reference_times_h"):
        compare_single_timepoint(tpl, patient, NOISE, reference_times_h=(48.0, 24.0))
    with pytest.raises(InputError, match=r"reference_times_h = \(24\.0, nan\)"):
        compare_single_timepoint(tpl, patient, NOISE, reference_times_h=(24.0, float("nan")))
    with pytest.raises(InputError, match="n_patients = True"):
        compare_single_timepoint(tpl, patient, NOISE, n_patients=True)
    with pytest.raises(InputError, match="no measurement CV for region 'whole_body'"):
        compare_single_timepoint(tpl, patient, NOISE, rois=("kidneys", "whole_body"))

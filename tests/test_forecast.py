"""Forecasts over posterior draws and scenarios: dose per draw equals S x the posterior's TIA,
linear scaling with activity on a linear model, BED from the exact repair integrals, exceedance
probabilities and intervals."""

import jax
import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb
from twinjax.dosimetry import sphere_s_value
from twinjax.forecast import Region, Scenario, forecast
from twinjax.imaging import Patient
from twinjax.inference import Observed, PopulationPrior, fit

NOISE = twinjax.LognormalError({"kidneys": 0.12, "tumour": 0.18})
TIMES = np.array([4.0, 24.0, 48.0, 96.0])


@pytest.fixture(scope="module")
def setup(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    )
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    params = tpl.derive({**prior.base, **prior.theta(np.array([0.5, -0.3, 0.4, -0.5]))})
    traj = twinjax.simulate(tpl.model, params, patient.schedule, TIMES)
    rows = []
    for i, roi in enumerate(("kidneys", "tumour")):
        y = NOISE.sample(jax.random.key(i), roi, traj.activity(roi))
        rows += [(roi, t, float(v)) for t, v in zip(TIMES, y, strict=True)]
    obs = Observed(tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
                   np.array([r[2] for r in rows]))  # fmt: skip
    post = fit(tpl, patient, obs, noise=NOISE, method="laplace", num_samples=60, seed=2)
    return tpl, patient, post


@pytest.fixture(scope="module")
def result(setup):
    tpl, patient, post = setup
    regions = {
        "kidneys": Region(rb.tissue("kidney")),  # ICRP 89 mass, 0.310 kg
        "tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.02, kind="tumour"),
    }
    scenarios = [
        Scenario("7.4 GBq", patient.schedule),
        Scenario("14.8 GBq", patient.schedule.with_activity(14800.0)),
        Scenario(
            "2 x 7.4 GBq, 6 weeks", twinjax.Schedule.cycles(7400.0, 2, 1008.0, ligand_nmol=57.0)
        ),
    ]
    return forecast(post, tpl, scenarios, regions, max_draws=40, rtol=1e-8, atol=1e-11), post


def test_dose_is_s_times_the_posteriors_tia(result):
    fc, post = result
    assert fc.n_draws == 40
    idx = np.linspace(0, len(post.draws("tia_kidneys")) - 1, 40).round().astype(int)
    s = float(sphere_s_value("Lu-177", 0.310))
    dose = fc.values["7.4 GBq"]["kidneys"]["dose_Gy"]
    # The posterior's TIA was computed at the fit's tolerance (rtol 1e-4).
    np.testing.assert_allclose(dose, s * post.draws("tia_kidneys")[idx], rtol=1e-3)


def test_scenarios_scale_and_bed_is_superlinear(result):
    fc, _ = result
    one, two = fc.values["7.4 GBq"]["kidneys"], fc.values["14.8 GBq"]["kidneys"]
    np.testing.assert_allclose(two["dose_Gy"], 2 * one["dose_Gy"], rtol=1e-7)  # linear model
    np.testing.assert_allclose(two["g"], one["g"], rtol=1e-6)  # same curve shape
    # BED = D (1 + G D / (alpha/beta)): doubling D adds 2 G D^2 / ab more.
    ab = rb.tissue("kidney").alpha_beta_Gy
    expected = 2 * one["dose_Gy"] * (1 + 2 * one["g"] * one["dose_Gy"] / ab)
    np.testing.assert_allclose(two["bed_Gy"], expected, rtol=1e-6)
    # Two cycles six weeks apart: twice the dose, BED just above twice (nearly complete repair).
    cyc = fc.values["2 x 7.4 GBq, 6 weeks"]["kidneys"]
    np.testing.assert_allclose(cyc["dose_Gy"], 2 * one["dose_Gy"], rtol=1e-6)
    assert np.all(cyc["bed_Gy"] >= 2 * one["bed_Gy"] * (1 - 1e-9))
    assert np.all(cyc["bed_Gy"] < two["bed_Gy"])
    # NTCP for the kidney (LKB), TCP for the tumour, both probabilities, monotone in dose.
    assert np.all((0 <= one["ntcp"]) & (one["ntcp"] <= two["ntcp"]) & (two["ntcp"] <= 1))
    t1, t2 = fc.values["7.4 GBq"]["tumour"]["tcp"], fc.values["14.8 GBq"]["tumour"]["tcp"]
    assert np.all((0 <= t1) & (t1 <= t2) & (t2 <= 1))


def test_summary_and_exceedance(result):
    fc, _ = result
    bed = fc.values["14.8 GBq"]["kidneys"]["bed_Gy"]
    threshold = float(np.median(bed))
    p = fc.exceedance("kidneys", "bed_Gy", threshold)
    assert p["14.8 GBq"] == pytest.approx(np.mean(bed > threshold))
    assert p["7.4 GBq"] <= p["2 x 7.4 GBq, 6 weeks"] <= p["14.8 GBq"]
    s = fc.summary(0.9)["7.4 GBq"]["kidneys"]["dose_Gy"]
    d = fc.values["7.4 GBq"]["kidneys"]["dose_Gy"]
    assert s["lower"] == pytest.approx(np.quantile(d, 0.05))
    assert s["lower"] <= s["median"] <= s["upper"]


def test_bad_input(setup):
    tpl, patient, post = setup
    reg = {"kidneys": Region(rb.tissue("kidney"))}
    with pytest.raises(InputError, match="scenarios is empty"):
        forecast(post, tpl, [], reg)
    sc = Scenario("a", patient.schedule)
    with pytest.raises(InputError, match="repeat"):
        forecast(post, tpl, [sc, sc], reg)
    with pytest.raises(InputError, match="'tumour' has no ICRP 89 reference mass"):
        forecast(post, tpl, [sc], {"tumour": Region(rb.tissue("prostate_cancer"))})
    with pytest.raises(InputError, match="schedule must be a twinjax.Schedule"):
        Scenario("b", 7400.0)

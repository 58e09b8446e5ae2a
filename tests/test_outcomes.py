"""Outcome feedback (`twinjax.outcomes`): observed tumour response updates the lesion's
radiosensitivity and growth by Pareto-smoothed importance sampling over (kinetics, response)
pairs.

- Recovery: a PSA-like marker simulated from a known alpha pulls the posterior of alpha from its
  prior (Wang et al. 2003: 0.15 +- 0.04 1/Gy) towards the truth, its 90 % interval covers the
  truth and is narrower than the prior's; the Pareto k is below 0.7.
- Uninformative outcomes (CV 400 %) leave the prior where it was.
- Forecasts use each draw's own alpha: surviving fraction = exp(-alpha_d BED_d) and the
  individual TCP of alpha_d, exactly.
- DigitalTwin: assimilate(outcomes=...) is logged, survives save/load bit-identically, is
  re-applied after a later scan update; bad outcomes are refused before any computation.
"""

import jax
import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb
from twinjax.dosimetry import sphere_s_value
from twinjax.forecast import Region, Scenario, TumourGrowth, forecast
from twinjax.imaging import Patient
from twinjax.inference import Observed, PopulationPrior, fit
from twinjax.outcomes import ResponseObservation, ResponsePrior, assimilate_outcomes
from twinjax.twin import DigitalTwin

NOISE = twinjax.LognormalError({"kidneys": 0.12, "tumour": 0.18})
SCANS = np.array([4.0, 24.0, 96.0])
# A 500 mL lesion: 7.4 GBq gives it a BED of about 6 Gy (surviving fraction 0.3-0.4), so its
# marker still reflects the kill and not only the marker's own clearance.
GROWTH = TumourGrowth(doubling_time_h=1500.0, carrying_capacity_mL=4000.0)
TUMOUR = Region(rb.tissue("prostate_cancer"), mass_kg=0.5, kind="tumour", growth=GROWTH)
REGIONS = {"kidneys": Region(rb.tissue("kidney")), "tumour": TUMOUR}
ALPHA_TRUE = 0.21  # 1/Gy: 1.5 prior SD above the population mean
OUT_TIMES = np.array([336.0, 672.0, 1000.0])  # 2, 4 and 6 weeks after the injection


@pytest.fixture(scope="module")
def world(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    sched = twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    patient = Patient.virtual({"egfr_L_per_h": 5.4}, sched, patient_id="o1")
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    truth = tpl.derive({**prior.base, **prior.theta(np.array([0.3, -0.2, 0.4, -0.3]))})
    traj = twinjax.simulate(tpl.model, truth, sched, SCANS)
    rows = []
    for i, roi in enumerate(("kidneys", "tumour")):
        y = NOISE.sample(jax.random.key(i), roi, traj.activity(roi))
        rows += [(roi, float(t), float(v)) for t, v in zip(SCANS, y, strict=True)]
    rows.sort(key=lambda r: r[1])
    obs = Observed(tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
                   np.array([r[2] for r in rows]))  # fmt: skip
    post = fit(tpl, patient, obs, noise=NOISE, method="laplace", num_samples=60, seed=4)
    # The true marker: the response model with the truth's kinetics and ALPHA_TRUE.
    s = float(sphere_s_value("Lu-177", 0.5))
    true = rb.response_from_model(
        tpl.model, truth, sched, s, OUT_TIMES, tissue=TUMOUR.tissue, volume_mL=500.0,
        doubling_time_h=GROWTH.doubling_time_h, alpha_per_Gy=ALPHA_TRUE, growth="gompertz",
        carrying_capacity_mL=4000.0, region=tpl.roi("tumour"), rtol=1e-8, atol=1e-11,
    )  # fmt: skip
    return tpl, patient, obs, post, np.asarray(true.marker)


@pytest.fixture(scope="module")
def update(world):
    tpl, patient, _, post, marker = world
    o = ResponseObservation("tumour", OUT_TIMES, marker=marker, marker_cv=0.08)
    return assimilate_outcomes(post, tpl, REGIONS, patient.schedule, [o], max_draws=60,
                               per_draw=24, seed=1)  # fmt: skip


def test_marker_recovers_the_radiosensitivity(update, world):
    assert 0.0 < world[4][-1] < 1.0  # the marker fell: the lesion responded
    assert update.pareto_k < 0.7 and update.verdict == "reliable"
    assert update.ess > 50
    a = update.summary["tumour"]["alpha_per_Gy"]
    prior_width = a["prior"]["q95"] - a["prior"]["q5"]
    post_width = a["posterior"]["q95"] - a["posterior"]["q5"]
    assert a["posterior"]["q5"] < ALPHA_TRUE < a["posterior"]["q95"]
    assert abs(a["posterior"]["median"] - ALPHA_TRUE) < 0.5 * abs(a["prior"]["median"] - ALPHA_TRUE)
    assert post_width < 0.6 * prior_width
    # Prior: lognormal around the tissue's 0.15 1/Gy with CV 0.04 / 0.15 (Wang et al. 2003).
    assert a["prior"]["median"] == pytest.approx(0.15, rel=0.05)
    draws = update.posterior.draws("tumour__alpha_per_Gy")
    assert draws.shape == (60 * 24,)
    assert update.posterior.method == "laplace+outcomes"


def test_uninformative_outcomes_leave_the_prior(world):
    tpl, patient, _, post, marker = world
    o = ResponseObservation("tumour", OUT_TIMES, marker=marker, marker_cv=4.0)
    up = assimilate_outcomes(post, tpl, REGIONS, patient.schedule, [o], max_draws=60,
                             per_draw=8, seed=2)  # fmt: skip
    a = up.summary["tumour"]["alpha_per_Gy"]
    assert a["posterior"]["median"] == pytest.approx(a["prior"]["median"], rel=0.08)
    assert up.pareto_k < 0.5


def test_forecast_uses_each_draws_alpha(update, world):
    tpl, patient, *_ = world
    post = update.posterior
    sc = [Scenario("given", patient.schedule)]
    fc = forecast(post, tpl, sc, {"tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.02,
                                                   kind="tumour")}, max_draws=30)  # fmt: skip
    t = fc.values["given"]["tumour"]
    total = len(post.draws("tumour__alpha_per_Gy"))
    idx = np.linspace(0, total - 1, 30).round().astype(int)
    alpha = post.draws("tumour__alpha_per_Gy")[idx]
    np.testing.assert_allclose(t["surviving_fraction"], np.exp(-alpha * t["bed_Gy"]), rtol=1e-12)
    ref = [float(rb.tcp(b, 20.0, tissue=TUMOUR.tissue, alpha_per_Gy=a, alpha_sd_per_Gy=0.0))
           for a, b in zip(alpha, t["bed_Gy"], strict=True)]  # fmt: skip
    np.testing.assert_allclose(t["tcp"], ref, rtol=1e-10)
    # Without outcomes the tissue's alpha is used for every draw.
    base = forecast(world[3], tpl, sc, {"tumour": Region(rb.tissue("prostate_cancer"),
                                                         mass_kg=0.02, kind="tumour")},
                    max_draws=30).values["given"]["tumour"]  # fmt: skip
    np.testing.assert_allclose(base["surviving_fraction"], np.exp(-0.15 * base["bed_Gy"]),
                               rtol=1e-12)  # fmt: skip


def test_outcome_inputs_are_refused(world):
    tpl, patient, _, post, marker = world
    with pytest.raises(InputError, match="marker = \\[-0.5\\]; allowed: one or more finite"):
        ResponseObservation("tumour", [100.0], marker=[-0.5])
    with pytest.raises(InputError, match="strictly ascending"):
        ResponseObservation("tumour", [200.0, 100.0], marker=[0.5, 0.4])
    with pytest.raises(InputError, match="neither marker nor volume_mL"):
        ResponseObservation("tumour", [100.0])
    with pytest.raises(InputError, match="ResponsePrior.doubling_time_cv = -1"):
        ResponsePrior(doubling_time_cv=-1)
    o = ResponseObservation("tumour", OUT_TIMES, marker=marker)
    no_growth = {"tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.02, kind="tumour")}
    with pytest.raises(InputError, match="has no growth"):
        assimilate_outcomes(post, tpl, no_growth, patient.schedule, [o])
    with pytest.raises(InputError, match="allowed: a region of the twin"):
        assimilate_outcomes(post, tpl, {"kidneys": REGIONS["kidneys"]}, patient.schedule, [o])
    late = twinjax.Schedule.single(7400.0, time_h=500.0)
    with pytest.raises(InputError, match="before the first administration"):
        assimilate_outcomes(post, tpl, REGIONS, late, [o])


def test_twin_assimilates_outcomes_and_keeps_them(world, tmp_path):
    tpl, patient, obs, _, marker = world
    tw = DigitalTwin(tpl, patient, noise=NOISE, regions=REGIONS,
                     fit_options={"method": "laplace", "num_samples": 30, "seed": 5})  # fmt: skip
    with pytest.raises(InputError, match="no posterior yet"):
        tw.assimilate(outcomes=ResponseObservation("tumour", [336.0], marker=[0.9]))
    tw.assimilate(obs)
    opts = {"max_draws": 30, "per_draw": 8, "seed": 3}
    belief = tw.assimilate(outcomes=ResponseObservation("tumour", OUT_TIMES[:2], marker=marker[:2]),
                           outcome_options=opts)  # fmt: skip
    assert belief is tw.belief and "tumour__alpha_per_Gy" in belief.samples
    assert tw.posterior.method == "laplace"  # the scan posterior itself is kept
    event = tw.history[-1]
    assert event["action"] == "assimilate_outcomes" and event["pareto_k"] < 0.7
    with pytest.raises(InputError, match="not after the last outcome"):
        tw.assimilate(outcomes=ResponseObservation("tumour", [600.0], marker=[0.5]))
    back = DigitalTwin.load(tw.save(tmp_path / "o.twin"), template=tpl.path)
    np.testing.assert_array_equal(back.belief.draws("tumour__alpha_per_Gy"),
                                  tw.belief.draws("tumour__alpha_per_Gy"))  # fmt: skip
    # A later outcome re-applies all of them, from the scan posterior.
    tw.assimilate(outcomes=ResponseObservation("tumour", OUT_TIMES[2:], marker=marker[2:]))
    assert tw.history[-1]["n_observations"] == 3
    assert len(tw.responses) == 2

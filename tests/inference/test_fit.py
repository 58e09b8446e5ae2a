"""Calibration of a twin: recovery of a simulated patient, engines agree, diagnostics, files.

A small linear template (solved exactly by the matrix exponential) keeps compile and sampling
times test-sized; the PBPK templates go through the same code path (see validation/).
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed, PopulationPrior, fit

NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08}, calibration_cv=0.05)
TIMES = np.array([4.0, 24.0, 48.0, 96.0])


@pytest.fixture(scope="module")
def setup(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    )
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    z_true = np.array([0.8, -0.6, 0.5, -0.9])  # CL, k_bk, k_bt, k_kb (sorted names)
    truth = prior.theta(jnp.asarray(z_true))
    params = tpl.derive({**prior.base, **truth})
    traj = twinjax.simulate(tpl.model, params, patient.schedule, TIMES)
    key = jax.random.key(7)
    cal = np.exp(0.05 * np.asarray(jax.random.normal(jax.random.fold_in(key, 99), (4,))))
    rows = []
    for i, roi in enumerate(("kidneys", "tumour", "whole_body")):
        y = NOISE.sample(jax.random.fold_in(key, i), roi, traj.activity(roi), calibration=cal)
        rows += [(roi, t, float(v)) for t, v in zip(TIMES, y, strict=True)]
    obs = Observed(
        tuple(r[0] for r in rows), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    )
    return tpl, patient, prior, truth, obs, traj


@pytest.fixture(scope="module")
def nuts(setup):
    tpl, patient, _, _, obs, _ = setup
    return fit(
        tpl,
        patient,
        obs,
        noise=NOISE,
        method="nuts",
        num_chains=2,
        num_warmup=300,
        num_samples=350,
        seed=1,
    )


def test_nuts_recovers_the_simulated_patient(setup, nuts):
    _, _, prior, truth, _, traj = setup
    assert nuts.diagnostics.verdict == "ok", nuts.diagnostics.messages
    s = nuts.summary()
    for i, name in enumerate(prior.names):
        t = float(truth[name])
        prior_sd_log = float(prior.scale_tril[i, i])
        post_sd_log = float(np.std(np.log(nuts.draws(name))))
        assert abs(np.log(s[name]["q50"]) - np.log(t)) < 3 * post_sd_log, name
        assert post_sd_log < prior_sd_log, f"{name}: the data must narrow the prior"
    tia = float(traj.tia("kidneys"))
    assert s["tia_kidneys"]["q5"] < tia < s["tia_kidneys"]["q95"]


def test_diagnostics_are_stan_like(nuts):
    d = nuts.diagnostics
    assert set(d.rhat) >= set(nuts.names)
    assert all(r < 1.01 for r in d.rhat.values())
    assert all(e > 100 for e in d.ess_bulk.values())
    assert d.divergences == 0 and d.ode_failures == 0
    assert len(d.ebfmi) == 2 and min(d.ebfmi) > 0.3
    assert nuts.samples["z"].shape == (2, 350, 4)


def test_log_density_is_traced_a_bounded_number_of_times(setup, nuts):
    tpl, patient, _, _, obs, _ = setup
    short = fit(
        tpl,
        patient,
        obs,
        noise=NOISE,
        method="nuts",
        num_chains=1,
        num_warmup=20,
        num_samples=10,
        seed=2,
    )
    longer = fit(
        tpl,
        patient,
        obs,
        noise=NOISE,
        method="nuts",
        num_chains=1,
        num_warmup=40,
        num_samples=60,
        seed=2,
    )
    assert short.provenance["model_traces"] == longer.provenance["model_traces"] <= 10


@pytest.mark.parametrize("method", ["map", "laplace", "svi"])
def test_optimisation_engines_agree_with_nuts(setup, nuts, method):
    tpl, patient, prior, _, obs, _ = setup
    post = fit(
        tpl,
        patient,
        obs,
        noise=NOISE,
        method=method,
        svi_steps=1500,
        num_samples=400,
        learning_rate=0.05,
        seed=3,
    )
    s, ref = post.summary(), nuts.summary()
    for name in prior.names:
        sd = float(np.std(np.log(nuts.draws(name))))
        assert abs(np.log(s[name]["q50"]) - np.log(ref[name]["q50"])) < 1.0 * sd + 0.02, name


def test_posterior_saves_as_netcdf_with_provenance(nuts, tmp_path):
    path = tmp_path / "post.nc"
    nuts.save(path)
    idata = az.from_netcdf(path)
    assert {"posterior", "sample_stats", "observed_data"} <= set(idata.groups())
    np.testing.assert_allclose(idata.posterior["k_bk"].values, nuts.samples["k_bk"])
    assert idata.posterior.attrs["template"] == "test_linear"
    assert idata.attrs["template"] == "test_linear"
    assert int(idata.posterior.attrs["seed"]) == 1
    assert len(idata.posterior.attrs["data_sha256"]) == 64
    assert not list(tmp_path.glob(".*.tmp"))


def test_prior_round_trip_and_bad_priors(setup):
    tpl, _, prior, truth, _, _ = setup
    np.testing.assert_allclose(prior.z_of(truth), [0.8, -0.6, 0.5, -0.9], atol=1e-12)
    # covariates set the typical value: CL = 0.5 * eGFR
    assert float(prior.base["CL"]) == pytest.approx(2.7)
    with pytest.raises(InputError, match="'k_tb' has no between-patient CV"):
        PopulationPrior.from_template(tpl, {}, names=["k_tb"])
    with pytest.raises(InputError, match=r"cv\['k_bk'\] = -1"):
        PopulationPrior.from_template(tpl, {}, cv={"k_bk": -1.0})
    with pytest.raises(InputError, match="not positive definite"):
        PopulationPrior.from_template(
            tpl, {}, names=["k_bk", "k_kb"], correlation=[[1.0, 1.2], [1.2, 1.0]]
        )


def test_bad_data_fails_before_sampling(setup):
    tpl, patient, _, _, obs, _ = setup
    with pytest.raises(InputError, match="activity_MBq"):
        Observed(("kidneys",), np.array([4.0]), np.array([np.nan]))
    with pytest.raises(InputError, match="time_h"):
        Observed(("kidneys",), np.array([-4.0]), np.array([1.0]))
    with pytest.raises(InputError, match="empty"):
        Observed((), np.array([]), np.array([]))
    bad_roi = Observed(("liver",), np.array([4.0]), np.array([1.0]))
    with pytest.raises(InputError, match="'liver'"):
        fit(tpl, patient, bad_roi, noise=NOISE, method="map", svi_steps=1)
    with pytest.raises(InputError, match="method = 'hmc'"):
        fit(tpl, patient, obs, noise=NOISE, method="hmc")
    with pytest.raises(InputError, match="num_samples = 0"):
        fit(tpl, patient, obs, noise=NOISE, num_samples=0)
    late = Patient.virtual(patient.covariates, twinjax.Schedule.single(7400.0, time_h=10.0))
    with pytest.raises(InputError, match="precedes the first administration"):
        fit(tpl, late, obs, noise=NOISE, method="map", svi_steps=1)

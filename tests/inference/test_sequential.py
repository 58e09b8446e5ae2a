"""Sequential assimilation: sequential = batch (exactly for linear-Gaussian, within Monte-Carlo
error for the exact refit), the fast path's error is measured, scan order is enforced."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed, PopulationPrior, assimilate, fit, gaussian_update

NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08}, calibration_cv=0.05)
TIMES = np.array([4.0, 24.0, 48.0, 96.0])


def test_linear_gaussian_sequential_equals_batch_to_1e_8():
    """Prior N(m0, S0), three batches y_k = H_k u + e_k, e_k ~ N(0, R_k): the closed-form batch
    posterior (S^-1 = S0^-1 + sum H'R^-1H, m = S (S0^-1 m0 + sum H'R^-1 y)) equals three
    successive Gaussian updates and one update with all data."""
    rng = np.random.default_rng(0)
    n = 4
    a = rng.normal(size=(n, n))
    s0 = a @ a.T + n * np.eye(n)
    m0 = rng.normal(size=n)
    batches = []
    for k in range(3):
        h = rng.normal(size=(k + 2, n))
        r = np.diag(rng.uniform(0.2, 1.0, size=k + 2))
        y = h @ rng.normal(size=n) + rng.normal(size=k + 2)
        batches.append((h, r, y))

    def loglik(batch):
        h, r, y = (jnp.asarray(x) for x in batch)
        rinv = jnp.linalg.inv(r)
        return lambda u: -0.5 * (y - h @ u) @ rinv @ (y - h @ u)

    prec = np.linalg.inv(s0)
    shift = prec @ m0
    for h, r, y in batches:
        prec = prec + h.T @ np.linalg.inv(r) @ h
        shift = shift + h.T @ np.linalg.inv(r) @ y
    s_batch = np.linalg.inv(prec)
    m_batch = s_batch @ shift

    with jax.numpy_dtype_promotion("standard"):
        m, s = m0, s0
        for b in batches:
            m, s = gaussian_update(loglik(b), m, s)
        m_all, s_all = gaussian_update(lambda u: sum(loglik(b)(u) for b in batches), m0, s0)
    np.testing.assert_allclose(m, m_batch, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s, s_batch, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m_all, m_batch, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s_all, s_batch, rtol=1e-8, atol=1e-10)


@pytest.fixture(scope="module")
def setup(linear_template_path):
    tpl = twinjax.load_template(linear_template_path)
    patient = Patient.virtual(
        {"egfr_L_per_h": 5.4}, twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    )
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    truth = prior.theta(jnp.asarray([0.5, -0.4, 0.7, -0.3]))
    traj = twinjax.simulate(tpl.model, tpl.derive({**prior.base, **truth}), patient.schedule, TIMES)
    key = jax.random.key(11)
    cal = np.exp(0.05 * np.asarray(jax.random.normal(jax.random.fold_in(key, 99), (4,))))
    rows = []
    for i, roi in enumerate(("kidneys", "tumour", "whole_body")):
        y = NOISE.sample(jax.random.fold_in(key, i), roi, traj.activity(roi), calibration=cal)
        rows += [(roi, t, float(v)) for t, v in zip(TIMES, y, strict=True)]
    rows.sort(key=lambda r: r[1])
    obs = Observed(
        tuple(r[0] for r in rows), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    )
    return tpl, patient, obs


def _split(obs, t):
    early, late = obs.time_h <= t, obs.time_h > t
    part = lambda m: Observed(tuple(np.asarray(obs.roi)[m]), obs.time_h[m], obs.activity_MBq[m])  # noqa: E731
    return part(early), part(late)


NUTS = dict(noise=NOISE, method="nuts", num_chains=2, num_warmup=300, num_samples=450)


@pytest.fixture(scope="module")
def batch(setup):
    tpl, patient, obs = setup
    return fit(tpl, patient, obs, seed=1, **NUTS)


def test_exact_path_agrees_with_the_batch_fit_within_3_mcse(setup, batch):
    tpl, patient, obs = setup
    first, rest = _split(obs, 24.0)
    post = fit(tpl, patient, first, seed=2, **NUTS)
    post = assimilate(post, rest)  # warm-started NUTS on all four scans
    assert post.observed.time_h.size == obs.time_h.size
    assert post.diagnostics.verdict == "ok", post.diagnostics.messages
    assert post.context.options["num_warmup"] == 150  # half the previous warm-up
    # 18 comparisons (6 quantities x 3 quantiles) of two independent runs: each difference over
    # its combined MCSE is ~|N(0, 1)|; 3.5 bounds all 18 with ~1 % family-wise false alarms, and
    # their mean must be near sqrt(2/pi) = 0.8.
    z = []
    for name in (*batch.names, "tia_kidneys", "tia_tumour"):
        for q in (0.05, 0.5, 0.95):
            a, b = post.samples[name], batch.samples[name]
            diff = abs(np.quantile(a, q) - np.quantile(b, q))
            mcse = np.hypot(
                float(az.mcse(a, method="quantile", prob=q)),
                float(az.mcse(b, method="quantile", prob=q)),
            )
            z.append(diff / mcse)
    assert max(z) < 3.5 and np.mean(z) < 1.5, np.round(z, 2)


def test_fast_path_is_close_and_reports_its_error(setup, batch):
    tpl, patient, obs = setup
    first, rest = _split(obs, 24.0)
    lap = fit(tpl, patient, first, noise=NOISE, method="laplace", num_samples=1000, seed=3)
    fast = assimilate(lap, rest, method="fast")
    exact = assimilate(lap, rest, method="exact")  # Laplace on all data, started at the old mode
    # Laplace on all data and the Laplace update of the Laplace posterior of the first two scans
    # differ only by the non-Gaussianity of the first posterior: close, not equal.
    for name in (*batch.names, "tia_kidneys"):
        sd = float(np.std(np.log(batch.draws(name))))
        f, e = np.log(fast.summary()[name]["q50"]), np.log(exact.summary()[name]["q50"])
        assert abs(f - e) < 0.25 * sd, name
    ap = fast.approximation
    assert 0.0 < ap["is_efficiency"] <= 1.0 and np.isfinite(ap["pareto_k"])
    assert ap["reliable"] and ap["max_mean_shift_sd"] < 0.3, ap
    assert fast.gaussian["cov"].shape == (4 + 4, 4 + 4)


def test_a_new_cycle_and_the_scan_order(setup):
    tpl, patient, obs = setup
    first, rest = _split(obs, 24.0)
    lap = fit(tpl, patient, first, noise=NOISE, method="laplace", num_samples=200, seed=4)
    with pytest.raises(InputError, match=r"not after the last assimilated scan \(24 h\).*refit"):
        assimilate(lap, first)
    two = Patient.virtual(
        patient.covariates, twinjax.Schedule.cycles(7400.0, 2, 1000.0, ligand_nmol=57.0)
    )
    other = Patient.virtual(patient.covariates, twinjax.Schedule.single(6000.0, ligand_nmol=57.0))
    with pytest.raises(InputError, match="must extend the schedule"):
        assimilate(lap, rest, patient=other)
    with pytest.raises(InputError, match="method = 'smc'"):
        assimilate(lap, rest, method="smc")
    # Second cycle: data after the second administration, fast path with the extended schedule.
    cycle2 = Observed(("kidneys", "kidneys"), np.array([1004.0, 1048.0]), np.array([900.0, 700.0]))
    post = assimilate(assimilate(lap, rest, method="fast", patient=two), cycle2, method="fast")
    assert post.context.patient.schedule.n_administrations == 2
    assert post.observed.time_h[-1] == 1048.0 and np.isfinite(post.approximation["pareto_k"])

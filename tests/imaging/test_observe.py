"""Observation models against SciPy's distributions and a Monte Carlo partial-volume check."""

import jax
import numpy as np
import pytest
from scipy import stats

from twinjax import InputError
from twinjax.imaging.observe import LognormalError, PoissonCounts, lognormal_sigma, sphere_recovery


def test_lognormal_likelihood_equals_scipy():
    noise = LognormalError({"kidneys": 0.12})
    y = np.array([80.0, 120.0, 95.0])
    mu = np.array([100.0, 110.0, 90.0])
    sigma = float(lognormal_sigma(0.12))
    assert sigma == pytest.approx(np.sqrt(np.log(1 + 0.12**2)), rel=1e-14)
    ref = stats.lognorm(s=sigma, scale=mu * 1.05 * 0.8).logpdf(y).sum()
    ll = noise.log_likelihood("kidneys", y, mu, calibration=1.05, recovery=0.8)
    assert float(ll) == pytest.approx(ref, rel=1e-12)
    mask = np.array([True, False, True])
    ref_m = stats.lognorm(s=sigma, scale=mu * 1.05 * 0.8).logpdf(y)[mask].sum()
    assert float(
        noise.log_likelihood("kidneys", y, mu, calibration=1.05, recovery=0.8, mask=mask)
    ) == pytest.approx(ref_m, rel=1e-12)


def test_censoring_below_detection_limit():
    noise = LognormalError({"tumour": 0.2}, detection_limit_MBq=1.0)
    sigma = float(lognormal_sigma(0.2))
    y = np.array([0.5, 3.0])
    mu = np.array([0.8, 2.5])
    ref = stats.lognorm(s=sigma, scale=0.8).logcdf(1.0) + stats.lognorm(s=sigma, scale=2.5).logpdf(
        3.0
    )
    assert float(noise.log_likelihood("tumour", y, mu)) == pytest.approx(ref, rel=1e-12)


def test_lognormal_sampling_has_the_stated_cv():
    noise = LognormalError({"liver": 0.08})
    y = np.asarray(noise.sample(jax.random.key(0), "liver", np.full(200_000, 50.0)))
    assert np.median(y) == pytest.approx(50.0, rel=2e-3)
    assert y.std() / y.mean() == pytest.approx(0.08, rel=1e-2)


def test_poisson_counts_equal_scipy():
    obs = PoissonCounts(sensitivity_cps_per_MBq=12.0, frame_s=600.0)
    a = np.array([1.5, 2.0])
    n = np.array([10900.0, 14200.0])
    ref = stats.poisson(12.0 * 600.0 * a * 0.98).logpmf(n).sum()
    assert float(obs.log_likelihood(n, a, calibration=0.98)) == pytest.approx(ref, rel=1e-10)
    assert float(obs.to_activity(7200.0)) == pytest.approx(1.0)


def test_sphere_recovery_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for volume_mL, fwhm in [(1.0, 10.0), (10.0, 10.0), (0.5, 5.0)]:
        r = np.cbrt(3 * volume_mL * 1e3 / (4 * np.pi))
        s = fwhm / 2.3548200450309493
        n = 400_000
        u = rng.normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        p = u * (r * rng.random(n) ** (1 / 3))[:, None]
        q = p + rng.normal(scale=s, size=(n, 3))
        mc = np.mean(np.linalg.norm(q, axis=1) < r)
        se = np.sqrt(mc * (1 - mc) / n)
        assert float(sphere_recovery(volume_mL * 1e-3, fwhm)) == pytest.approx(mc, abs=4 * se)
    # large spheres: RC -> 1 - 3 E[d] / (4 R), E[d] = 2 s sqrt(2/pi) the mean PSF displacement
    r, s = np.cbrt(3 * 10.0e6 / (4 * np.pi)), 10.0 / 2.3548200450309493
    expected = 1 - 3 * 2 * s * np.sqrt(2 / np.pi) / (4 * r)
    assert float(sphere_recovery(10.0, 10.0)) == pytest.approx(expected, abs=2e-3)
    assert float(sphere_recovery(1e-6, 10.0)) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cv": {"kidneys": 0.0}}, r"cv\['kidneys'\] = 0.0"),
        ({"cv": {"kidneys": 0.1}, "calibration_cv": -0.1}, "calibration_cv = -0.1"),
        ({"cv": {"kidneys": 0.1}, "detection_limit_MBq": float("nan")}, "detection_limit_MBq"),
    ],
)
def test_bad_noise_models(kwargs, match):
    with pytest.raises(InputError, match=match):
        LognormalError(**kwargs)
    with pytest.raises(InputError, match="frame_s = 0"):
        PoissonCounts(sensitivity_cps_per_MBq=1.0, frame_s=0)

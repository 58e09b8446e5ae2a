"""Uncertainty studies and scan design (`twinjax.inference.design`): Sobol indices against the
Ishigami function's and a linear model's analytic indices, elasticities against finite
differences and a power law, and the preposterior choice of the next scan time against the
linear-Gaussian closed form and the mean life of a mono-exponential organ curve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import twinjax
from twinjax import InputError
from twinjax.dosimetry import sphere_s_value
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed, PopulationPrior
from twinjax.inference.design import (
    SOFT_TISSUE_KG_PER_L,
    dose_elasticities,
    expected_posterior_variance,
    next_scan_time,
    sobol_indices,
)
from twinjax.inference.fit import FitContext, Posterior

PI = math.pi


def _ishigami(x, a=7.0, b=0.1):
    return (jnp.sin(x["x1"]) + a * jnp.sin(x["x2"]) ** 2
            + b * x["x3"] ** 4 * jnp.sin(x["x1"]))  # fmt: skip


def _uniform(key, n):
    return jax.random.uniform(key, (n,), minval=-PI, maxval=PI, dtype=float)


def test_sobol_indices_of_the_ishigami_function():
    """Ishigami & Homma (1990), a = 7, b = 0.1: V = a^2/8 + b pi^4/5 + b^2 pi^8/18 + 1/2,
    V1 = (1 + b pi^4/5)^2 / 2, V2 = a^2/8, V3 = 0, V13 = b^2 pi^8 (1/18 - 1/50)
    (Saltelli et al. 2008, Global Sensitivity Analysis: The Primer, sec. 4.9)."""
    a, b = 7.0, 0.1
    v1, v2 = 0.5 * (1 + b * PI**4 / 5) ** 2, a * a / 8
    v13 = b * b * PI**8 * (1 / 18 - 1 / 50)
    v = v1 + v2 + v13
    s1 = np.array([v1, v2, 0.0]) / v
    st = np.array([v1 + v13, v2, v13]) / v
    res = sobol_indices(_ishigami, {"x1": _uniform, "x2": _uniform, "x3": _uniform}, n=8192)
    assert res.names == ("x1", "x2", "x3") and res.outputs == ("value",)
    assert res.n_evaluations == 8192 * 5
    assert res.variance[0] == pytest.approx(v, rel=0.05)
    np.testing.assert_allclose(res.first_order[0], s1, atol=0.03)
    np.testing.assert_allclose(res.total[0], st, atol=0.03)
    assert res.first_order[0].sum() <= 1.0 + 0.03
    assert np.all(res.first_order_interval[0] <= res.first_order[0] + 1e-12)
    assert np.all(res.total_interval[1] >= res.total[0] - 1e-12)
    for arr in (res.first_order, res.total, res.first_order_interval, res.variance, res.mean):
        assert arr.dtype == np.float64
    tab = res.table()
    assert tab["x2"]["S1"] == pytest.approx(res.first_order[0, 1])


@pytest.fixture(scope="module")
def tpl(linear_template_path):
    return twinjax.load_template(linear_template_path)


def test_sobol_indices_over_a_template_prior_match_a_log_linear_model(tpl):
    """f = sum c_i ln theta_i is linear in the prior's standard-normal coordinates with
    slopes c_i sigma_i: S_i = ST_i = (c_i sigma_i)^2 / sum_j (c_j sigma_j)^2, no interactions.
    A second output (a product) shares the evaluations."""
    prior = PopulationPrior.from_template(tpl)
    c = {"CL": 1.0, "k_bk": -2.0, "k_bt": 0.5, "k_kb": 1.5}
    sig = {n: float(prior.scale_tril[i, i]) for i, n in enumerate(prior.names)}
    w = np.array([(c[n] * sig[n]) ** 2 for n in prior.names])
    exact = w / w.sum()

    def fn(theta):
        lin = sum(c[n] * jnp.log(theta[n]) for n in prior.names)
        return {"linear": lin, "product": theta["CL"] * theta["k_bk"]}

    res = sobol_indices(fn, prior, n=4096, seed=3, batch_size=5000)
    assert res.outputs == ("linear", "product") and res.names == prior.names
    np.testing.assert_allclose(res.first_order[0], exact, atol=0.03)
    np.testing.assert_allclose(res.total[0], exact, atol=0.03)
    assert res.first_order[0].sum() == pytest.approx(1.0, abs=0.05)
    # the product depends on CL and k_bk only
    i_bt, i_kb = prior.names.index("k_bt"), prior.names.index("k_kb")
    assert abs(res.total[1, i_bt]) < 0.01 and abs(res.total[1, i_kb]) < 0.01
    assert res.first_order[1].sum() <= 1.0 + 0.03


def test_sobol_refuses_bad_inputs(tpl):
    corr = np.array([[1, 0.5, 0, 0], [0.5, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    prior = PopulationPrior.from_template(tpl, correlation=corr)
    with pytest.raises(InputError, match="correlates"):
        sobol_indices(lambda t: t["CL"], prior, n=32)
    with pytest.raises(InputError, match="n = 4"):
        sobol_indices(_ishigami, {"x1": _uniform}, n=4)
    with pytest.raises(InputError, match="not finite at"):
        sobol_indices(lambda x: jnp.log(x["u"]), {"u": _uniform}, n=32)
    with pytest.raises(InputError, match="do not vary"):
        sobol_indices(lambda x: 0.0 * x["u"] + 1.0, {"u": _uniform}, n=32)
    with pytest.raises(InputError, match="allowed: a PopulationPrior"):
        sobol_indices(_ishigami, [1, 2], n=32)


def test_elasticities_of_a_power_law_are_its_exponents():
    def fn(p):
        return 3.0 * p["a"] ** 2 * p["b"] ** -0.5 * p["c"] ** 0.0

    for mode in ("forward", "reverse"):
        e = dose_elasticities(fn, {"a": 2.0, "b": 5.0, "c": 7.0}, mode=mode)["value"]
        assert e["a"] == pytest.approx(2.0, abs=1e-12)
        assert e["b"] == pytest.approx(-0.5, abs=1e-12)
        assert e["c"] == pytest.approx(0.0, abs=1e-12)
    only = dose_elasticities(fn, {"a": 2.0, "b": 5.0, "c": 7.0}, names=["b"])
    assert list(only["value"]) == ["b"]


def test_dose_elasticities_equal_finite_differences(tpl):
    """Kidney and tumour self-doses of the linear template (TIA x sphere S-value of the mass,
    the mass being a parameter too): forward and reverse mode equal central differences of
    ln D in ln theta."""
    sched = twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    times = jnp.array([1.0, 24.0])
    point = {k: float(tpl.params[k]) for k in ("CL", "k_bk", "k_kb", "k_bt", "k_tb", "V")}
    point["kidney_mass_kg"] = 0.31

    def doses(p):
        kin = {k: v for k, v in p.items() if k != "kidney_mass_kg"}
        tr = twinjax.simulate(tpl.model, tpl.derive(kin), sched, times, adjoint="reverse")
        return {
            "kidneys": tr.tia("kidneys") * sphere_s_value("Lu-177", p["kidney_mass_kg"]),
            "tumour": tr.tia("tumour") * sphere_s_value("Lu-177", 0.05),
        }

    fwd = dose_elasticities(doses, point)
    doses_jit = jax.jit(doses)
    rev = dose_elasticities(doses, point, mode="reverse")
    h = 1e-5
    for name in point:
        up = {**point, name: point[name] * math.exp(h)}
        dn = {**point, name: point[name] * math.exp(-h)}
        du, dd = doses_jit(up), doses_jit(dn)
        for region in ("kidneys", "tumour"):
            fd = (math.log(float(du[region])) - math.log(float(dd[region]))) / (2 * h)
            assert fwd[region][name] == pytest.approx(fd, abs=1e-6), (region, name)
            assert rev[region][name] == pytest.approx(fwd[region][name], abs=1e-10)
    # the S-value of a 310 g kidney falls about as 1/m (electrons absorbed locally)
    assert -1.0 < fwd["kidneys"]["kidney_mass_kg"] < -0.95
    assert fwd["tumour"]["kidney_mass_kg"] == 0.0


def test_elasticities_refuse_bad_points():
    with pytest.raises(InputError, match="params\\['a'\\] = -1"):
        dose_elasticities(lambda p: p["a"], {"a": -1.0})
    with pytest.raises(InputError, match="not in params"):
        dose_elasticities(lambda p: p["a"], {"a": 1.0}, names=["b"])
    with pytest.raises(InputError, match="finite outputs > 0"):
        dose_elasticities(lambda p: p["a"] - 1.0, {"a": 1.0})
    with pytest.raises(InputError, match="mode"):
        dose_elasticities(lambda p: p["a"], {"a": 1.0}, mode="central")


def _linear_gaussian_epv(times, s_a, s_k, k0, sigma):
    """Closed form for q = a - k / k0 and y_t = a - k t + eps (a, k independent Gaussians):
    Var(q | y_t) = Var(q) - Cov(q, y_t)^2 / (Var(y_t) + sigma^2)."""
    var_q = s_a**2 + s_k**2 / k0**2
    cov = s_a**2 + s_k**2 * times / k0
    return var_q - cov**2 / (s_a**2 + s_k**2 * times**2 + sigma**2)


def test_expected_posterior_variance_matches_the_linear_gaussian_closed_form():
    """Log activity y_t = a - k t of a mono-exponential with uncertain log-amplitude a and rate
    k (1/h), and the linearised log TIA q = a - k / k0. Without noise the scan at t = 1/k0 (the
    mean life) measures q exactly; with noise the closed form's minimum moves slightly."""
    rng = np.random.default_rng(0)
    n, k0, s_a, s_k, cv = 4000, 0.05, 0.3, 0.01, 0.1
    a = np.log(100.0) + s_a * rng.standard_normal(n)
    k = k0 + s_k * rng.standard_normal(n)
    times = np.arange(2.0, 61.0, 2.0)
    pred = np.exp(a[:, None] - k[:, None] * times[None])
    q = a - k / k0
    sigma = math.sqrt(math.log1p(cv**2))
    exact = _linear_gaussian_epv(times, s_a, s_k, k0, sigma)
    t_best = times[np.argmin(exact)]
    assert abs(t_best - 1 / k0) <= 4.0  # near the mean life, 20 h
    lin = expected_posterior_variance(q, pred, cv, times_h=times, method="linear")
    np.testing.assert_allclose(lin.expected_variance, exact, rtol=0.06)
    assert lin.best_time_h == t_best
    assert lin.expected_variance.dtype == np.float64
    assert lin.current_variance == pytest.approx(s_a**2 + s_k**2 / k0**2, rel=0.05)
    imp = expected_posterior_variance(q, pred, cv, times_h=times, n_data=200, seed=1)
    np.testing.assert_allclose(imp.expected_variance, exact, rtol=0.15)
    assert abs(imp.best_time_h - t_best) <= 4.0
    assert np.all(imp.effective_sample_size > 50)
    assert np.all(imp.variance_reduction > 0) and np.all(imp.variance_reduction < 1)
    # a shared calibration factor adds its variance to the noise of a one-region scan
    cal = expected_posterior_variance(q, pred, 0.05, calibration_cv=0.0866, times_h=times,
                                      method="linear")  # fmt: skip
    sigma2 = math.log1p(0.05**2) + math.log1p(0.0866**2)
    np.testing.assert_allclose(cal.expected_variance,
                               _linear_gaussian_epv(times, s_a, s_k, k0, math.sqrt(sigma2)),
                               rtol=0.06)  # fmt: skip


ORGAN_TEMPLATE = {
    "schema": "twinjax.template/1",
    "name": "test_one_exponential",
    "title": "fast blood clearance, mono-exponential organ washout",
    "kind": "compartmental",
    "nuclide": "Lu-177",
    "references": {"test": "synthetic test model"},
    "model": {
        "kind": "compartmental",
        "compartments": ["blood", "organ", "urine"],
        "dose": "blood",
        "excreta": ["urine"],
        "transfers": [
            {"from": "blood", "to": "organ", "rate": "k_up"},
            {"from": "blood", "to": "urine", "rate": "4.0"},
            {"from": "organ", "to": "urine", "rate": "k_out"},
        ],
    },
    "parameters": {
        "k_up": {"value": 0.4, "unit": "1/h", "cv": 0.3, "source": "test"},
        "k_out": {"value": 0.03, "unit": "1/h", "cv": 0.15, "source": "test"},
    },
}


def test_next_scan_time_of_a_mono_exponential_organ_is_its_mean_life(tmp_path):
    """Blood clears in minutes, so the organ's curve is A0 exp(-k_eff t) after the first hours,
    k_eff = k_out + lambda(Lu-177), with A0 and k_eff uncertain. With precise scans the best
    single scan for the organ's TIA = A0 / k_eff is at the mean life 1 / k_eff (see the closed
    form above), about 29 h; both estimators find it, and the variance falls most there."""
    path = tmp_path / "organ.yaml"
    path.write_text(yaml.safe_dump(ORGAN_TEMPLATE))
    tpl = twinjax.load_template(path)
    patient = Patient.virtual({"ct_volume_L_organ": 0.2},
                              twinjax.Schedule.single(7400.0, ligand_nmol=57.0))  # fmt: skip
    prior = PopulationPrior.from_template(tpl)
    z = np.asarray(jax.random.normal(jax.random.key(4), (1, 3000, prior.dim), dtype=float))
    theta = {n: np.exp(prior.log_typical[i] + prior.scale_tril[i, i] * z[..., i])
             for i, n in enumerate(prior.names)}  # fmt: skip
    noise = LognormalError({"organ": 0.03})
    observed = Observed(("organ",), np.array([0.5]), np.array([700.0]))
    post = Posterior("prior", tpl.name, prior.names, {**theta, "z": z}, {}, None, observed, {},
                     prior, context=FitContext(tpl, patient, noise, {}))  # fmt: skip
    k_eff = 0.03 + twinjax.nuclide("Lu-177").decay_constant_per_h
    times = np.arange(6.0, 90.0, 3.0)
    lin = next_scan_time(post, times, target="organ", method="linear", max_draws=3000)
    imp = next_scan_time(post, times, target="organ", n_data=200, max_draws=1500, seed=2)
    assert abs(lin.best_time_h - 1 / k_eff) <= 0.15 / k_eff, lin.best_time_h
    assert abs(imp.best_time_h - 1 / k_eff) <= 0.2 / k_eff, imp.best_time_h
    assert imp.quantity == "dose_Gy of organ" and imp.rois == ("organ",)
    i = int(np.argmin(lin.expected_variance))
    assert lin.variance_reduction[i] > 0.8  # one precise scan at the mean life pins the TIA
    assert lin.variance_reduction[0] < lin.variance_reduction[i]
    np.testing.assert_allclose(imp.expected_variance, lin.expected_variance,
                               rtol=0.35, atol=0.05 * lin.current_variance)  # fmt: skip
    # dose = TIA x S(m), with the CT volume at the forecasts' soft-tissue density
    s = float(sphere_s_value("Lu-177", 0.2 * SOFT_TISSUE_KG_PER_L))
    tia = next_scan_time(
        post, times, target="organ", method="linear", max_draws=3000, quantity="tia_MBqh"
    )
    np.testing.assert_allclose(lin.expected_variance, s**2 * tia.expected_variance, rtol=1e-10)
    # bad input, before any solve
    with pytest.raises(InputError, match="after the last scan"):
        next_scan_time(post, [0.25, 10.0])
    with pytest.raises(InputError, match="strictly increasing"):
        next_scan_time(post, [10.0, 5.0])
    with pytest.raises(InputError, match="no measurement CV"):
        next_scan_time(post, times, rois=["blood"])
    with pytest.raises(InputError, match="fit context"):
        next_scan_time(object(), times)


def test_soft_tissue_density_is_the_forecasts():
    from twinjax import forecast

    assert SOFT_TISSUE_KG_PER_L == forecast.SOFT_TISSUE_KG_PER_L


def test_expected_posterior_variance_refuses_bad_arrays():
    q = np.linspace(1, 2, 20)
    with pytest.raises(InputError, match="predicted_MBq has shape"):
        expected_posterior_variance(q, np.ones((19, 3)), 0.1)
    with pytest.raises(InputError, match="> 0 MBq"):
        expected_posterior_variance(q, -np.ones((20, 3)), 0.1)
    with pytest.raises(InputError, match="cv = "):
        expected_posterior_variance(q, np.ones((20, 3, 2)), [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="method"):
        expected_posterior_variance(q, np.ones((20, 3)), 0.1, method="exact")

"""Hierarchical cohort learning: a simulated clinic with a known population (typical values and
between-patient CVs different from the template's) is recovered by `fit_cohort`; the learned
template round-trips through YAML and the posterior through netCDF; bad input fails first.

One fit (module fixture) of the small linear test template (exact matrix-exponential path) keeps
compile and sampling test-sized; the PBPK templates go through the same code (see
validation/cohort_psma.py).
"""

import arviz as az
import numpy as np
import pytest
import yaml

import twinjax
from twinjax import InputError
from twinjax.imaging import Patient
from twinjax.imaging.observe import LognormalError
from twinjax.inference import Observed, PopulationPrior
from twinjax.inference.cohort import fit_cohort

# One NUTS fit (module fixture) serves the tests of the fitted cohort: about 3 min on 2 cores.
# No per-scan calibration factors in the test (they double the latent dimension and the run time;
# validation/cohort_psma.py fits them).
NOISE = LognormalError({"kidneys": 0.12, "tumour": 0.18, "whole_body": 0.08})
TIMES = np.array([4.0, 24.0, 72.0])
NAMES = ("CL", "k_bk", "k_bt")
# The clinic's population: typical values x FACTOR of the template's (covariate-adjusted) ones,
# between-patient CVs TRUE_CV (template: CL 0.3, k_bk 0.4, k_bt 0.5).
FACTOR = {"CL": 1.4, "k_bk": 0.7, "k_bt": 1.0}
TRUE_CV = {"CL": 0.15, "k_bk": 0.6, "k_bt": 0.3}
N_RICH = 8
# The last patient is scanned once (whole body only) and sits 2 SD above the population in k_bk
# and k_bt: its data barely inform those, so partial pooling must pull it to the population.
SPARSE_ETA = {"CL": 0.0, "k_bk": 2.0, "k_bt": 2.0}


def _sigma(cv):
    return float(np.sqrt(np.log1p(cv**2)))


def _observe(tpl, theta, schedule, times, rois, rng):
    traj = twinjax.simulate(tpl.model, tpl.derive(theta), schedule, times)
    cal = np.exp(_sigma(NOISE.calibration_cv) * rng.standard_normal(len(times)))
    rows = []
    for roi in rois:
        eps = np.exp(_sigma(NOISE.cv[roi]) * rng.standard_normal(len(times)))
        y = np.asarray(traj.activity(roi)) * cal * eps
        rows += [(float(t), roi, float(v)) for t, v in zip(times, y, strict=True)]
    rows.sort()
    return Observed(
        tuple(r[1] for r in rows), np.array([r[0] for r in rows]), np.array([r[2] for r in rows])
    )


@pytest.fixture(scope="module")
def clinic(linear_template_path):
    """A simulated clinic: patients, their data and their true parameters."""
    tpl = twinjax.load_template(linear_template_path)
    rng = np.random.default_rng(20261201)
    patients, data, truth, etas = [], [], [], []
    for i in range(N_RICH + 1):
        sparse = i == N_RICH
        p = Patient.virtual(
            {"egfr_L_per_h": float(rng.uniform(3.5, 7.5))},
            twinjax.Schedule.single(float(rng.uniform(6800.0, 7800.0)), ligand_nmol=57.0),
            patient_id="sparse" if sparse else f"P{i:02d}",
        )
        base = tpl.personalise(p.covariates)
        theta = dict(base)
        for n in NAMES:
            eta = SPARSE_ETA[n] if sparse else rng.standard_normal()
            theta[n] = float(base[n]) * FACTOR[n] * np.exp(_sigma(TRUE_CV[n]) * eta)
        if sparse:
            obs = _observe(tpl, theta, p.schedule, np.array([24.0]), ("whole_body",), rng)
        else:
            obs = _observe(tpl, theta, p.schedule, TIMES, tuple(NOISE.cv), rng)
        patients.append(p)
        data.append(obs)
        truth.append({n: float(theta[n]) for n in NAMES})
        etas.append([np.log(theta[n] / (float(base[n]) * FACTOR[n])) for n in NAMES])
    # What the cohort can tell at best: the geometric-mean factor and the CV of the rich
    # patients' own (true) parameters, which differ from FACTOR and TRUE_CV by sampling error
    # (with 8 patients the SD of a log-scale SD is ~25 %).
    eta = np.array(etas[:N_RICH])
    sample = {
        n: {
            "factor": FACTOR[n] * float(np.exp(eta[:, j].mean())),
            "cv": float(np.sqrt(np.expm1(eta[:, j].std(ddof=1) ** 2))),
        }
        for j, n in enumerate(NAMES)
    }
    return tpl, patients, data, truth, sample


@pytest.fixture(scope="module")
def cohort(clinic):
    tpl, patients, data, _, _ = clinic
    return fit_cohort(
        tpl,
        patients,
        data,
        noise=NOISE,
        names=NAMES,
        num_chains=2,
        num_warmup=120,
        num_samples=120,
        chain_method="sequential",  # vectorized chains run in lockstep at the deeper tree
        seed=3,
        rtol=1e-5,
    )


def test_population_typical_values_and_cvs_are_recovered(clinic, cohort):
    tpl, sample = clinic[0], clinic[4]
    d = cohort.diagnostics
    assert d.divergences == 0 and d.ode_failures == 0, d.messages
    for n in ("mu", "omega"):
        for name in NAMES:
            assert d.rhat[f"{n}_{name}"] < 1.05, (n, name, d.rhat[f"{n}_{name}"])
    pop = cohort.population()
    mu, omega = cohort.draws("mu"), cohort.draws("omega")
    for j, name in enumerate(NAMES):
        row = pop[name]
        # The learned typical value is the template's times the learned factor exp(mu).
        typical0 = float(tpl.params[name])
        assert row["template_typical"] == pytest.approx(typical0, rel=1e-12)
        assert row["typical"] == pytest.approx(typical0 * row["factor"], rel=1e-9)
        assert row["template_cv"] == tpl.cv[name]
        # The population's truth inside the posterior (within 3 posterior SDs of the median, on
        # the log scale for the shift); the cohort's own sample values within a stated
        # tolerance: typical value within 20 %, CV within 0.15. The template's own values are
        # outside the same tolerance.
        sd_mu = float(np.std(mu[:, j]))
        assert abs(np.log(row["factor"]) - np.log(FACTOR[name])) < 3 * sd_mu, (name, row)
        assert abs(row["factor"] / sample[name]["factor"] - 1) < 0.2, (name, row, sample[name])
        sd_cv = float(np.std(np.sqrt(np.expm1(omega[:, j] ** 2))))
        assert abs(row["cv"] - TRUE_CV[name]) < 3 * sd_cv, (name, row)
        # 8 patients: the SD of a log-scale SD estimate is ~1/sqrt(2 x 7) = 0.27 from sampling
        # alone; the learned CV is within a factor exp(0.4) of the cohort's own sample CV.
        assert abs(np.log(row["cv"] / sample[name]["cv"])) < 0.4, (name, row, sample[name])
        assert row["typical_q5"] < row["typical"] < row["typical_q95"]
        assert row["cv_q5"] < row["cv"] < row["cv_q95"]
    # The data moved the population away from the template where the truth differs from it:
    # confidently for CL (CV 0.15), in the median for k_bk (CV 0.6 over 8 patients leaves the
    # typical value uncertain by ~exp(0.6 / sqrt(8)), so its 90 % interval may still reach 1).
    assert pop["CL"]["factor_q5"] > 1.15 and pop["k_bk"]["factor"] < 0.9
    assert pop["k_bk"]["cv_q5"] > tpl.cv["k_bk"] * 0.9 or pop["k_bk"]["cv"] > 0.45
    assert pop["CL"]["cv"] < tpl.cv["CL"]


def test_individual_estimates_are_shrunk_to_the_population(clinic, cohort):
    _, patients, _, truth, _ = clinic
    eta = cohort.draws("eta")  # (n, P, D)
    # Richly scanned patients: their estimates track their own truths (better than the
    # population's typical value would) ...
    for j, name in enumerate(NAMES):
        est = np.log([np.median(cohort.patient(i)[name]) for i in range(N_RICH)])
        true = np.log([t[name] for t in truth[:N_RICH]])
        rmse = float(np.sqrt(np.mean((est - true) ** 2)))
        spread = float(np.std(true))
        if name != "CL":  # CL's true spread (CV 0.15) is near the data's resolution
            assert rmse < 0.6 * spread, (name, rmse, spread)
        # ... and are shrunk: the posterior medians of eta are less spread than N(0, 1).
        assert np.std(np.median(eta[:, :N_RICH, j], axis=0)) < 1.0
    # The sparse patient (truth at eta = +2 in k_bk and k_bt, one whole-body scan): its eta
    # posterior stays wide, wider than any richly scanned patient's, and its estimate is pulled
    # back towards the population (by at least a fifth of the way).
    i = patients.index(next(p for p in patients if p.patient_id == "sparse"))
    assert cohort.patient_ids[i] == "sparse"
    for name in ("k_bk", "k_bt"):
        j = NAMES.index(name)
        e = eta[:, i, j]
        assert np.std(e) > 0.7, (name, np.std(e))
        assert np.std(e) > max(np.std(eta[:, k, j]) for k in range(N_RICH)), name
        assert np.median(e) < 0.8 * SPARSE_ETA[name], (name, np.median(e))
    # A rich patient's eta posterior is much narrower than the prior (its data inform it).
    rich_sd = np.median([np.std(eta[:, k, NAMES.index("k_bk")]) for k in range(N_RICH)])
    assert rich_sd < 0.5


def test_learned_template_is_loadable_with_the_learned_values(clinic, cohort, tmp_path):
    tpl, patients, _, _, _ = clinic
    path = tmp_path / "clinic.yaml"
    learned = cohort.to_template(path, name="test_linear_clinic")
    assert [p.name for p in tmp_path.iterdir()] == ["clinic.yaml"]  # no temp file left
    again = twinjax.load_template(path)
    assert again.name == "test_linear_clinic"
    pop = cohort.population()
    for name in NAMES:
        assert again.cv[name] == pytest.approx(pop[name]["cv"], rel=1e-5)
        assert float(again.params[name]) == pytest.approx(pop[name]["typical"], rel=1e-5)
        assert float(learned.params[name]) == pytest.approx(pop[name]["typical"], rel=1e-5)
    # Parameters not learned are unchanged; covariate formulas carry the learned shift.
    for name in ("k_kb", "k_tb", "V"):
        assert float(again.params[name]) == pytest.approx(float(tpl.params[name]), rel=1e-12)
    assert again.cv["k_kb"] == tpl.cv["k_kb"]
    cov = patients[0].covariates
    assert float(again.personalise(cov)["CL"]) == pytest.approx(
        float(tpl.personalise(cov)["CL"]) * pop["CL"]["factor"], rel=1e-5
    )
    # The learned prior of a patient is centred on the learned typical values.
    prior = PopulationPrior.from_template(again, cov, names=NAMES)
    old = PopulationPrior.from_template(tpl, cov, names=NAMES)
    shift = np.log([pop[n]["factor"] for n in NAMES])
    np.testing.assert_allclose(prior.log_typical, old.log_typical + shift, atol=1e-5)
    # Provenance: version, how many patients, data hash, prior template.
    text = path.read_text()
    raw = yaml.safe_load(text)
    ref = raw["references"]["twinjax_cohort"]
    assert twinjax.__version__ in ref
    assert f"from {len(patients)} patients" in ref
    assert cohort.provenance["data_sha256"][:16] in ref
    assert "test_linear" in ref
    assert raw["parameters"]["CL"]["source"].startswith("learned by twinjax")
    with pytest.raises(InputError, match="yaml"):
        cohort.to_template(tmp_path / "clinic.txt")


def test_netcdf_round_trip_with_provenance(clinic, cohort, tmp_path):
    path = tmp_path / "cohort.nc"
    cohort.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.nc"]
    idata = az.from_netcdf(path)
    post = idata.posterior
    assert list(post["mu"].dims) == ["chain", "draw", "parameter"]
    assert list(post["eta"].dims) == ["chain", "draw", "patient", "parameter"]
    assert list(post.coords["parameter"].values) == list(NAMES)
    assert list(post.coords["patient"].values) == list(cohort.patient_ids)
    np.testing.assert_array_equal(post["omega"].values, cohort.samples["omega"])
    np.testing.assert_array_equal(post["k_bt"].values, cohort.samples["k_bt"])
    assert int(idata.sample_stats["diverging"].sum()) == cohort.diagnostics.divergences
    for key in ("twinjax_version", "data_sha256", "template_sha256", "template"):
        assert post.attrs[key] == cohort.provenance[key]
    assert int(post.attrs["seed"]) == 3
    assert int(post.attrs["n_patients"]) == N_RICH + 1


def test_bad_input_fails_before_sampling(clinic):
    tpl, patients, data, _, _ = clinic
    kw = dict(noise=NOISE, names=NAMES, num_chains=1, num_warmup=1, num_samples=1)
    with pytest.raises(InputError, match=rf"patients \({N_RICH + 1}\) and data \({N_RICH}\)"):
        fit_cohort(tpl, patients, data[:-1], **kw)
    with pytest.raises(InputError, match="at least 2"):
        fit_cohort(tpl, patients[:1], data[:1], **kw)
    with pytest.raises(InputError, match="'k_xx' is not a parameter.*allowed: CL, V"):
        fit_cohort(tpl, patients, data, **{**kw, "names": ("CL", "k_xx")})
    with pytest.raises(InputError, match="shift_scale = -1.0; allowed: a finite value > 0"):
        fit_cohort(tpl, patients, data, shift_scale=-1.0, **kw)
    with pytest.raises(InputError, match="lkj_concentration = 0.0"):
        fit_cohort(tpl, patients, data, correlation=True, lkj_concentration=0.0, **kw)
    with pytest.raises(InputError, match="num_samples = 0"):
        fit_cohort(tpl, patients, data, **{**kw, "num_samples": 0})
    with pytest.raises(InputError, match="method = 'map'"):
        fit_cohort(tpl, patients, data, method="map", **kw)
    with pytest.raises(InputError, match=r"cv\['k_bt'\] = 5.0"):
        fit_cohort(tpl, patients, data, cv={"k_bt": 5.0}, **kw)
    bad = Observed(("liver",), np.array([24.0]), np.array([10.0]))
    with pytest.raises(InputError, match=r"patients\[3\] \(P03\).*liver"):
        fit_cohort(tpl, patients, [*data[:3], bad, *data[4:]], **kw)
    with pytest.raises(InputError, match=r"data\[1\] \(P01\): expected Observed"):
        fit_cohort(tpl, patients, [data[0], [1.0, 2.0], *data[2:]], **kw)

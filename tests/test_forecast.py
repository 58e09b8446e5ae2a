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
from twinjax.forecast import Region, Scenario, TumourGrowth, forecast
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
        "tumour": Region(
            rb.tissue("prostate_cancer"),
            mass_kg=0.02,
            kind="tumour",
            voxel_mm=2.0,
            growth=TumourGrowth(doubling_time_h=1200.0, carrying_capacity_mL=400.0),
        ),
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
    tia = fc.values["7.4 GBq"]["kidneys"]["tia_MBqh"]
    np.testing.assert_allclose(tia, post.draws("tia_kidneys")[idx], rtol=1e-3)
    # Tumour surviving fraction: the LQ survival of the draw's BED.
    tum = fc.values["7.4 GBq"]["tumour"]
    alpha = rb.tissue("prostate_cancer").alpha_per_Gy
    np.testing.assert_allclose(tum["surviving_fraction"], np.exp(-alpha * tum["bed_Gy"]))


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


def test_voxel_forecast_dvh_and_bed_scaling(setup, result):
    """Voxel doses of a uniform 20 mL ball: the mean is the region's dose; the rim is colder
    than the core, where the dose is the local one, so core / mean = 1 / (the sphere model's
    absorbed fraction of the electrons) (an independent calculation, `_spheres`); and a voxel's
    BED is that of the region's dose-rate curve scaled by the voxel's relative dose (checked
    against `bed_from_model` with S x r)."""
    from twinjax.dosimetry import sphere_absorbed_fractions

    fc, post = result
    tpl = setup[0]
    sc = "2 x 7.4 GBq, 6 weeks"
    rel = fc.voxels[sc]["tumour"]["dose"]
    assert rel.mean() == pytest.approx(1.0, rel=1e-12)
    af = sphere_absorbed_fractions("Lu-177", 0.02)
    phi = float((af["beta"] + af["electrons"]) / af["emitted_nonpenetrating"])
    assert rel.max() == pytest.approx(1.0 / phi, rel=2e-3)
    assert rel.min() < 0.97
    q = fc.values[sc]["tumour"]
    assert np.all(q["dose_min_Gy"] < q["dose_d90_Gy"])
    assert np.all(q["dose_d90_Gy"] < q["dose_d50_Gy"])
    assert np.all(q["dose_d50_Gy"] <= q["dose_d2_Gy"])
    # The coldest voxel of draw 0 as its own region: S x r_min in the model's ODE.
    base = post.prior.base
    theta = {n: post.draws(n)[0] for n in post.names}
    params = tpl.derive({**base, **theta})
    s = float(sphere_s_value("Lu-177", 0.02))
    sched = twinjax.Schedule.cycles(7400.0, 2, 1008.0, ligand_nmol=57.0)
    cold = rb.bed_from_model(tpl.model, params, sched, {"tumour": s * rel.min()},
                             {"tumour": rb.tissue("prostate_cancer")}, rtol=1e-8, atol=1e-11)  # fmt: skip
    assert float(q["bed_min_Gy"][0]) == pytest.approx(float(cold["tumour"]["bed_Gy"]), rel=1e-5)
    # DVH band: per draw, the DVH of that draw's voxel doses (`dose_volume_histogram`).
    from twinjax.dosimetry import dose_volume_histogram

    x = np.linspace(0.0, q["dose_d2_Gy"].max() * 1.05, 30)
    dvh = fc.dvh(sc, "tumour", bins=x)
    per_draw = np.stack([
        dose_volume_histogram(d * rel, np.ones(rel.size, bool), bins=x)[1] for d in q["dose_Gy"]
    ])  # fmt: skip
    np.testing.assert_allclose(dvh["median"], np.median(per_draw, axis=0), atol=1e-12)
    assert dvh["median"][0] == 1.0 and dvh["median"][-1] == 0.0
    assert np.all(np.diff(dvh["median"]) <= 0)
    assert np.all(dvh["lower"] <= dvh["median"]) and np.all(dvh["median"] <= dvh["upper"])
    with pytest.raises(InputError, match="has no voxel forecast"):
        fc.dvh(sc, "kidneys")


def test_relative_voxel_dose_lu177_smooths_heterogeneous_uptake_more_than_ac225():
    """The review's finding (Hong et al. [58]): 177Lu's mm electron range spreads dose across
    uneven uptake, 225Ac's 50-90 um alphas keep it where the ligand sits."""
    from twinjax.forecast import _relative_voxel_dose

    rng = np.random.default_rng(0)
    uptake = rng.gamma(1.0, size=(12, 12, 12)) + 1e-3  # strongly uneven, 0.25 mm voxels
    cv = {}
    for nuc in ("Lu-177", "Ac-225"):
        reg = Region(rb.tissue("prostate_cancer"), kind="tumour", voxel_mm=0.25, uptake_map=uptake)
        r = _relative_voxel_dose(reg, 1.0, nuc, 1.0)
        assert r.shape == (12**3,) and r.mean() == pytest.approx(1.0)
        cv[nuc] = r.std()
    assert cv["Lu-177"] < 0.5 * cv["Ac-225"]
    assert cv["Ac-225"] > 0.7 * uptake.std() / uptake.mean()


def test_tumour_response_curves_and_pfs(result):
    fc, _ = result
    one, two = "7.4 GBq", "14.8 GBq"
    c = fc.curves[one]["tumour"]
    assert c["volume_mL"].shape == (40, fc.times_h.size)
    np.testing.assert_allclose(c["volume_mL"][:, 0], 20.0)  # 0.02 kg at unit density
    assert np.all(c["volume_mL"].min(axis=1) < 20.0)  # every draw shrinks
    # Twice the activity kills more: never an earlier progression, draw by draw.
    assert np.all(fc.values[two]["tumour"]["ttp_h"] >= fc.values[one]["tumour"]["ttp_h"])
    pfs = fc.progression_free_survival(one, "tumour")["pfs"]
    assert pfs[0] == 1.0 and np.all(np.diff(pfs) <= 0)
    ttp = fc.values[one]["tumour"]["ttp_h"]
    assert pfs[-1] == pytest.approx(np.mean(ttp > fc.times_h[-1]))
    band = fc.volume_curves(one, "tumour")
    assert np.all(band["volume_mL"]["lower"] <= band["volume_mL"]["upper"])


def test_photon_cross_dose_between_placed_regions(setup, result):
    """Kidneys and tumour 8 cm apart: each receives the other's TIA x the photon cross S-value
    of 8 cm on top of the self-dose of the forecast without positions (same draws)."""
    from twinjax.dosimetry import photon_cross_s_value

    tpl, patient, post = setup
    fc0, _ = result
    regions = {
        "kidneys": Region(rb.tissue("kidney"), centroid_mm=(0.0, 0.0, 0.0)),
        "tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.02, kind="tumour",
                         centroid_mm=(0.0, 80.0, 0.0)),
    }  # fmt: skip
    fc = forecast(post, tpl, [Scenario("7.4 GBq", patient.schedule)], regions, max_draws=40,
                  rtol=1e-8, atol=1e-11)  # fmt: skip
    x = float(photon_cross_s_value("Lu-177", 8.0))
    a, b = fc.values["7.4 GBq"], fc0.values["7.4 GBq"]
    for t, src in (("kidneys", "tumour"), ("tumour", "kidneys")):
        np.testing.assert_allclose(a[t]["tia_MBqh"], b[t]["tia_MBqh"], rtol=1e-9)
        np.testing.assert_allclose(
            a[t]["dose_Gy"], b[t]["dose_Gy"] + x * b[src]["tia_MBqh"], rtol=1e-7
        )
        assert np.all(a[t]["bed_Gy"] > b[t]["bed_Gy"])
    with pytest.raises(InputError, match="centroid_mm"):
        Region(rb.tissue("kidney"), centroid_mm=(0.0, np.nan, 0.0))


def test_uncertainty_budget_of_a_forecast(result):
    fc, _ = result
    b = fc.uncertainty_budget("7.4 GBq", "kidneys", mass_cv=0.1, calibration_cv=0.05)
    tia = fc.values["7.4 GBq"]["kidneys"]["tia_MBqh"]
    assert b["variance"]["kinetics"] == pytest.approx(np.var(np.log(tia), ddof=1))
    assert sum(b["share"].values()) == pytest.approx(1.0)
    assert b["dose_Gy"] == pytest.approx(np.median(fc.values["7.4 GBq"]["kidneys"]["dose_Gy"]))


def test_masses_from_ct_volumes(setup):
    from twinjax.forecast import SOFT_TISSUE_KG_PER_L, _covariates

    _, _, post = setup
    assert _covariates(post) == {"egfr_L_per_h": 5.4}
    # A patient with a CT kidney volume of 0.2 L: the kidney mass is 0.2 x 1.04 kg.
    post.context.patient.covariates["ct_volume_L_kidneys"] = 0.2
    try:
        tpl = setup[0]
        sched = setup[1].schedule
        fc = forecast(post, tpl, [Scenario("a", sched)], {"kidneys": Region((2.6, 2.8))},
                      max_draws=3)  # fmt: skip
        ref = forecast(post, tpl, [Scenario("a", sched)],
                       {"kidneys": Region((2.6, 2.8), mass_kg=0.2 * SOFT_TISSUE_KG_PER_L)},
                       max_draws=3)  # fmt: skip
        np.testing.assert_allclose(
            fc.values["a"]["kidneys"]["dose_Gy"], ref.values["a"]["kidneys"]["dose_Gy"], rtol=1e-12
        )
    finally:
        del post.context.patient.covariates["ct_volume_L_kidneys"]


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


SCENARIOS_YAML = """
schema: twinjax.scenarios/1
regions:
  kidneys: {tissue: kidney}
  tumour:
    tissue: prostate_cancer
    mass_g: 20
    kind: tumour
    voxel_mm: 2
    growth: {doubling_time_h: 1200, carrying_capacity_mL: 400}
scenarios:
  - {name: standard, activity_MBq: 7400, ligand_nmol: 57}
  - {name: double, activity_MBq: 14800, ligand_nmol: 57}
thresholds:
  kidneys: {bed_Gy: 5.0}
"""


def test_cli_writes_json_and_png(setup, result, linear_template_path, tmp_path):
    from typer.testing import CliRunner

    from twinjax.cli import app

    post = setup[2]
    post.save(tmp_path / "posterior.nc")
    (tmp_path / "scenarios.yaml").write_text(SCENARIOS_YAML)
    args = ["forecast", str(tmp_path / "posterior.nc"), str(tmp_path / "scenarios.yaml"),
            "--template", str(linear_template_path), "--draws", "40", "--out", str(tmp_path / "out")]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = __import__("json").loads((tmp_path / "out" / "forecast.json").read_text())
    fc, _ = result  # the same 40 draws of the same posterior, in memory
    mem = fc.summary(0.9)["7.4 GBq"]["kidneys"]["bed_Gy"]
    assert doc["summary"]["standard"]["kidneys"]["bed_Gy"]["median"] == pytest.approx(
        mem["median"], rel=1e-5
    )
    p = doc["exceedance"]["kidneys"]["bed_Gy"]["probability"]
    assert p["standard"] <= p["double"]
    assert doc["provenance"]["posterior_template"] == "test_linear"
    # Voxel DVH and the uncertainty budget as in memory; a response curve per scenario.
    dvh = fc.dvh("7.4 GBq", "tumour")
    np.testing.assert_allclose(doc["dvh"]["standard"]["tumour"]["median"], dvh["median"], atol=1e-4)
    budget = doc["uncertainty_budget"]["standard"]["kidneys"]
    assert budget["share"]["kinetics"] == pytest.approx(
        fc.uncertainty_budget("7.4 GBq", "kidneys")["share"]["kinetics"], rel=1e-3
    )
    resp = doc["response"]["double"]["tumour"]
    assert len(resp["pfs"]) == len(resp["times_h"]) and resp["volume_mL"]["median"][0] == 20.0
    for png in ("forecast.png", "exceedance.png", "comparison.png", "dvh.png", "response.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("tissue: kidney", "tissue: kidnee"), "tissue 'kidnee' is not in the library"),
        (("activity_MBq: 7400", "activity_MBq: -7400"), "activity_MBq"),
        (("  kidneys: {tissue", "  liver: {tissue"), "region 'liver' is not in template"),
        (("schema: twinjax.scenarios/1", "schema: twinjax.scenarios/9"), "schema"),
        (
            ("kidneys: {bed_Gy: 5.0}", "kidneys: {bed_Gy_total: 5.0}"),
            "thresholds.kidneys.bed_Gy_total",
        ),
        (("voxel_mm: 2", "voxel_mm: 2\n    uptake_map: none.npy"), "uptake_map = 'none.npy'"),
        (
            (
                "kidneys: {tissue: kidney}",
                "kidneys: {tissue: kidney, growth: {doubling_time_h: 9}}",
            ),
            "regions.kidneys: Region.growth is for kind = 'tumour'",
        ),
        (("doubling_time_h: 1200", "doubling_time_h: -1"), "doubling_time_h"),
    ],
)
def test_cli_rejects_bad_scenario_files(setup, linear_template_path, tmp_path, change, message):
    from twinjax.forecast_cli import run_forecast

    _, _, post = setup
    post.save(tmp_path / "posterior.nc")
    (tmp_path / "s.yaml").write_text(SCENARIOS_YAML.replace(*change))
    with pytest.raises(InputError, match=message):
        run_forecast(tmp_path / "posterior.nc", tmp_path / "s.yaml", tmp_path / "out",
                     template=linear_template_path)  # fmt: skip
    assert not (tmp_path / "out" / "forecast.json").exists()


def test_load_posterior_errors(tmp_path):
    from twinjax.inference import load_posterior

    with pytest.raises(InputError, match="does not exist"):
        load_posterior(tmp_path / "none.nc")
    (tmp_path / "bad.nc").write_bytes(b"not netcdf")
    with pytest.raises(InputError, match="not a twinjax posterior netCDF file"):
        load_posterior(tmp_path / "bad.nc")

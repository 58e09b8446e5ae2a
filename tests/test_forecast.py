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
  tumour: {tissue: prostate_cancer, mass_g: 20, kind: tumour}
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
    for png in ("forecast.png", "exceedance.png"):
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

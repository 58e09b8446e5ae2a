"""`twinjax calibrate`: manifest + CSV -> posterior.nc, summary.json, fit.png."""

import csv
import json

import arviz as az
import jax
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import twinjax
from twinjax.cli import app
from twinjax.imaging.observe import LognormalError

runner = CliRunner()


@pytest.fixture(scope="module")
def clinic(tmp_path_factory, linear_template_path):
    """A patient simulated from the linear test template, written the way a clinic would."""
    d = tmp_path_factory.mktemp("clinic")
    manifest = {
        "patient_id": "T01",
        "sex": "male",
        "weight_kg": 80.0,
        "height_cm": 178.0,
        "hematocrit": 0.42,
        "egfr_mL_min": 90.0,
        "ct_volumes_mL": {"kidneys": 300.0},
        "administrations": [{"time_h": 0.0, "nuclide": "Lu-177", "activity_MBq": 7400.0}],
    }
    (d / "T01.yaml").write_text(yaml.safe_dump(manifest))
    tpl = twinjax.load_template(linear_template_path)
    patient = twinjax.load_patient(d / "T01.yaml")
    params = tpl.personalise(patient.covariates)
    times = np.array([4.0, 24.0, 48.0, 96.0])
    traj = twinjax.simulate(tpl.model, params, patient.schedule, times)
    noise = LognormalError({"kidneys": 0.1, "tumour": 0.1, "whole_body": 0.1, "spleen": 0.1})
    with (d / "tacs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "roi", "time_h", "activity_MBq"])
        for i, roi in enumerate(("kidneys", "tumour", "whole_body")):
            y = noise.sample(jax.random.key(i), roi, traj.activity(roi))
            w.writerows(["T01", roi, t, float(v)] for t, v in zip(times, y, strict=True))
        w.writerows(["T01", "spleen", t, 1.0] for t in times)  # not a region of the template
    return d, tpl


@pytest.mark.parametrize("method", ["laplace", "nuts"])
def test_calibrate_writes_posterior_summary_and_plot(
    clinic, linear_template_path, method, tmp_path
):
    d, tpl = clinic
    out = tmp_path / method
    args = [
        "calibrate",
        str(d / "T01.yaml"),
        "--data",
        str(d / "tacs.csv"),
        "--template",
        str(linear_template_path),
        "--method",
        method,
        "--cv",
        "0.1",
        "--chains",
        "1",
        "--warmup",
        "150",
        "--samples",
        "150",
        "--out",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "spleen" in res.output  # reported as not used
    summary = json.loads((out / "summary.json").read_text())
    assert summary["patient"] == "T01" and summary["method"] == method
    truth = float(tpl.personalise({"egfr_L_per_h": 90.0 * 0.06})["k_bk"])
    k = summary["parameters"]["k_bk"]
    assert k["q5"] < k["q50"] < k["q95"]
    assert abs(np.log(k["q50"] / truth)) < 0.3  # simulated at the typical values
    idata = az.from_netcdf(out / "posterior.nc")
    assert "posterior" in idata.groups()
    assert (out / "fit.png").read_bytes()[:4] == b"\x89PNG"
    if method == "nuts":
        assert summary["diagnostics"]["divergences"] == 0


def test_calibrate_bad_data_fails_before_fitting(clinic, linear_template_path, tmp_path):
    d, _ = clinic
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,roi,time_h,activity_MBq\nT01,kidneys,4,nan\n")
    res = runner.invoke(
        app,
        [
            "calibrate",
            str(d / "T01.yaml"),
            "--data",
            str(bad),
            "--template",
            str(linear_template_path),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2
    assert "activity_MBq" in res.output and "nan" in res.output.lower()
    assert not any((tmp_path / "o").iterdir())

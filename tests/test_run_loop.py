"""The main job end to end in a small configuration: `twinjax run STUDY.yaml` from the CLI and
`run_loop` from Python (linear test template, Laplace, few draws). Checks the recommendations
against the constraints, the truth's outcome against an independent solve, the outputs and
the saved twin."""

import json

import jax
import pytest
import yaml
from typer.testing import CliRunner

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb
from twinjax.cli import app
from twinjax.dosimetry import sphere_s_value
from twinjax.inference import PopulationPrior
from twinjax.loop import load_twin_study
from twinjax.twin import DigitalTwin


def _study(template_path) -> dict:
    return {
        "schema": "twinjax.twin-study/1",
        "name": "small",
        "template": str(template_path),
        "patient": {
            "patient_id": "synthetic-test",
            "covariates": {"egfr_L_per_h": 5.4, "ct_volume_L_tumour": 0.03},
            "truth_seed": 4,
        },
        "regions": {
            "kidneys": {"tissue": "kidney"},
            # mass from the CT volume (a covariate), as the twin's own forecasts use it
            "tumour": {"tissue": "prostate_cancer", "kind": "tumour"},
        },
        "imaging": {
            "rois": ["kidneys", "tumour", "whole_body"],
            "cv": {"kidneys": 0.12, "tumour": 0.15, "whole_body": 0.08},
            "calibration_cv": 0.05,
            "scan_times_h": [4.0, 24.0, 96.0],
            "noise_seed": 3,
        },
        "treatment": {
            "first_activity_MBq": 7400.0,
            "ligand_nmol": 57.0,
            "interval_h": 1008.0,
            "n_cycles": 3,
            "decisions": 2,
        },
        "library": {"activities_MBq": [5000.0, 9000.0]},
        "objective": {"region": "tumour", "quantity": "bed_Gy"},
        "constraints": [
            {"region": "kidneys", "quantity": "bed_Gy", "threshold": 6.0, "max_probability": 0.1}
        ],
        "inference": {"method": "laplace", "num_samples": 40, "seed": 1},
        "forecast": {"max_draws": 12},
        "optimise": {"steps": 20, "bounds_MBq": [1000.0, 12000.0]},
    }


@pytest.fixture(scope="module")
def run(linear_template_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(_study(linear_template_path)))
    out = folder / "out"
    res = CliRunner().invoke(app, ["run", str(study), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return study, out, json.loads((out / "summary.json").read_text())


def test_outputs_are_written(run):
    _, out, summary = run
    names = {p.name for p in out.iterdir()}
    assert {
        "summary.json",
        "report.md",
        "twin.twin",
        "posterior_after_cycle1.nc",
        "posterior_after_cycle2.nc",
        "tac_fit_cycle1.png",
        "tac_fit_cycle2.png",
        "dose_bed.png",
        "scenarios.png",
        "narrowing.png",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert summary["synthetic_patient"] is True
    assert [d["after_cycle"] for d in summary["decisions"]] == [1, 2]
    assert [row["information"] for row in summary["narrowing"]] == [
        "prior",
        "after cycle 1",
        "after cycle 2",
    ]
    report = (out / "report.md").read_text()
    assert "Synthetic patient" in report and "Recommended cycle 2" in report


def test_recommendations_respect_the_constraints(run):
    _, _, summary = run
    for d in summary["decisions"]:
        plan, rec, rank = d["optimised"], d["recommended"], d["ranking"]
        assert 1000.0 <= rec["activity_MBq"] <= 12000.0
        label = "kidneys bed_Gy > 6"
        if plan["feasible"]:
            assert plan["violation"][label] <= 0.1
            assert rec["activity_MBq"] == pytest.approx(round(plan["activity_MBq"], -1))
        # Ranking: feasible exactly when the violation probability is within the limit, and
        # P(best) sums to 1 over the feasible scenarios (0 when none is).
        for s in rank["scenarios"]:
            assert rank["feasible"][s] == (rank["violation"][s][label] <= 0.1)
        total = sum(rank["p_best"].values())
        assert total == pytest.approx(1.0 if any(rank["feasible"].values()) else 0.0)
    # Cycle 2 was given at the first recommendation: the second decision's scenarios start
    # with it (checked by the twin) and the posterior saw scans of both cycles.
    first = summary["decisions"][0]["recommended"]
    assert summary["decisions"][1]["scans_h"][0] == pytest.approx(first["time_h"] + 4.0)


def test_truth_outcome_matches_an_independent_solve(run, linear_template_path):
    _, _, summary = run
    tpl = twinjax.load_template(linear_template_path)
    prior = PopulationPrior.from_template(tpl, {"egfr_L_per_h": 5.4, "ct_volume_L_tumour": 0.03})
    truth = prior.theta(jax.random.normal(jax.random.key(4), (prior.dim,)))
    for k, v in summary["truth"].items():
        assert v == pytest.approx(float(truth[k]), rel=1e-12)
    d = summary["decisions"][-1]
    first = summary["decisions"][0]["recommended"]["activity_MBq"]
    a = d["recommended"]["activity_MBq"]
    schedule = twinjax.Schedule.cycles([7400.0, first, a], 3, 1008.0, ligand_nmol=57.0)
    params = tpl.derive({**prior.base, **truth})
    s = {
        "kidneys": float(sphere_s_value("Lu-177", twinjax.dosimetry.reference_mass_kg("kidneys"))),
        "tumour": float(sphere_s_value("Lu-177", 0.03 * 1.05)),
    }
    tissues = {"kidneys": rb.tissue("kidney"), "tumour": rb.tissue("prostate_cancer")}
    ref = rb.bed_from_model(tpl.model, params, schedule, s, tissues)
    got = d["truth_of_recommended_course"]
    for r in ("kidneys", "tumour"):
        assert got[r]["bed_Gy"]["median"] == pytest.approx(float(ref[r]["bed_Gy"]), rel=1e-5)


def test_saved_twin_holds_the_whole_history(run, linear_template_path):
    _, out, _ = run
    twin = DigitalTwin.load(out / "twin.twin", template=linear_template_path)
    actions = [h["action"] for h in twin.history]
    assert actions == [
        "create",
        "assimilate",
        "compare",
        "optimise",
        "administer",
        "assimilate",
        "compare",
        "optimise",
    ]
    assert len(twin.administrations) == 2
    assert twin.posterior is not None and len(set(twin.observed.time_h)) == 6


def test_bad_study_fails_before_any_computation(linear_template_path, tmp_path):
    bad = _study(linear_template_path)
    bad["imaging"]["scan_times_h"] = [4.0, 2000.0]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match=r"scan_times_h ends at 2000 h.*interval_h = 1008"):
        load_twin_study(p)
    bad = _study(linear_template_path)
    bad["regions"]["tumour"]["tissue"] = "brain"
    p.write_text(yaml.safe_dump(bad))
    res = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "regions.tumour.tissue = 'brain'; allowed:" in " ".join(res.output.split())
    assert not (tmp_path / "o" / "summary.json").exists()

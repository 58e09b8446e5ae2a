"""The command line: `twinjax simulate` on a small study, `templates`, `nuclide`, bad input."""

import csv
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from twinjax.cli import app

runner = CliRunner()


@pytest.fixture
def small_study(tmp_path):
    study = {
        "schema": "twinjax.study/1",
        "name": "small",
        "template": "psma617_poppk_siebinga2023",
        "schedule": {
            "cycles": {
                "n_cycles": 2,
                "interval_h": 336.0,
                "activity_MBq": 6000.0,
                "ligand_nmol": 77.8,
            }
        },
        "times": {"start_h": 0.0, "stop_h": 672.0, "n": 57},
        "rois": ["kidneys", "salivary_glands", "tumour", "whole_body"],
    }
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(study))
    return p


def test_simulate_writes_tacs_plot_and_summary(small_study, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["simulate", str(small_study), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "tacs.csv").open()))
    assert len(rows) == 57 * 4
    assert {r["roi"] for r in rows} == {"kidneys", "salivary_glands", "tumour", "whole_body"}
    kid = np.array([float(r["activity_MBq"]) for r in rows if r["roi"] == "kidneys"])
    assert kid[0] == 0.0 and kid.max() > 10.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["administered_MBq"] == [6000.0, 6000.0]
    assert summary["solver_success"] is True
    # TIA in the summary = last cumulated value + tail; it exceeds what was cumulated by 672 h
    cum = [float(r["cumulated_MBqh"]) for r in rows if r["roi"] == "kidneys"][-1]
    assert summary["tia_MBqh"]["kidneys"] > cum
    assert (out / "tacs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_simulate_bad_study_fails_before_writing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "schema": "twinjax.study/1",
                "name": "x",
                "template": "psma617_poppk_siebinga2023",
                "schedule": {"administrations": [{"activity_MBq": -1.0}]},
                "times": [1.0, 2.0],
            }
        )
    )
    out = tmp_path / "out"
    res = runner.invoke(app, ["simulate", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    assert "activity_MBq = -1.0" in res.output
    assert not any(out.iterdir())


def test_simulate_typo_in_study(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "schema": "twinjax.study/1",
                "name": "x",
                "template": "psma617_poppk_siebinga2023",
                "schedule": {"cycles": {"n_cycle": 2, "interval_h": 10.0, "activity_MBq": 10.0}},
                "times": [1.0, 2.0],
            }
        )
    )
    res = runner.invoke(app, ["simulate", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "n_cycle" in res.output and "allowed" in res.output


def test_nuclide_and_templates_commands():
    res = runner.invoke(app, ["nuclide", "225Ac"])
    assert res.exit_code == 0 and "Bi-213" in res.output and "27.48" in res.output
    res = runner.invoke(app, ["nuclide", "Lu-178"])
    assert res.exit_code == 2 and "Lu-177" in res.output
    res = runner.invoke(app, ["templates"])
    assert res.exit_code == 0 and "psma617_pbpk" in res.output


def test_help_is_readable():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "simulate" in res.output and "digital twins" in res.output

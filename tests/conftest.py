"""Test configuration: float64 everywhere and strict dtype promotion, as in production."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax

import twinjax  # noqa: F401  (enables x64)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


import pytest  # noqa: E402
import yaml  # noqa: E402

# A small linear template (exact matrix-exponential path): test-sized compile and sampling times
# for the inference machinery, which the PBPK templates share.
LINEAR_TEMPLATE = {
    "schema": "twinjax.template/1",
    "name": "test_linear",
    "title": "three-compartment test model",
    "kind": "compartmental",
    "nuclide": "Lu-177",
    "references": {"test": "synthetic test model"},
    "model": {
        "kind": "compartmental",
        "compartments": ["blood", "kidneys", "tumour", "urine"],
        "dose": "blood",
        "excreta": ["urine"],
        "transfers": [
            {"from": "blood", "to": "kidneys", "rate": "k_bk"},
            {"from": "kidneys", "to": "blood", "rate": "k_kb"},
            {"from": "blood", "to": "tumour", "rate": "k_bt"},
            {"from": "tumour", "to": "blood", "rate": "k_tb"},
            {"from": "blood", "to": "urine", "rate": "CL / V"},
        ],
        "groups": {"whole_body": ["blood", "kidneys", "tumour"]},
    },
    "parameters": {
        "k_bk": {"value": 0.05, "unit": "1/h", "cv": 0.4, "source": "test"},
        "k_kb": {"value": 0.03, "unit": "1/h", "cv": 0.4, "source": "test"},
        "k_bt": {"value": 0.02, "unit": "1/h", "cv": 0.5, "source": "test"},
        "k_tb": {"value": 0.01, "unit": "1/h", "source": "test"},
        "CL": {"value": 3.0, "unit": "L/h", "cv": 0.3, "source": "test"},
        "V": {"value": 10.0, "unit": "L", "source": "test"},
    },
    "covariates": {"CL": "egfr_L_per_h * 0.5"},
}


@pytest.fixture(scope="session")
def linear_template_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("templates") / "test_linear.yaml"
    p.write_text(yaml.safe_dump(LINEAR_TEMPLATE))
    return p


# A small NONLINEAR template (receptor binding with finite capacity: the stiff Kvaerno5 path of the
# PBPK templates, at a size that samples in seconds).
BINDING_TEMPLATE = {
    "schema": "twinjax.template/1",
    "name": "test_binding",
    "title": "two saturable organs, test model",
    "kind": "compartmental",
    "nuclide": "Lu-177",
    "references": {"test": "synthetic test model"},
    "model": {
        "kind": "compartmental",
        "compartments": [
            "blood",
            "kidneys_free",
            "kidneys_bound",
            "tumour_free",
            "tumour_bound",
            "urine",
        ],
        "dose": "blood",
        "excreta": ["urine"],
        "transfers": [
            {"from": "blood", "to": "kidneys_free", "rate": "0.5"},
            {"from": "kidneys_free", "to": "blood", "rate": "2.0"},
            {"from": "blood", "to": "tumour_free", "rate": "0.2"},
            {"from": "tumour_free", "to": "blood", "rate": "1.0"},
            {"from": "kidneys_bound", "to": "kidneys_free", "rate": "k_rel"},
            {"from": "tumour_bound", "to": "tumour_free", "rate": "0.005"},
            {"from": "blood", "to": "urine", "rate": "CL / 5.0"},
        ],
        "bindings": [
            {
                "free": "kidneys_free",
                "bound": "kidneys_bound",
                "k_on": 0.5,
                "capacity": "R_kidneys",
                "volume": 0.1,
            },
            {
                "free": "tumour_free",
                "bound": "tumour_bound",
                "k_on": 0.5,
                "capacity": "R_tumour",
                "volume": 0.05,
            },
        ],
        "groups": {
            "kidneys": ["kidneys_free", "kidneys_bound"],
            "tumour": ["tumour_free", "tumour_bound"],
            "whole_body": ["blood", "kidneys_free", "kidneys_bound", "tumour_free", "tumour_bound"],
        },
    },
    "parameters": {
        "CL": {"value": 4.0, "unit": "L/h", "cv": 0.3, "source": "test"},
        "R_kidneys": {"value": 20.0, "unit": "nmol", "cv": 0.4, "source": "test"},
        "R_tumour": {"value": 10.0, "unit": "nmol", "cv": 0.5, "source": "test"},
        "k_rel": {"value": 0.02, "unit": "1/h", "source": "test"},
    },
}


@pytest.fixture(scope="session")
def binding_template_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("templates") / "test_binding.yaml"
    p.write_text(yaml.safe_dump(BINDING_TEMPLATE))
    return p

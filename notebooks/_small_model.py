"""The small model of the notebooks' small mode (``TWINJAX_NOTEBOOK_SMALL=1``): a
three-compartment Lu-177 radioligand template (blood, kidneys, tumour, urine) written as a plain
dict of the template YAML schema, with illustrative values of the order of PSMA-617 kinetics.
Shared by notebooks 01-03; any YAML of the same schema is a custom model."""

SMALL_TEMPLATE = {
    "schema": "twinjax.template/1",
    "name": "lu177_kidney_tumour_linear",
    "title": "three-compartment Lu-177 radioligand model (blood, kidneys, tumour)",
    "kind": "compartmental",
    "nuclide": "Lu-177",
    "references": {"notebook": "illustrative values of the order of PSMA-617 kinetics"},
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
        "k_bk": {"value": 0.05, "unit": "1/h", "cv": 0.4, "source": "illustrative"},
        "k_kb": {"value": 0.03, "unit": "1/h", "cv": 0.4, "source": "illustrative"},
        "k_bt": {"value": 0.02, "unit": "1/h", "cv": 0.5, "source": "illustrative"},
        "k_tb": {"value": 0.01, "unit": "1/h", "source": "illustrative"},
        "CL": {"value": 3.0, "unit": "L/h", "cv": 0.3, "source": "illustrative"},
        "V": {"value": 10.0, "unit": "L", "source": "illustrative"},
    },
    "covariates": {"CL": "egfr_L_per_h * 0.5"},
}

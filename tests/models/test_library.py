"""The published model library: every template loads, is cited, and reproduces its source."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import twinjax
from twinjax import InputError, Schedule, load_template, simulate


@pytest.mark.parametrize("name", twinjax.list_templates())
def test_every_template_loads_and_cites_every_value(name):
    t = load_template(name)
    refs = set(t.spec.references)
    assert refs, "a template needs references"
    for pname, p in t.spec.parameters.items():
        assert p.source.strip(), f"{name}.{pname} has no source"
        cited = any(r in p.source for r in refs) or "patient covariate" in p.source
        cited = cited or "twinjax assumption" in p.source
        assert cited, f"{name}.{pname}: source {p.source!r} names none of {sorted(refs)}"
    if t.spec.model is not None:
        assert set(t.model.parameter_names) <= set(t.params)


def test_siebinga2023_salivary_saturation_matches_published_doses():
    """Siebinga et al. 2023 (CPT Pharmacometrics Syst Pharmacol 12:1060), typical patient:
    salivary gland dose 2.06 Gy at 3 GBq and 2.53 Gy at 6 GBq (ratio 1.23, sub-proportional by
    saturation); tumour 8.10 -> 16.2 Gy (proportional). Doses are proportional to TIA for a fixed
    S-value, so the TIA ratios must reproduce these ratios."""
    t = load_template("psma617_poppk_siebinga2023")
    sa = float(t.params["SA_ref"])
    tia = {}
    for a in (3000.0, 6000.0):
        tr = simulate(t.model, t.params, Schedule.single(a, ligand_nmol=a / sa), jnp.array([1.0]))
        tia[a] = (float(tr.tia("salivary_glands")), float(tr.tia("tumour")))
    assert tia[6000.0][0] / tia[3000.0][0] == pytest.approx(2.53 / 2.06, rel=0.03)
    assert tia[6000.0][1] / tia[3000.0][1] == pytest.approx(16.2 / 8.10, rel=0.01)


def test_hadotatate_receptor_occupancy_in_published_range():
    """Siebinga et al. 2023 (EJNMMI Phys 10:48) report maximal receptor occupancy after
    [177Lu]Lu-HA-DOTATATE of 39-55 % (spleen), 71-97 % (kidney), 78-100 % (tumours)."""
    t = load_template("hadotatate_lu177_siebinga2023")
    times = jnp.linspace(0.1, 48.0, 200)
    tr = simulate(t.model, t.params, t.default_schedule(), times)
    p = t.params
    for organ, cap, lo, hi in [
        ("spleen", "spleen", 0.39, 0.55),
        ("kidneys", "kidneys", 0.71, 0.97),
        ("tumour", "tumour", 0.78, 1.0),
    ]:
        occ = tr.ligand_nmol[:, t.model.index(organ)] / (p[f"Bmax_{cap}"] * p[f"V_{cap}"])
        assert lo - 0.1 <= float(jnp.max(occ)) <= hi + 0.05, organ


def test_sample_params_lognormal_statistics():
    t = load_template("psma617_poppk_siebinga2023")
    draws = t.sample_params(jax.random.key(0), 20000)
    for k, cv in t.cv.items():
        x = np.log(np.asarray(draws[k]))
        sigma = np.sqrt(np.log1p(cv**2))
        assert np.median(np.asarray(draws[k])) == pytest.approx(float(t.params[k]), rel=0.03)
        assert x.std() == pytest.approx(sigma, rel=0.03)
    assert np.all(np.asarray(draws["V1"]) == float(t.params["V1"]))  # no CV: shared
    # derived parameters follow their inputs
    np.testing.assert_allclose(draws["Bmax_SG"], draws["Bmax_SG_MBq"] / draws["SA_ref"])


def test_unit_conversion_at_the_edge():
    t = load_template("fdg_2tcm")
    assert float(t.params["K1"]) == pytest.approx(0.095 * 60.0)  # 1/min -> 1/h
    s = load_template("psma617_poppk_siebinga2023")
    assert float(s.params["CRCL"]) == pytest.approx(87.9 * 0.06)  # mL/min -> L/h
    assert float(s.params["TV"]) == pytest.approx(1.73e-3)  # mL -> L


def _write(tmp_path, data, name="t.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _base_template():
    src = twinjax.models.library._templates_dir() / "psma617_poppk_siebinga2023.yaml"
    return yaml.safe_load(src.read_text())


def test_yaml_typo_in_field_name_is_named(tmp_path):
    data = _base_template()
    data["parameters"]["k10"]["valeu"] = data["parameters"]["k10"].pop("value")
    with pytest.raises(InputError, match=r"parameters.k10.valeu: unknown field 'valeu'.*allowed"):
        load_template(_write(tmp_path, data))


def test_template_unknown_unit_and_bad_cv(tmp_path):
    data = _base_template()
    data["parameters"]["V1"]["unit"] = "gallon"
    with pytest.raises(InputError, match="unit 'gallon' is not known"):
        load_template(_write(tmp_path, data))
    data = _base_template()
    data["parameters"]["k10"]["cv"] = -0.2
    with pytest.raises(InputError, match="cv = -0.2"):
        load_template(_write(tmp_path, data, "b.yaml"))


def test_template_missing_parameter_and_bad_compartment(tmp_path):
    data = _base_template()
    del data["parameters"]["k31"]
    with pytest.raises(InputError, match=r"\['k31'\] are used by the model but not given"):
        load_template(_write(tmp_path, data))
    data = _base_template()
    data["model"]["transfers"][0]["to"] = "urin"
    with pytest.raises(InputError, match="'urin' is not a compartment.*closest: urine"):
        load_template(_write(tmp_path, data, "c.yaml"))


def test_template_non_positive_volume(tmp_path):
    data = _base_template()
    data["parameters"]["V1"]["value"] = 0.0
    with pytest.raises(InputError, match="V1"):
        load_template(_write(tmp_path, data))


def test_unknown_template_name():
    with pytest.raises(InputError, match="closest: psma617_poppk_siebinga2023"):
        load_template("psma617_poppk_siebinga")


def test_corrupt_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("schema: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        load_template(p)


def test_reduced_psma_template_is_generated_from_the_full_one():
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "make_psma_variants.py"
    spec = importlib.util.spec_from_file_location("make_reduced", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.OUT.read_text() == mod.render()
    assert mod.OUT_AC.read_text() == mod.render_ac225()


def test_ac225_template_chain_tia():
    """The Ac-225 variant: 4 alpha decays per Ac-225 decay along the chain; daughters' TIAs are
    the parent's times the decays per parent decay (Bi-213 97.9 % to Po-213, ICRP-107)."""
    t = load_template("psma617_ac225_pbpk")
    assert t.nuclide == "Ac-225"
    tr = simulate(t.model, t.params, t.default_schedule(), jnp.array([24.0]))
    chain = tr.chain_tia("kidneys")
    assert set(chain) == set(twinjax.nuclide("Ac-225").chain.names)
    assert float(chain["Fr-221"]) == pytest.approx(float(tr.tia("kidneys")), rel=1e-12)
    assert float(chain["Po-213"] / chain["Bi-213"]) == pytest.approx(0.979, abs=1e-3)
    # the 10-day Ac-225 label keeps more activity in slowly releasing organs than Lu-177 does
    lu = load_template("psma617_pbpk")
    tr_lu = simulate(lu.model, lu.params, lu.default_schedule(), jnp.array([24.0]))
    per_mbq_ac = float(tr.tia("tumour1")) / 8.0
    per_mbq_lu = float(tr_lu.tia("tumour1")) / 7400.0
    assert per_mbq_ac > per_mbq_lu

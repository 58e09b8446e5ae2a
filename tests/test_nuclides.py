"""Radionuclide data and decay-chain solutions.

Reference values: ICRP Publication 107 (2008), Nuclear Decay Data for Dosimetric Calculations,
Ann ICRP 38(3), as distributed by radioactivedecay 0.6.1 and icrp107-database 0.0.3.
"""

import json
from importlib import resources

import jax
import numpy as np
import pytest

import twinjax
from twinjax import InputError, nuclide


def test_shipped_table_matches_its_sources():
    """The shipped table is exactly what scripts/generate_nuclide_data.py makes from the sources."""
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "generate_nuclide_data.py"
    spec = importlib.util.spec_from_file_location("gen", script)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = gen.build_table()
    shipped = json.loads(resources.files("twinjax").joinpath("data", "nuclides.json").read_text())
    assert shipped == json.loads(json.dumps(fresh))
    lines = json.loads(resources.files("twinjax").joinpath("data", "emissions.json").read_text())
    assert lines == json.loads(json.dumps(gen.build_emissions(fresh["nuclides"])))
    # The lines carry the energies of nuclides.json (up to the dropped weak lines).
    for name, em in lines["nuclides"].items():
        total = sum(e * y for k in ("beta_branches", "electrons", "photons", "alphas", "recoils")
                    for e, y in em[k])  # fmt: skip
        assert total + em["dropped_MeV"] == pytest.approx(
            sum(fresh["nuclides"][name]["energy_MeV"].values()), rel=1e-9
        ), name


@pytest.mark.parametrize(
    ("name", "half_life_h"),
    [
        ("Lu-177", 6.647 * 24),
        ("Ac-225", 10.0 * 24),
        ("F-18", 109.77 / 60),
        ("Ga-68", 67.71 / 60),
        ("Tc-99m", 6.015),
        ("Y-90", 64.1),
        ("I-131", 8.0207 * 24),
        ("Tb-161", 6.906 * 24),
        ("Pb-212", 10.64),
        ("Cu-64", 12.7),
        ("Bi-213", 45.59 / 60),
    ],
)
def test_half_lives_icrp107(name, half_life_h):
    n = nuclide(name)
    assert n.half_life_h == pytest.approx(half_life_h, rel=1e-4)
    assert n.decay_constant_per_h == pytest.approx(np.log(2) / half_life_h, rel=1e-4)


def test_lu177_energies_and_specific_activity():
    lu = nuclide("Lu-177")
    # ICRP-107 Lu-177: beta mean 0.1333 MeV/decay, total electrons 0.1479 MeV/decay (issue 4 cites
    # 147.9 keV), photons (gamma+X) 0.0351 MeV/decay.
    assert lu.energy_MeV("beta-") == pytest.approx(0.13327, rel=1e-3)
    assert lu.nonpenetrating_energy_MeV == pytest.approx(0.1479, rel=1e-3)
    assert lu.penetrating_energy_MeV == pytest.approx(0.0351, rel=1e-2)
    # 7.4 GBq of Lu-177 is 10.18 nmol (the synthetic-clinic README: 10.18 nmol labelled per 7.4 GBq)
    assert 7400.0 / lu.mbq_per_nmol == pytest.approx(10.18, rel=1e-3)


def test_bi213_branching():
    bi = nuclide("Bi-213")
    br = {d.name: d.branching for d in bi.daughters}
    assert br["Po-213"] == pytest.approx(0.979, abs=1e-3)
    assert br["Tl-209"] == pytest.approx(0.021, abs=1e-3)


def test_ac225_chain_alpha_energy_in_equilibrium():
    chain = nuclide("Ac-225").chain
    assert chain.names[:4] == ("Ac-225", "Fr-221", "At-217", "Bi-213")
    assert set(chain.names) == {
        "Ac-225",
        "Fr-221",
        "At-217",
        "Bi-213",
        "Po-213",
        "Tl-209",
        "Pb-209",
    }
    # four alphas per decay: 5.79 + 6.30 + 7.07 + 8.38 (x0.979) + 5.87 (x0.021) ~ 27.5 MeV
    assert chain.energy_per_parent_decay_MeV("alpha") == pytest.approx(27.5, abs=0.1)
    y = dict(zip(chain.names, chain.decays_per_parent_decay, strict=True))
    assert y["Po-213"] + y["Tl-209"] == pytest.approx(y["Bi-213"], rel=1e-12)
    assert y["Pb-209"] == pytest.approx(y["Bi-213"], rel=1e-12)


def test_pb212_chain_branches():
    chain = nuclide("Pb-212").chain
    y = dict(zip(chain.names, chain.decays_per_parent_decay, strict=True))
    assert y["Po-212"] == pytest.approx(0.6406, abs=1e-4)
    assert y["Tl-208"] == pytest.approx(0.3594, abs=1e-4)
    # one alpha per Pb-212 decay, either from Bi-212 (35.9 %) or Po-212 (64.1 %): ~7.8 MeV
    assert chain.energy_per_parent_decay_MeV("alpha") == pytest.approx(7.8, abs=0.05)


@pytest.mark.parametrize("name", ["Ac-225", "Pb-212", "I-131", "Ra-223", "Tc-99m", "Lu-177"])
def test_bateman_equals_matrix_exponential(name):
    chain = nuclide(name).chain
    n0 = np.zeros(len(chain.members))
    n0[0] = 1.0
    n0[-1] = 0.3 if len(n0) > 1 else 1.0  # some initial daughter inventory too
    t = np.array([0.0, 1e-3, 0.01, 1.0, 10.0, 100.0, 1000.0, 5000.0])
    b = np.asarray(chain.bateman(n0, t))
    e = np.asarray(chain.expm_solution(n0, t))
    # 1e-10 relative, with an absolute floor of 1e-15 of the initial inventory for members that
    # are (nearly) empty at t ~ 0, where both sides are cancellation-limited.
    np.testing.assert_allclose(b, e, rtol=1e-10, atol=1e-15)
    # and both against scipy's independent expm (Al-Mohy & Higham) at late times
    import scipy.linalg

    ref = np.stack([scipy.linalg.expm(chain.matrix_per_h * ti) @ n0 for ti in t[3:]])
    np.testing.assert_allclose(e[3:], ref, rtol=1e-9, atol=1e-15)


def test_chain_conserves_atoms_plus_decays():
    chain = nuclide("Ac-225").chain
    n0 = np.zeros(len(chain.members))
    n0[0] = 1.0
    t = np.array([10.0, 240.0, 2400.0])
    n = np.asarray(chain.bateman(n0, t))
    # parent decays exactly exponentially
    np.testing.assert_allclose(n[:, 0], np.exp(-chain.decay_constants_per_h[0] * t), rtol=1e-13)
    # transient equilibrium: Bi-213 activity / Ac-225 activity -> lam_Bi/(lam_Bi - lam_Ac) * bf
    lam = chain.decay_constants_per_h
    i = chain.names.index("Bi-213")
    ratio = lam[i] * n[1, i] / (lam[0] * n[1, 0])
    expected = 0.99988 * np.prod([lam[k] / (lam[k] - lam[0]) for k in (1, 2, 3)])
    assert ratio == pytest.approx(expected, rel=1e-6)


def test_chain_solutions_are_jittable_float64():
    chain = nuclide("Ac-225").chain
    n0 = np.eye(len(chain.members))[0]
    f = jax.jit(lambda t: chain.bateman(n0, t))
    out = f(np.array([1.0, 2.0]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, chain.bateman(n0, np.array([1.0, 2.0])), rtol=1e-14)


@pytest.mark.parametrize("alias", ["Lu-177", "Lu177", "177Lu", "lu-177", "LU177"])
def test_name_forms(alias):
    assert nuclide(alias).name == "Lu-177"


def test_metastable_names():
    assert nuclide("99mTc").name == "Tc-99m"


def test_unknown_nuclide_lists_closest():
    with pytest.raises(InputError, match=r"'Lu-178'.*closest known: Lu-177"):
        nuclide("Lu-178")
    with pytest.raises(InputError, match="not known"):
        nuclide("Unobtainium")


def test_unknown_radiation_type():
    with pytest.raises(InputError, match="radiation type 'beta'"):
        nuclide("Y-90").energy_MeV("beta")


def test_every_public_nuclide_in_table():
    for n in (
        "Lu-177",
        "Tb-161",
        "Y-90",
        "I-131",
        "Ac-225",
        "Fr-221",
        "At-217",
        "Bi-213",
        "Po-213",
        "Tl-209",
        "Pb-209",
        "Pb-212",
        "F-18",
        "Ga-68",
        "Cu-64",
        "Tc-99m",
    ):
        assert n in twinjax.known_nuclides()

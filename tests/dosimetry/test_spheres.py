"""Sphere absorbed fractions and S-values: published Monte Carlo values, energy balance, the
closed forms against quadrature, organ self-dose, gradients and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import twinjax
from twinjax import InputError
from twinjax.dosimetry import (
    organ_doses,
    reference_mass_kg,
    sphere_absorbed_fractions,
    sphere_s_value,
)
from twinjax.dosimetry._spheres import _photon_fraction, _straight_fraction

# Lu-177 self-dose S-values of soft-tissue spheres (density 1.03 g/cm^3, radii 1-60 mm), Monte
# Carlo, as shipped by PyTheranostics (qurit/PyTheranostics, pytheranostics/data/s-values/
# spheres.json, commit 4addf86c, composition 100 % soft tissue): mass (g), S (Gy / (Bq s)).
LU177_SPHERES = [
    (4.31e-03, 4.54e-09),
    (1.46e-02, 1.44e-09),
    (3.45e-02, 6.29e-10),
    (1.16e-01, 1.93e-10),
    (2.76e-01, 8.26e-11),
    (5.39e-01, 4.27e-11),
    (9.32e-01, 2.49e-11),
    (2.21e00, 1.06e-11),
    (4.31e00, 5.46e-12),
    (1.46e01, 1.63e-12),
    (3.45e01, 6.93e-13),
    (1.16e02, 2.07e-13),
    (2.76e02, 8.81e-14),
    (5.39e02, 4.54e-14),
    (9.32e02, 2.65e-14),
]
GY_PER_MBQH = 1e6 * 3600.0  # (Gy / (Bq s)) -> Gy / (MBq h)
MEV_TO_J = twinjax.units.J_PER_MEV


def test_lu177_spheres_match_monte_carlo_within_5_percent():
    mass_kg = np.array([m for m, _ in LU177_SPHERES]) * 1e-3
    ref = np.array([s for _, s in LU177_SPHERES]) * GY_PER_MBQH
    s = np.asarray(sphere_s_value("Lu-177", mass_kg, density_kg_per_L=1.03))
    ratio = s / ref
    print(np.round(ratio, 4))
    assert np.all(np.abs(ratio - 1.0) < 0.05)
    assert np.all(np.abs(ratio - 1.0) < 0.02)  # what the model achieves (1.3 % worst)


def test_kidney_self_dose_is_local_electrons_plus_photons():
    # Lu-177 in a 310 g kidney (ICRP 89 male): 147.9 keV of electrons per decay (ICRP-107),
    # almost all absorbed, plus a few per cent from 35.1 keV of photons.
    m = reference_mass_kg("kidneys")
    assert m == 0.310
    f = sphere_absorbed_fractions("Lu-177", m)
    assert float(f["emitted_nonpenetrating"]) == pytest.approx(0.1479, abs=5e-5)
    assert float(f["emitted_penetrating"]) == pytest.approx(0.0351, abs=5e-5)
    electrons = float(f["beta"] + f["electrons"])
    assert 0.995 < electrons / float(f["emitted_nonpenetrating"]) <= 1.0
    assert 0.05 < float(f["photons"]) / float(f["emitted_penetrating"]) < 0.15
    s = float(sphere_s_value("Lu-177", m))
    local = 0.1479 * MEV_TO_J * 3.6e9 / m  # Gy/(MBq h) with 147.9 keV deposited locally
    assert 1.0 < s / local < 1.05


def test_energy_balance_and_limits():
    masses = jnp.logspace(-9, 7, 33)  # 1 ug .. 10^4 t (photons need metres of water)
    for name in ("Lu-177", "Y-90", "I-131", "Tb-161", "Ac-225"):
        f = sphere_absorbed_fractions(name, masses)
        absorbed_np = f["beta"] + f["electrons"] + f["alphas"] + f["recoils"]
        assert np.all(np.asarray(absorbed_np) <= float(f["emitted_nonpenetrating"]) * (1 + 1e-12))
        assert np.all(np.asarray(f["photons"]) <= float(f["emitted_penetrating"]) * (1 + 1e-12))
        # Absorbed energy grows with the sphere.
        assert np.all(np.diff(np.asarray(absorbed_np + f["photons"])) >= -1e-15), name
        # 10^4 t: everything is absorbed (photons to 5 %: mean free paths of ~30 cm).
        assert float(absorbed_np[-1]) == pytest.approx(float(f["emitted_nonpenetrating"]), rel=1e-3)
        if float(f["emitted_penetrating"]) > 0:
            assert float(f["photons"][-1]) > 0.95 * float(f["emitted_penetrating"]), name
            assert float(f["photons"][0]) < 1e-2 * float(f["emitted_penetrating"]), name
    # Ac-225 in equilibrium: alpha energy of the chain (ICRP-107: about 27.6 MeV per Ac-225
    # decay), self-absorbed above a milligram (ranges 40-90 um).
    f = sphere_absorbed_fractions("Ac-225", 1e-3)
    chain = twinjax.DecayChain.from_parent(twinjax.nuclide("Ac-225"))
    alpha = sum(
        w * twinjax.nuclide(n).energy_MeV("alpha")
        for n, w in zip(chain.names, chain.decays_per_parent_decay, strict=True)
    )
    assert float(f["alphas"]) == pytest.approx(alpha, rel=0.01)
    parent_only = sphere_absorbed_fractions("Ac-225", 1e-3, daughters="none")
    assert float(parent_only["alphas"]) == pytest.approx(
        twinjax.nuclide("Ac-225").energy_MeV("alpha"), rel=0.01
    )
    # Bi-213 and its progeny redistribute: keep Fr-221 and At-217 only.
    kept = sphere_absorbed_fractions("Ac-225", 1e-3, daughters=["Fr-221", "At-217"])
    assert float(parent_only["alphas"]) < float(kept["alphas"]) < float(f["alphas"])


def test_closed_forms_against_quadrature():
    def g(s, r):
        return 1 - 3 * s / (4 * r) + s**3 / (16 * r**3) if s <= 2 * r else 0.0

    for r, mu in ((0.1, 0.03), (1.0, 0.3), (5.0, 0.09), (0.3, 20.0)):
        ref = quad(lambda x, r=r, mu=mu: mu * math.exp(-mu * x) * g(x, r), 0.0, 2 * r)[0]
        assert float(_photon_fraction(jnp.asarray(r), mu)) == pytest.approx(ref, rel=1e-10)
    for r, rng in ((0.1, 0.05), (0.1, 0.5), (1.0, 1.0)):
        ref = quad(lambda s, r=r: g(s, r), 0.0, min(rng, 2 * r))[0] / rng
        assert float(_straight_fraction(jnp.asarray(r), rng)) == pytest.approx(ref, rel=1e-12)


def test_density_scaling_gradient_and_vmap():
    # The fractions depend on rho R only: a sphere of mass m at density 2 absorbs what a sphere
    # of mass 2^(-1/2)... equal rho R: m2 = m1 (rho1 / rho2)^2.
    m1 = 0.01
    a = sphere_absorbed_fractions("Lu-177", m1, density_kg_per_L=1.0)
    b = sphere_absorbed_fractions("Lu-177", m1 / 4.0, density_kg_per_L=2.0)
    for k in ("beta", "electrons", "photons"):
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-12)
    f = jax.jit(lambda m: sphere_s_value("Lu-177", m))
    m = 2e-3
    fd = (float(f(m * (1 + 1e-6))) - float(f(m * (1 - 1e-6)))) / (2e-6 * m)
    assert float(jax.grad(f)(m)) == pytest.approx(fd, rel=1e-5)
    ms = jnp.array([1e-5, 1e-3, 0.3])
    np.testing.assert_allclose(jax.vmap(f)(ms), [float(f(x)) for x in ms], rtol=1e-13)
    assert f(m).dtype == jnp.float64


def test_organ_doses():
    tia = {"kidneys": 7400.0 * 20.0, "tumour": jnp.array([1e5, 2e5])}
    d = organ_doses("Lu-177", tia, {"tumour": 0.05})
    assert float(d["kidneys"]) == pytest.approx(
        7400.0 * 20.0 * float(sphere_s_value("Lu-177", 0.310)), rel=1e-14
    )
    assert d["tumour"].shape == (2,)
    female = organ_doses("Lu-177", {"kidneys": 1e5}, sex="female")
    assert float(female["kidneys"]) > float(organ_doses("Lu-177", {"kidneys": 1e5})["kidneys"])
    # RBE-weighted Ac-225 dose: the alpha part times 5.
    ac = organ_doses("Ac-225", {"kidneys": 100.0}, rbe_alpha=5.0)["kidneys"]
    assert float(ac) > 4.5 * float(organ_doses("Ac-225", {"kidneys": 100.0})["kidneys"])


def test_bad_input():
    with pytest.raises(InputError, match=r"mass_kg = -1.0; allowed: finite and > 0"):
        sphere_s_value("Lu-177", -1.0)
    with pytest.raises(InputError, match="mass_kg = .*nan"):
        sphere_s_value("Lu-177", jnp.array([0.1, float("nan")]))
    with pytest.raises(InputError, match="Lu-178"):
        sphere_s_value("Lu-178", 0.1)
    with pytest.raises(InputError, match=r"daughters names \['Po-210'\]"):
        sphere_s_value("Ac-225", 0.1, daughters=["Po-210"])
    with pytest.raises(InputError, match="region 'tumour' needs mass_kg"):
        organ_doses("Lu-177", {"tumour": 1.0})
    with pytest.raises(InputError, match=r"tia_MBqh\['kidneys'\] = -5.0"):
        organ_doses("Lu-177", {"kidneys": -5.0})
    with pytest.raises(InputError, match="did you mean kidneys"):
        reference_mass_kg("kidney")
    with pytest.raises(InputError, match="no reference mass for sex = 'female'"):
        reference_mass_kg("prostate", "female")


def test_photon_cross_dose():
    from twinjax.dosimetry import photon_cross_s_value

    # The point kernel deposits all photon energy somewhere: integral of S(r) 4 pi r^2 rho dr
    # over space (kg) equals the emitted photon energy per MBq h.
    r = np.geomspace(1e-4, 1e4, 20001)
    s = np.asarray(photon_cross_s_value("Lu-177", r))
    mass_per_cm = 4 * np.pi * r**2 * 1e-3  # kg per cm of radius at 1 kg/L
    total = np.trapezoid(s * mass_per_cm, r)
    emitted = float(sphere_absorbed_fractions("Lu-177", 1.0)["emitted_penetrating"])
    assert total == pytest.approx(emitted * MEV_TO_J * 3.6e9, rel=1e-3)
    assert float(photon_cross_s_value("Y-90", 10.0)) < 1e-3 * float(
        photon_cross_s_value("I-131", 10.0)
    )
    # organ_doses adds TIA_source x S_cross to the target.
    tia = {"kidneys": 1e5, "liver": 4e5}
    d = organ_doses("Lu-177", tia, distances_cm={"kidneys": {"liver": 12.0}})
    self_only = organ_doses("Lu-177", tia)
    assert float(d["kidneys"] - self_only["kidneys"]) == pytest.approx(
        4e5 * float(photon_cross_s_value("Lu-177", 12.0)), rel=1e-12
    )
    assert float(d["liver"]) == float(self_only["liver"])
    with pytest.raises(InputError, match="names source 'spleen'"):
        organ_doses("Lu-177", tia, distances_cm={"kidneys": {"spleen": 5.0}})
    with pytest.raises(InputError, match=r"distance_cm = \[0.0\]"):
        photon_cross_s_value("Lu-177", np.array([0.0]))

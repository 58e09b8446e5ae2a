"""Tandem 177Lu + 225Ac schedules: both labels in one ODE.

- BED of the summed RBE-weighted dose rate equals the closed form of the labels' exponential
  dose-rate curves (linear model, eigen-decomposition), Lea-Catcheside cross term included, and
  exceeds the sum of the single-label BEDs by exactly that cross term.
- Receptor competition (saturable binding model): each label's trajectory equals a single-label
  simulation in which the other label's ligand is cold ligand, and every label sees the same
  total ligand.
- Forecasts of tandem scenarios equal `bed_from_model` per draw; the scenario library builds
  tandem options and continues a 177Lu history with 225Ac cycles as one Tandem.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError, Schedule, Tandem
from twinjax import radiobiology as rb
from twinjax.decision import scenario_library
from twinjax.dosimetry import sphere_s_value
from twinjax.forecast import Region, Scenario, forecast
from twinjax.imaging import Patient
from twinjax.inference import Observed, fit

S_LU, S_AC = 3e-4, 2e-2  # Gy/(MBq h): self-dose S-values of a small organ
RBE_AC = 5.0
TISSUE = (2.6, 2.8)  # alpha/beta (Gy), T_rep (h)


@pytest.fixture(scope="module")
def linear(linear_template_path):
    return twinjax.load_template(linear_template_path)


@pytest.fixture(scope="module")
def binding(binding_template_path):
    return twinjax.load_template(binding_template_path)


def _curves(tpl, sched, region, s, weight):
    """A label's dose rate in `region` of a linear model as exponentials (one per
    administration), from the eigen-decomposition of its transfer matrix."""
    params = {k: jnp.asarray(v) for k, v in tpl.params.items()}
    n = tpl.model.n_compartments
    m = np.asarray(tpl.model.transfer_matrix(params)) - sched.decay_constant_per_h * np.eye(n)
    w, v = np.linalg.eig(m)
    c = np.zeros(n)
    c[np.asarray(tpl.model.group(region))] = 1.0
    out = []
    for t0, hot in zip(np.asarray(sched.time_h), np.asarray(sched.hot_nmol), strict=True):
        x0 = np.asarray(tpl.model.dose_vector()) * hot
        amps = np.real((c @ v) * np.linalg.solve(v, x0)) * s * weight * sched.mbq_per_nmol
        out.append(rb.ExponentialDoseRate(amps, -np.real(w), start_h=t0))
    return out


def test_tandem_bed_equals_the_closed_form_with_the_cross_term(linear):
    lu = Schedule.cycles(7400.0, 2, 1008.0, ligand_nmol=57.0)
    ac = Schedule.single(6.0, nuclide="Ac-225", time_h=24.0)  # a day after the first 177Lu
    both = Tandem((lu, ac))
    s_vals = {"Lu-177": {"kidneys": S_LU}, "Ac-225": {"kidneys": S_AC}}
    out = rb.bed_from_model(
        linear.model, linear.params, both, s_vals, {"kidneys": TISSUE},
        rbe={"Lu-177": 1.0, "Ac-225": RBE_AC}, rtol=1e-10, atol=1e-14,
    )["kidneys"]  # fmt: skip
    c_lu = _curves(linear, lu, "kidneys", S_LU, 1.0)
    c_ac = _curves(linear, ac, "kidneys", S_AC, RBE_AC)
    # Closed form of the summed weighted dose rate: every pair of terms, across labels too.
    assert float(out["bed_Gy"]) == pytest.approx(float(rb.bed(c_lu + c_ac, *TISSUE)), rel=1e-9)
    d_lu = float(rb.absorbed_dose(c_lu))
    d_ac_w = float(rb.absorbed_dose(c_ac))
    assert float(out["weighted_dose_Gy"]) == pytest.approx(d_lu + d_ac_w, rel=1e-9)
    assert float(out["dose_Gy"]) == pytest.approx(d_lu + d_ac_w / RBE_AC, rel=1e-9)
    # Separate BEDs miss the cross term, which is positive and is exactly the difference.
    separate = float(rb.bed(c_lu, *TISSUE)) + float(rb.bed(c_ac, *TISSUE))
    cross = float(out["bed_Gy"]) - separate
    assert cross > 1e-3 * float(out["bed_Gy"])
    g_pair = float(rb.protraction_factor(c_lu + c_ac, TISSUE[1])) * (d_lu + d_ac_w) ** 2
    g_lu = float(rb.protraction_factor(c_lu, TISSUE[1])) * d_lu**2
    g_ac = float(rb.protraction_factor(c_ac, TISSUE[1])) * d_ac_w**2
    assert cross == pytest.approx((g_pair - g_lu - g_ac) / TISSUE[0], rel=1e-8)
    # Each label's TIA equals its own single-label simulation (linear: no competition).
    for sched in (lu, ac):
        tr = twinjax.simulate(linear.model, linear.params, sched, jnp.array([1.0]))
        assert float(out["tia_MBqh"][sched.nuclide]) == pytest.approx(
            float(tr.tia("kidneys")), rel=1e-9
        )


def test_labels_compete_for_receptors(binding):
    # Both labels given together twice; the 225Ac label brings 60 nmol of ligand each time.
    lu = Schedule.cycles(7400.0, 2, 1008.0, ligand_nmol=20.0)
    ac = Schedule.cycles(8.0, 2, 1008.0, nuclide="Ac-225", ligand_nmol=60.0)
    both = Tandem((lu, ac))
    times = jnp.array([2.0, 24.0, 200.0, 1010.0, 1100.0])
    kw = {"rtol": 1e-9, "atol": 1e-12}
    out = twinjax.simulate_tandem(binding.model, binding.params, both, times, **kw)
    # The other label's ligand (labelled or not) is, for this label, cold ligand.
    for me, other in ((lu, ac), (ac, lu)):
        other_ligand = other.hot_nmol + other.cold_nmol
        alone = Schedule.from_administrations(
            [
                twinjax.Administration(float(t), float(a), me.nuclide, float(h + c + o))
                for t, a, h, c, o in zip(me.time_h, me.activity_MBq, me.hot_nmol, me.cold_nmol,
                                         other_ligand, strict=True)
            ]
        )  # fmt: skip
        # The tandem integrates 5 half-lives of the longest-lived label before its TIA tail.
        tail = 5.0 * me.decay_constant_per_h / ac.decay_constant_per_h
        ref = twinjax.simulate(binding.model, binding.params, alone, times, tail_half_lives=tail,
                               **kw)  # fmt: skip
        got = out[me.nuclide]
        np.testing.assert_allclose(got.hot_nmol, ref.hot_nmol, rtol=2e-6, atol=1e-10)
        assert float(got.tia("kidneys")) == pytest.approx(float(ref.tia("kidneys")), rel=2e-6)
    np.testing.assert_allclose(out["Lu-177"].ligand_nmol, out["Ac-225"].ligand_nmol, rtol=1e-12)
    # Competition is real: without the 225Ac ligand the kidneys take up more 177Lu.
    lu_alone = twinjax.simulate(binding.model, binding.params, lu, times, **kw)
    assert float(out["Lu-177"].tia("kidneys")) < 0.97 * float(lu_alone.tia("kidneys"))


def test_tandem_rejects_bad_input(linear):
    lu = Schedule.single(7400.0)
    with pytest.raises(InputError, match="allowed: two or more Schedules"):
        Tandem((lu,))
    with pytest.raises(InputError, match="nuclides \\['Lu-177', 'Lu-177'\\] repeat"):
        Tandem((lu, Schedule.single(6000.0)))
    both = Tandem((lu, Schedule.single(5.0, nuclide="Ac-225")))
    with pytest.raises(InputError, match="allowed: nuclide -> value for each label"):
        rb.bed_from_model(linear.model, linear.params, both, {"kidneys": S_LU},
                          {"kidneys": TISSUE})  # fmt: skip
    with pytest.raises(InputError, match="same regions for every label"):
        rb.bed_from_model(
            linear.model, linear.params, both,
            {"Lu-177": {"kidneys": S_LU}, "Ac-225": {"tumour": S_AC}}, {"kidneys": TISSUE},
        )  # fmt: skip


# ---------------------------------------------------------------------- forecasts, library
@pytest.fixture(scope="module")
def posterior(linear):
    patient = Patient.virtual({"egfr_L_per_h": 5.4}, Schedule.single(7400.0, ligand_nmol=57.0))
    times = np.array([4.0, 24.0, 96.0])
    traj = twinjax.simulate(linear.model, linear.params, patient.schedule, times)
    rows = [(r, t, float(v)) for r in ("kidneys", "tumour")
            for t, v in zip(times, np.asarray(traj.activity(r)), strict=True)]  # fmt: skip
    obs = Observed(tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
                   np.array([r[2] for r in rows]))  # fmt: skip
    noise = twinjax.LognormalError({"kidneys": 0.12, "tumour": 0.18})
    post = fit(linear, patient, obs, noise=noise, method="laplace", num_samples=20, seed=3)
    return patient, post


def test_tandem_forecast_equals_bed_from_model_per_draw(linear, posterior):
    patient, post = posterior
    regions = {
        "kidneys": Region(rb.tissue("kidney")),
        "tumour": Region(rb.tissue("prostate_cancer"), mass_kg=0.02, kind="tumour"),
    }
    lib = scenario_library(
        history=patient.schedule, next_time_h=1008.0, n_cycles=(1,),
        nuclides=("Lu-177", "Ac-225", "tandem"),
        activities_MBq={"Lu-177": (6000.0,), "Ac-225": (4.0,), "tandem": ((6000.0, 4.0),)},
        include_standard_of_care=False,
    )  # fmt: skip
    names = [s.name for s in lib]
    assert names == ["Lu-177 6.0 GBq x1 q6w", "Ac-225 4 MBq x1 q6w",
                     "tandem Lu-177 6.0 GBq + Ac-225 4 MBq x1 q6w"]  # fmt: skip
    # A 177Lu history continued with 225Ac is one Tandem; the tandem option has both labels.
    assert isinstance(lib[1].schedule, Tandem) and isinstance(lib[2].schedule, Tandem)
    np.testing.assert_allclose(lib[2].schedule.label("Lu-177").time_h, [0.0, 1008.0])
    np.testing.assert_allclose(lib[2].schedule.label("Ac-225").activity_MBq, [4.0], rtol=1e-12)
    fc = forecast(post, linear, lib, regions, max_draws=6, rtol=1e-10, atol=1e-13)
    t = fc.values[names[2]]["tumour"]
    assert fc.nuclides[names[2]] == "Lu-177+Ac-225"
    # Per draw: the forecast equals bed_from_model of the Tandem with RBE-weighted S-values.
    masses = fc.masses_kg
    s_w = {nuc: {r: float(sphere_s_value(nuc, masses[r], rbe_alpha=5.0)) for r in regions}
           for nuc in ("Lu-177", "Ac-225")}  # fmt: skip
    idx = np.linspace(0, len(post.draws("tia_kidneys")) - 1, 6).round().astype(int)
    from twinjax.forecast import _base, _thinned_draws

    _, theta = _thinned_draws(post, 6)
    base = _base(post)
    for d in (0, 5):
        params = linear.derive({**base, **{k: v[d] for k, v in theta.items()}})
        ref = rb.bed_from_model(linear.model, params, lib[2].schedule, s_w,
                                {r: spec.tissue for r, spec in regions.items()},
                                rtol=1e-10, atol=1e-13)  # fmt: skip
        assert t["bed_Gy"][d] == pytest.approx(float(ref["tumour"]["bed_Gy"]), rel=1e-8)
    assert len(idx) == 6
    # Linear kinetics: the tandem's physical dose is the sum of the labels' doses, but its BED
    # exceeds the sum of the single-label BEDs' increments over the history (cross terms).
    dose = {n: fc.values[n]["kidneys"]["dose_Gy"] for n in names}
    hist = forecast(post, linear, [Scenario("given", patient.schedule)], regions, max_draws=6,
                    rtol=1e-10, atol=1e-13).values["given"]["kidneys"]  # fmt: skip
    np.testing.assert_allclose(dose[names[2]], dose[names[0]] + dose[names[1]] - hist["dose_Gy"],
                               rtol=1e-8)  # fmt: skip
    bed = {n: fc.values[n]["kidneys"]["bed_Gy"] for n in names}
    assert np.all(bed[names[2]] > bed[names[0]] + bed[names[1]] - hist["bed_Gy"])
    assert "tia_MBqh_Ac-225" in t and "tia_MBqh" not in t
    with pytest.raises(InputError, match="tandem"):
        fc.uncertainty_budget(names[2], "kidneys")

"""BED from a model's own trajectory (repair integrals in the model's ODE) against the closed
form of its exponential solution, S x TIA from `simulate`, and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax import radiobiology as rb

S = 3e-4  # Gy/(MBq h)
TISSUE = (2.6, 2.8)  # alpha/beta (Gy), T_rep (h)


@pytest.fixture(scope="module")
def linear(linear_template_path):
    return twinjax.load_template(linear_template_path)


def _exponential_curves(tpl, sched, region):
    """The region's dose rate of a linear model as sums of exponentials (one per cycle), from
    the eigen-decomposition of its transfer matrix: an independent closed form."""
    params = {k: jnp.asarray(v) for k, v in tpl.params.items()}
    m = np.asarray(tpl.model.transfer_matrix(params)) - sched.decay_constant_per_h * np.eye(
        tpl.model.n_compartments
    )
    w, v = np.linalg.eig(m)
    c = np.zeros(tpl.model.n_compartments)
    c[np.asarray(tpl.model.group(region))] = 1.0
    curves = []
    for t0, hot in zip(np.asarray(sched.time_h), np.asarray(sched.hot_nmol), strict=True):
        x0 = np.asarray(tpl.model.dose_vector()) * hot
        amps = np.real((c @ v) * (np.linalg.solve(v, x0))) * S * sched.mbq_per_nmol
        curves.append(rb.ExponentialDoseRate(amps, -np.real(w), start_h=t0))
    return curves


def test_linear_model_equals_the_closed_form(linear):
    sched = twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    out = rb.bed_from_model(
        linear.model, linear.params, sched, {"kidneys": S}, {"kidneys": TISSUE}, rtol=1e-10,
        atol=1e-14,
    )["kidneys"]  # fmt: skip
    curves = _exponential_curves(linear, sched, "kidneys")
    assert float(out["dose_Gy"]) == pytest.approx(float(rb.absorbed_dose(curves)), rel=1e-9)
    assert float(out["g"]) == pytest.approx(float(rb.protraction_factor(curves, 2.8)), rel=1e-8)
    assert float(out["bed_Gy"]) == pytest.approx(float(rb.bed(curves, *TISSUE)), rel=1e-9)
    tr = twinjax.simulate(linear.model, linear.params, sched, jnp.array([1.0]))
    assert float(out["dose_Gy"]) == pytest.approx(S * float(tr.tia("kidneys")), rel=1e-9)


def test_two_cycles_incomplete_repair(linear):
    # Cycles 12 h apart: the damage of the first is not yet repaired when the second starts.
    sched = twinjax.Schedule.cycles(7400.0, 2, 12.0, ligand_nmol=57.0)
    out = rb.bed_from_model(
        linear.model, linear.params, sched, {"kidneys": S, "tumour": 2 * S},
        {"kidneys": TISSUE, "tumour": rb.tissue("prostate_cancer")}, rtol=1e-10, atol=1e-14,
    )  # fmt: skip
    kid = _exponential_curves(linear, sched, "kidneys")
    assert float(out["kidneys"]["bed_Gy"]) == pytest.approx(float(rb.bed(kid, *TISSUE)), rel=1e-8)
    # More than two independent cycles (interaction), as the closed form says.
    single = sum(float(rb.bed(c, *TISSUE)) for c in kid)
    assert float(out["kidneys"]["bed_Gy"]) > single
    pc = rb.tissue("prostate_cancer")
    assert float(out["tumour"]["eqd2_Gy"]) == pytest.approx(
        float(out["tumour"]["bed_Gy"]) / (1 + 2 / pc.alpha_beta_Gy), rel=1e-14
    )


@pytest.fixture(scope="module")
def binding(binding_template_path):
    return twinjax.load_template(binding_template_path)


def test_receptor_model_dose_and_gradient_in_activity(binding):
    assert not binding.model.is_linear
    regions = {"kidneys": S, "tumour": 5 * S}
    tissues = {"kidneys": rb.tissue("kidney"), "tumour": rb.tissue("prostate_cancer")}

    base = twinjax.Schedule.single(7400.0, ligand_nmol=30.0)

    def beds(activity):
        sched = base.with_activity(activity)
        out = rb.bed_from_model(
            binding.model, binding.params, sched, regions, tissues, rtol=1e-10, atol=1e-12
        )
        return jnp.stack([out["kidneys"]["bed_Gy"], out["tumour"]["bed_Gy"]])

    f = jax.jit(beds)
    a0 = 7400.0
    sched = twinjax.Schedule.single(a0, ligand_nmol=30.0)
    tr = twinjax.simulate(binding.model, binding.params, sched, jnp.array([1.0]), rtol=1e-10,
                          atol=1e-12, tail_half_lives=10.0)  # fmt: skip
    out = rb.bed_from_model(binding.model, binding.params, sched, regions, tissues, rtol=1e-10,
                            atol=1e-12)  # fmt: skip
    # Same solver, horizon and tail closure for D: the dose is S x TIA.
    assert float(out["kidneys"]["dose_Gy"]) == pytest.approx(S * float(tr.tia("kidneys")), rel=1e-6)
    g = np.asarray(jax.jacfwd(f)(a0))
    h = 1.0
    fd = (np.asarray(f(a0 + h)) - np.asarray(f(a0 - h))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    assert np.all(g > 0)


def test_bad_input(linear):
    sched = twinjax.Schedule.single(7400.0, ligand_nmol=57.0)
    with pytest.raises(InputError, match=r"tissues has no entry for regions \['tumour'\]"):
        rb.bed_from_model(linear.model, linear.params, sched, {"tumour": S}, {})
    with pytest.raises(InputError, match="s_values_Gy_per_MBqh = .*> 0"):
        rb.bed_from_model(
            linear.model, linear.params, sched, {"kidneys": -1.0}, {"kidneys": TISSUE}
        )
    with pytest.raises(InputError, match=r"repair_half_time_h = 0.0"):
        rb.bed_from_model(
            linear.model, linear.params, sched, {"kidneys": S}, {"kidneys": (2.6, 0.0)}
        )
    with pytest.raises(InputError, match="region 'liver'"):
        rb.bed_from_model(linear.model, linear.params, sched, {"liver": S}, {"liver": TISSUE})


def test_response_from_model_equals_the_closed_form_curve(linear):
    """The response ODE riding in the model's ODE equals `tumour_response` driven by the
    model's exact dose-rate curve (two cycles, the second mid-regrowth), and without growth the
    surviving fraction at the end is exp(-alpha BED) of `bed_from_model`."""
    pc = rb.tissue("prostate_cancer")
    sched = twinjax.Schedule.cycles(7400.0, 2, 500.0, ligand_nmol=57.0)
    t = jnp.array([0.0, 10.0, 200.0, 499.0, 700.0, 1500.0, 3000.0])
    grow = dict(volume_mL=5.0, doubling_time_h=900.0, growth="gompertz", carrying_capacity_mL=80.0)
    got = rb.response_from_model(
        linear.model, linear.params, sched, 10 * S, t, tissue=pc, region="tumour", rtol=1e-10,
        atol=1e-13, **grow,
    )  # fmt: skip
    curves = [
        rb.ExponentialDoseRate(c.amplitudes_Gy_per_h * 10, c.rates_per_h, start_h=c.start_h)
        for c in _exponential_curves(linear, sched, "tumour")
    ]
    ref = rb.tumour_response(
        curves, t, alpha_per_Gy=pc.alpha_per_Gy, alpha_beta_Gy=pc.alpha_beta_Gy,
        repair_half_time_h=pc.repair_half_time_h, rtol=1e-10, atol=1e-13, **grow,
    )  # fmt: skip
    np.testing.assert_allclose(got.volume_mL, ref.volume_mL, rtol=1e-6)
    np.testing.assert_allclose(got.marker, ref.marker, rtol=1e-6)
    assert float(got.volume_mL[0]) == 5.0
    assert float(jnp.min(got.volume_mL)) < 5.0  # the lesion shrinks
    # No growth: N(end)/N0 = exp(-alpha BED), the LQ survival of the same dose-rate curve.
    still = rb.response_from_model(
        linear.model, linear.params, sched, 10 * S, jnp.array([8000.0]), tissue=pc,
        region="tumour", volume_mL=5.0, doubling_time_h=1e15, growth="exponential", rtol=1e-10,
        atol=1e-13,
    )  # fmt: skip
    bed = rb.bed_from_model(linear.model, linear.params, sched, {"tumour": 10 * S},
                            {"tumour": pc}, rtol=1e-10, atol=1e-13)["tumour"]["bed_Gy"]  # fmt: skip
    assert float(still.viable_fraction[0]) == pytest.approx(
        float(jnp.exp(-pc.alpha_per_Gy * bed)), rel=1e-6
    )
    with pytest.raises(InputError, match="alpha_per_Gy"):
        rb.response_from_model(linear.model, linear.params, sched, S, t, tissue=rb.tissue("kidney"),
                               volume_mL=1.0, doubling_time_h=10.0, growth="exponential")  # fmt: skip


def test_cross_dose_rides_in_the_ode(linear):
    """Kidney dose rate S_k A_k + X A_t (photon cross-dose from the tumour): dose and BED equal
    the closed form of the summed exponential curves, and the TIA is the kidneys' own."""
    sched = twinjax.Schedule.cycles(7400.0, 2, 24.0, ligand_nmol=57.0)
    x = 0.2 * S
    out = rb.bed_from_model(
        linear.model, linear.params, sched, {"kidneys": S, "tumour": 2 * S},
        {"kidneys": TISSUE, "tumour": TISSUE}, cross_s_values={"kidneys": {"tumour": x}},
        rtol=1e-10, atol=1e-14,
    )  # fmt: skip
    kid = _exponential_curves(linear, sched, "kidneys")
    from_tumour = [
        rb.ExponentialDoseRate(c.amplitudes_Gy_per_h * 0.2, c.rates_per_h, start_h=c.start_h)
        for c in _exponential_curves(linear, sched, "tumour")
    ]
    total = kid + from_tumour
    assert float(out["kidneys"]["dose_Gy"]) == pytest.approx(
        float(rb.absorbed_dose(total)), rel=1e-9
    )
    assert float(out["kidneys"]["bed_Gy"]) == pytest.approx(float(rb.bed(total, *TISSUE)), rel=1e-8)
    tr = twinjax.simulate(linear.model, linear.params, sched, jnp.array([1.0]))
    assert float(out["kidneys"]["tia_MBqh"]) == pytest.approx(float(tr.tia("kidneys")), rel=1e-8)
    # The tumour receives no cross-dose back (none was given).
    assert float(out["tumour"]["dose_Gy"]) == pytest.approx(
        2 * S * float(tr.tia("tumour")), rel=1e-8
    )
    with pytest.raises(InputError, match=r"cross_s_values\['kidneys'\]\['liver'\]"):
        rb.bed_from_model(linear.model, linear.params, sched, {"kidneys": S},
                          {"kidneys": TISSUE}, cross_s_values={"kidneys": {"liver": x}})  # fmt: skip

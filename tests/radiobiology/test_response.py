"""Tumour response: untreated growth equals its closed forms; without growth the surviving
clonogens are exp(-alpha BED) of the same curve; progression and PFS bookkeeping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax import InputError
from twinjax import radiobiology as rb

T = jnp.linspace(0.0, 2000.0, 41)
LQ = dict(alpha_per_Gy=0.15, alpha_beta_Gy=3.1, repair_half_time_h=0.27)
NO_DOSE = rb.ExponentialDoseRate(0.0, 0.01)


def test_untreated_growth_closed_forms():
    exp = rb.tumour_response(NO_DOSE, T, volume_mL=10.0, doubling_time_h=500.0,
                             growth="exponential", **LQ)  # fmt: skip
    np.testing.assert_allclose(exp.volume_mL, 10.0 * 2.0 ** (T / 500.0), rtol=1e-7)
    # Marker M' = c (N/N0 - M), M(0) = 1, N/N0 = exp(rho t): M = (c e^{rho t} + rho e^{-c t}) / (c + rho)
    rho, c, t = math.log(2) / 500.0, math.log(2) / 60.0, np.asarray(T)
    np.testing.assert_allclose(
        exp.marker, (c * np.exp(rho * t) + rho * np.exp(-c * t)) / (c + rho), rtol=1e-6
    )
    # Gompertz: V = K exp(ln(V0/K) exp(-rho t)), rho = ln 2 / (Td ln(K/V0)).
    k, v0, td = 200.0, 10.0, 500.0
    rho = math.log(2) / (td * math.log(k / v0))
    gom = rb.tumour_response(NO_DOSE, T, volume_mL=v0, doubling_time_h=td, carrying_capacity_mL=k,
                             **LQ)  # fmt: skip
    np.testing.assert_allclose(
        gom.volume_mL, k * np.exp(np.log(v0 / k) * np.exp(-rho * np.asarray(T))), rtol=1e-6
    )


def test_kill_equals_lq_survival_of_the_curve():
    # No growth (huge doubling time): N(inf)/N0 = exp(-alpha BED) for the same dose-rate curve.
    curve = rb.ExponentialDoseRate.uptake_clearance(30.0, 2.0, 60.0)
    t = jnp.array([0.0, 100.0, 3000.0])
    r = rb.tumour_response(curve, t, volume_mL=5.0, doubling_time_h=1e12, growth="exponential",
                           clearance_half_time_h=24.0, **LQ)  # fmt: skip
    bed = rb.bed(curve, LQ["alpha_beta_Gy"], LQ["repair_half_time_h"])
    assert float(r.viable_fraction[-1]) == pytest.approx(
        math.exp(-LQ["alpha_per_Gy"] * float(bed)), rel=1e-5
    )
    # Lethally hit cells are cleared: the volume falls to the viable volume.
    assert float(r.volume_mL[-1]) == pytest.approx(5.0 * float(r.viable_fraction[-1]), rel=1e-3)
    assert float(r.volume_mL[1]) > 5.0 * float(r.viable_fraction[1])  # dying cells still there


def test_progression_and_pfs():
    curve = rb.ExponentialDoseRate.uptake_clearance(25.0, 2.0, 60.0)
    t = jnp.linspace(0.0, 8000.0, 401)

    @jax.jit  # one compile for the three dose levels
    def ttp(dose_scale):
        c = rb.ExponentialDoseRate(curve.amplitudes_Gy_per_h * dose_scale, curve.rates_per_h)
        r = rb.tumour_response(c, t, volume_mL=10.0, doubling_time_h=700.0,
                               carrying_capacity_mL=500.0, **LQ)  # fmt: skip
        return rb.time_to_progression(t, r.volume_mL)

    ttps = np.array([float(ttp(s)) for s in (0.5, 1.0, 1.5)])
    assert np.all(np.isfinite(ttps)) and np.all(np.diff(ttps) > 0)  # more dose, later progression
    # By hand: a V-shaped curve regrows past baseline at its 4th point.
    v = jnp.array([[10.0, 6.0, 8.0, 11.0, 12.0], [10.0, 9.0, 8.0, 7.0, 6.0]])
    tt = jnp.arange(5.0)
    np.testing.assert_array_equal(rb.time_to_progression(tt, v), [3.0, np.inf])
    pfs = rb.progression_free_survival(np.array([3.0, np.inf, 1.5, 10.0]), [0.0, 2.0, 5.0, 20.0])
    np.testing.assert_allclose(pfs, [1.0, 0.75, 0.5, 0.25])
    # Differentiable: the final volume decreases with alpha.
    f = jax.grad(lambda a: rb.tumour_response(curve, t[:3], volume_mL=10.0, doubling_time_h=700.0,
                 carrying_capacity_mL=500.0, alpha_per_Gy=a, alpha_beta_Gy=3.1,
                 repair_half_time_h=0.27).volume_mL[-1])  # fmt: skip
    assert float(f(0.15)) < 0


def test_bad_input():
    with pytest.raises(InputError, match="needs carrying_capacity_mL"):
        rb.tumour_response(NO_DOSE, T, volume_mL=10.0, doubling_time_h=500.0, **LQ)
    with pytest.raises(InputError, match="carrying_capacity_mL = .*> volume_mL"):
        rb.tumour_response(NO_DOSE, T, volume_mL=10.0, doubling_time_h=500.0,
                           carrying_capacity_mL=5.0, **LQ)  # fmt: skip
    with pytest.raises(InputError, match="volume_mL = -1.0"):
        rb.tumour_response(NO_DOSE, T, volume_mL=-1.0, doubling_time_h=500.0,
                           growth="exponential", **LQ)  # fmt: skip
    with pytest.raises(InputError, match="growth = 'logistic'"):
        rb.tumour_response(NO_DOSE, T, volume_mL=1.0, doubling_time_h=5.0, growth="logistic", **LQ)
    with pytest.raises(InputError, match="times_h = .*sorted"):
        rb.tumour_response(NO_DOSE, jnp.array([5.0, 1.0]), volume_mL=1.0, doubling_time_h=5.0,
                           growth="exponential", **LQ)  # fmt: skip

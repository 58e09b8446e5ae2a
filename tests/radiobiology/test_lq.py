"""Lea-Catcheside G, BED and EQD2 against closed forms (Dale 1985, Br J Radiol 58:515; the
constant-rate result of Lea & Catcheside 1942, J Genet 44:216), an independent quadrature, and
the two exact paths of twinjax.radiobiology (closed form for sums of exponentials, repair ODE)
against each other."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from twinjax import InputError
from twinjax import radiobiology as rb

LN2 = math.log(2.0)
T_REP = 2.8  # h, kidney (Barone et al. 2005, J Nucl Med 46 Suppl 1:99S)
MU = LN2 / T_REP
AB = 2.6  # Gy


def _quad_gd2(amps, rates, mu, upper=np.inf):
    """G D^2 = 2 int R q dt by adaptive quadrature, with the unrepaired dose q(t) in closed form
    (q' = R - mu q, q(0) = 0): independent of both twinjax paths."""

    def r(t):
        return sum(a * math.exp(-k * t) for a, k in zip(amps, rates, strict=True))

    def q(t):
        # k = mu: the limit a t exp(-mu t)
        return sum(
            a * t * math.exp(-mu * t)
            if k == mu
            else a * (math.exp(-k * t) - math.exp(-mu * t)) / (mu - k)
            for a, k in zip(amps, rates, strict=True)
        )

    val, _ = quad(lambda t: r(t) * q(t), 0.0, upper, epsabs=0.0, epsrel=1e-13, limit=500)
    return 2.0 * val


def test_monoexponential_equals_dale():
    for dose, t_eff in ((20.0, 50.0), (5.0, 1.0), (40.0, 160.0)):
        lam = LN2 / t_eff
        curve = rb.ExponentialDoseRate.monoexponential(dose, t_eff)
        g = rb.protraction_factor(curve, T_REP)
        assert float(g) == pytest.approx(lam / (lam + MU), rel=1e-12)
        dale = dose * (1.0 + dose * lam / ((MU + lam) * AB))
        assert float(rb.bed(curve, AB, T_REP)) == pytest.approx(dale, rel=1e-12)
        assert float(rb.bed_monoexponential(dose, t_eff, AB, T_REP)) == pytest.approx(
            dale, rel=1e-12
        )


@pytest.fixture(scope="module")
def ode_mono():
    """The repair ODE on a mono-exponential, integrated numerically to 300 h (6 half-lives) and
    closed analytically after: one compile for the module."""
    fn = jax.jit(
        lambda d, te: rb.protraction_factor(
            rb.ExponentialDoseRate.monoexponential(d, te), T_REP, method="ode", t_end_h=300.0
        )
    )
    return fn


def test_ode_path_equals_dale_to_1e8(ode_mono):
    for dose, t_eff in ((20.0, 50.0), (3.0, 10.0)):
        lam = LN2 / t_eff
        assert float(ode_mono(dose, t_eff)) == pytest.approx(lam / (lam + MU), rel=1e-8)


def test_uptake_clearance_closed_form_and_quadrature():
    # R = A (exp(-c t) - exp(-u t)). From G D^2 = 2 sum_ij a_i a_j / ((k_i + k_j)(k_j + mu)):
    # G D^2 = 2 A^2 [1/(2c(c+mu)) - 1/((c+u)(u+mu)) - 1/((c+u)(c+mu)) + 1/(2u(u+mu))].
    dose, t_up, t_eff = 15.0, 3.0, 60.0
    u, c = LN2 / t_up, LN2 / t_eff
    amp = dose / (1.0 / c - 1.0 / u)
    gd2 = (
        2.0
        * amp**2
        * (
            1 / (2 * c * (c + MU))
            - 1 / ((c + u) * (u + MU))
            - 1 / ((c + u) * (c + MU))
            + 1 / (2 * u * (u + MU))
        )
    )
    assert _quad_gd2([amp, -amp], [c, u], MU) == pytest.approx(gd2, rel=1e-10)
    curve = rb.ExponentialDoseRate.uptake_clearance(dose, t_up, t_eff)
    assert float(rb.absorbed_dose(curve)) == pytest.approx(dose, rel=1e-13)
    assert float(rb.protraction_factor(curve, T_REP)) == pytest.approx(gd2 / dose**2, rel=1e-12)
    ode = rb.protraction_factor(curve, T_REP, method="ode", t_end_h=400.0)
    assert float(ode) == pytest.approx(gd2 / dose**2, rel=1e-8)
    # A tri-exponential with k = mu exactly (the divided difference's removable singularity).
    amps, rates = [4.0, -6.0, 2.0], [MU, 0.9, 0.01]
    tri = rb.ExponentialDoseRate(amps, rates)
    d = sum(a / k for a, k in zip(amps, rates, strict=True))
    assert float(rb.protraction_factor(tri, T_REP)) == pytest.approx(
        _quad_gd2(amps, rates, MU) / d**2, rel=1e-10
    )


def test_limits_acute_and_protracted():
    acute = rb.ExponentialDoseRate.uptake_clearance(10.0, 1e-5, 2e-5)
    assert float(rb.protraction_factor(acute, T_REP)) == pytest.approx(1.0, abs=1e-4)
    assert float(rb.bed(acute, AB, T_REP)) == pytest.approx(10.0 * (1 + 10.0 / AB), rel=1e-4)
    slow = rb.ExponentialDoseRate.monoexponential(10.0, 1e5)
    assert float(rb.protraction_factor(slow, T_REP)) < 3e-5
    assert float(rb.bed(slow, AB, T_REP)) == pytest.approx(10.0, rel=2e-4)


def test_constant_rate_with_a_jump_lea_catcheside():
    # Constant rate R0 for T hours, then nothing: G = 2 (mu T - 1 + exp(-mu T)) / (mu T)^2.
    # Samples (0, R0), (T, R0), (T, 0): a jump down at T, zero tail.
    r0, t = 0.4, 30.0
    curve = rb.SampledDoseRate([0.0, t, t], [r0, r0, 0.0], tail_rate_per_h=0.01)
    x = MU * t
    assert float(rb.absorbed_dose(curve)) == pytest.approx(r0 * t, rel=1e-10)
    assert float(rb.protraction_factor(curve, T_REP)) == pytest.approx(
        2 * (x - 1 + math.exp(-x)) / x**2, rel=1e-9
    )


def test_sampled_curve_converges_to_the_exponential():
    # Linear interpolation of exp(-lam t) on a grid of h: G error O(h^2).
    lam, dose = LN2 / 40.0, 20.0
    exact = lam / (lam + MU)
    errs = []
    for n in (41, 81):
        ts = jnp.linspace(0.0, 200.0, n)
        curve = rb.SampledDoseRate(ts, dose * lam * jnp.exp(-lam * ts), tail_rate_per_h=lam)
        errs.append(abs(float(rb.protraction_factor(curve, T_REP)) / exact - 1.0))
    assert errs[1] < 1e-3
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.1)


def test_cycles_incomplete_repair():
    cycles = [
        rb.ExponentialDoseRate.uptake_clearance(10.0, 2.0, 50.0, start_h=s) for s in (0.0, 6.0)
    ]
    closed = rb.bed(cycles, AB, T_REP)
    ode = rb.bed(cycles, AB, T_REP, method="ode", t_end_h=600.0)
    assert float(ode) == pytest.approx(float(closed), rel=1e-8)
    # Independent check: the two cycles as one curve of four exponentials from t = 0
    # (a term exp(-k (t - 6)) from 6 h equals exp(6 k) exp(-k t) only after 6 h, so integrate
    # the cross term explicitly): 2 int R q = int int R(t) R(w) exp(-mu |t - w|).
    one = rb.bed(cycles[0], AB, T_REP)
    assert float(closed) > 2.0 * float(one)  # overlapping cycles interact
    # Far-apart cycles (60 effective half-lives): complete repair, BEDs add.
    far = [rb.ExponentialDoseRate.uptake_clearance(10.0, 2.0, 5.0, start_h=s) for s in (0.0, 300.0)]
    assert float(rb.bed(far, AB, T_REP)) == pytest.approx(
        2 * float(rb.bed(far[0], AB, T_REP)), rel=1e-12
    )


def test_cycles_cross_term_against_quadrature():
    # Cycle 2 starts delta after cycle 1; the cross term of G D^2 is
    # 2 int_delta^inf R2(t) q1(t) dt with q1 in closed form (unrepaired dose of cycle 1).
    a1, k1, a2, k2, delta = 0.3, 0.02, 0.5, 0.05, 7.0
    c1 = rb.ExponentialDoseRate(a1, k1)
    c2 = rb.ExponentialDoseRate(a2, k2, start_h=delta)
    total = float(rb.protraction_factor([c1, c2], T_REP)) * (a1 / k1 + a2 / k2) ** 2
    own = _quad_gd2([a1], [k1], MU) + _quad_gd2([a2], [k2], MU)

    def integrand(t):
        q1 = a1 * (math.exp(-k1 * t) - math.exp(-MU * t)) / (MU - k1)
        return a2 * math.exp(-k2 * (t - delta)) * q1

    cross1, _ = quad(integrand, delta, np.inf, epsabs=0.0, epsrel=1e-13, limit=500)

    # ... and the damage of cycle 2 meeting the later dose of cycle 1:
    def integrand2(t):
        q2 = a2 * (math.exp(-k2 * (t - delta)) - math.exp(-MU * (t - delta))) / (MU - k2)
        return a1 * math.exp(-k1 * t) * q2

    cross2, _ = quad(integrand2, delta, np.inf, epsabs=0.0, epsrel=1e-13, limit=500)
    assert total == pytest.approx(own + 2 * (cross1 + cross2), rel=1e-10)


def test_eqd2_and_acute_fractions():
    # 35 x 2 Gy: EQD2 equals the physical dose for any alpha/beta.
    for ab in (1.5, 3.0, 10.0):
        assert float(rb.eqd2_from_bed(rb.bed_acute(70.0, ab, n_fractions=35), ab)) == pytest.approx(
            70.0, rel=1e-14
        )
    curve = rb.ExponentialDoseRate.monoexponential(20.0, 50.0)
    assert float(rb.eqd2(curve, AB, T_REP)) == pytest.approx(
        float(rb.bed(curve, AB, T_REP)) / (1 + 2 / AB), rel=1e-14
    )
    # RBE 5 (alpha emitters): BED = 5 D (1 + 5 G D / (alpha/beta)).
    g = float(rb.protraction_factor(curve, T_REP))
    assert float(rb.bed(curve, AB, T_REP, rbe=5.0)) == pytest.approx(
        100.0 * (1 + 5 * g * 20.0 / AB), rel=1e-13
    )


def test_gradient_in_activity_matches_finite_differences(ode_mono):
    # Dose scales with administered activity A: D = A * d_per_GBq; BED' = d (1 + 2 G D / ab).
    def bed_of(activity_GBq, method):
        curve = rb.ExponentialDoseRate.uptake_clearance(0.6 * activity_GBq, 2.0, 45.0)
        return rb.bed(curve, AB, T_REP, method=method, t_end_h=300.0)

    for method in ("closed", "ode"):
        f = jax.jit(lambda a, m=method: bed_of(a, m))
        g = float(jax.grad(f)(7.4))
        h = 1e-4
        fd = (float(f(7.4 + h)) - float(f(7.4 - h))) / (2 * h)
        assert g == pytest.approx(fd, rel=1e-7), method
    # vmap over activities equals the loop
    acts = jnp.array([3.7, 7.4, 9.0])
    batched = jax.vmap(lambda a: bed_of(a, "closed"))(acts)
    np.testing.assert_allclose(batched, [float(bed_of(a, "closed")) for a in acts], rtol=1e-14)
    assert batched.dtype == jnp.float64


def test_bad_input():
    curve = rb.ExponentialDoseRate.monoexponential(10.0, 50.0)
    with pytest.raises(InputError, match=r"repair_half_time_h = -1.0; allowed: > 0 \(h\)"):
        rb.bed(curve, AB, -1.0)
    with pytest.raises(InputError, match=r"alpha_beta_Gy = 0.0; allowed: > 0 \(Gy\)"):
        rb.bed(curve, 0.0, T_REP)
    with pytest.raises(InputError, match=r"rates_per_h = \[0.0\]; allowed: > 0"):
        rb.ExponentialDoseRate(1.0, 0.0)
    with pytest.raises(InputError, match="one rate per amplitude"):
        rb.ExponentialDoseRate([1.0, 2.0], [0.1])
    with pytest.raises(InputError, match="uptake_half_life_h"):
        rb.ExponentialDoseRate.uptake_clearance(10.0, 60.0, 50.0)
    with pytest.raises(InputError, match="times_h = .*non-decreasing"):
        rb.SampledDoseRate([0.0, 5.0, 2.0], [1.0, 1.0, 1.0], 0.01)
    with pytest.raises(InputError, match="dose_rate_Gy_per_h = .*>= 0"):
        rb.SampledDoseRate([0.0, 5.0], [1.0, float("nan")], 0.01)
    with pytest.raises(InputError, match="tail_rate_per_h = 0.0"):
        rb.SampledDoseRate([0.0, 5.0], [1.0, 1.0], 0.0)
    with pytest.raises(InputError, match="method = 'closed' needs ExponentialDoseRate"):
        rb.bed(rb.SampledDoseRate([0.0, 5.0], [1.0, 1.0], 0.1), AB, T_REP, method="closed")
    with pytest.raises(InputError, match="allowed: a DoseRate"):
        rb.bed([], AB, T_REP)

"""Tests of twinjax.models.pet: exact Feng-input tissue curves vs ODE solves, Patlak, JAX transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

import twinjax  # noqa: F401  (enables float64)
from twinjax import InputError
from twinjax.models.pet import (
    FengInput,
    feng_input,
    one_tissue,
    patlak,
    patlak_ki_2tcm,
    two_tissue,
    two_tissue_components,
)

PER_MIN = 60.0  # 1/min -> 1/h

# Feng 1993 FDG input in minutes / uCi/mL (the numbers fdg_reference converts).
FENG_MIN = dict(A1=851.1225, A2=21.8798, A3=20.8113, l1=-4.1339, l2=-0.1191, l3=-0.0104, tau=0.7371)

# (K1, k2, k3, k4) in 1/h.
GREY_IRREV = (0.102 * PER_MIN, 0.130 * PER_MIN, 0.062 * PER_MIN, 0.0)
GREY_REV = (0.102 * PER_MIN, 0.130 * PER_MIN, 0.062 * PER_MIN, 0.0068 * PER_MIN)
FLT_LIKE = (0.10 * PER_MIN, 0.25 * PER_MIN, 0.06 * PER_MIN, 0.01 * PER_MIN)
# k2 equal to -lambda3: the convolution's d = 0 (resonant) branch.
RESONANT_1T = (0.1 * PER_MIN, 0.0104 * PER_MIN, 0.0, 0.0)
ONE_TISSUE = (0.5 * PER_MIN, 0.3 * PER_MIN, 0.0, 0.0)


@pytest.fixture(scope="module")
def aif():
    return FengInput.fdg_reference(concentration_scale=37.0)  # kBq/mL


@pytest.fixture(scope="module")
def t_out():
    # 0 .. 90 min, with samples before the delay, right after it and late.
    return np.concatenate(
        [[0.0, 0.005, 0.0124], np.linspace(0.013, 0.1, 30), np.linspace(0.12, 1.5, 40)]
    )


def ode_reference(aif, t, K1, k2, k3, k4):
    """Radau solve of the 2TCM driven by the same Feng input, from the delay onwards."""
    tau = float(aif.tau_h)
    p = {k: float(getattr(aif, k)) for k in ("A1", "A2", "A3", "lambda1", "lambda2", "lambda3")}

    def cp(tt):
        s = tt - tau
        return (
            (p["A1"] * s - p["A2"] - p["A3"]) * np.exp(p["lambda1"] * s)
            + p["A2"] * np.exp(p["lambda2"] * s)
            + p["A3"] * np.exp(p["lambda3"] * s)
        )

    jac = np.array([[-(k2 + k3), k4], [k3, -k4]])

    def rhs(tt, y):
        return jac @ y + np.array([K1 * cp(tt), 0.0])

    after = t > tau
    sol = solve_ivp(
        rhs,
        (tau, t[-1]),
        [0.0, 0.0],
        method="Radau",
        rtol=1e-11,
        atol=1e-14,
        t_eval=t[after],
        jac=lambda tt, y: jac,
    )
    assert sol.success
    out = np.zeros((2, t.size))
    out[:, after] = sol.y
    return out


@pytest.mark.parametrize("rates", [GREY_IRREV, GREY_REV, FLT_LIKE])
def test_two_tissue_matches_ode(aif, t_out, rates):
    ref = ode_reference(aif, t_out, *rates)
    c1, c2 = two_tissue_components(t_out, *rates, aif)
    np.testing.assert_allclose(c1, ref[0], rtol=1e-7, atol=1e-7 * ref[0].max())
    np.testing.assert_allclose(c2, ref[1], rtol=1e-7, atol=1e-7 * ref[1].max())
    total = two_tissue(t_out, *rates, aif)
    np.testing.assert_allclose(total, ref.sum(0), rtol=1e-7, atol=1e-7 * ref.sum(0).max())
    assert np.all(np.asarray(total)[t_out <= float(aif.tau_h)] == 0.0)


@pytest.mark.parametrize("rates", [ONE_TISSUE, RESONANT_1T])
def test_one_tissue_matches_ode(aif, t_out, rates):
    ref = ode_reference(aif, t_out, *rates)[0]
    out = one_tissue(t_out, rates[0], rates[1], aif)
    np.testing.assert_allclose(out, ref, rtol=1e-7, atol=1e-7 * ref.max())


def test_blood_volume_mixing_and_limits(aif, t_out):
    K1, k2, k3, k4 = GREY_REV
    vb = 0.05
    c1, c2 = two_tissue_components(t_out, K1, k2, k3, k4, aif)
    expect = (1 - vb) * (c1 + c2) + vb * aif(t_out)
    np.testing.assert_allclose(two_tissue(t_out, K1, k2, k3, k4, aif, vb=vb), expect, rtol=1e-14)
    # k3 = 0 reduces the 2TCM to the 1TCM, also in the degenerate case k2 = k4 (equal eigenvalues).
    one = one_tissue(t_out, K1, k2, aif, vb=vb)
    for k4_ in (0.3, k2):
        np.testing.assert_allclose(
            two_tissue(t_out, K1, k2, 0.0, k4_, aif, vb=vb), one, rtol=1e-12, atol=1e-12
        )
    # Irreversible trapping: late C2 approaches Ki * int Cp minus a bounded transient; C2 grows.
    c1, c2 = two_tissue_components(t_out, *GREY_IRREV, aif)
    assert np.all(np.diff(np.asarray(c2)) >= 0)


def test_feng_values_and_units(aif):
    f = FENG_MIN
    t_min = np.array([0.0, 0.5, 0.7371, 1.0, 2.0, 10.0, 60.0])
    s = np.maximum(t_min - f["tau"], 0.0)
    cp_min = (
        (f["A1"] * s - f["A2"] - f["A3"]) * np.exp(f["l1"] * s)
        + f["A2"] * np.exp(f["l2"] * s)
        + f["A3"] * np.exp(f["l3"] * s)
    )
    cp_min = np.where(t_min >= f["tau"], cp_min, 0.0)
    np.testing.assert_allclose(aif(t_min / PER_MIN), 37.0 * cp_min, rtol=1e-12, atol=1e-12)
    # Hand value at 10 min (uCi/mL), independent of the code under test.
    assert float(FengInput.fdg_reference()(10.0 / 60.0)) == pytest.approx(26.15980, rel=1e-6)
    fn = feng_input(
        t_min / PER_MIN, aif.A1, aif.A2, aif.A3, aif.lambda1, aif.lambda2, aif.lambda3, aif.tau_h
    )
    np.testing.assert_allclose(fn, aif(t_min / PER_MIN), rtol=1e-15)


def test_feng_integral_vs_quad(aif):
    tau = float(aif.tau_h)
    ts = np.array([0.005, tau, tau + 1e-4, 0.02, 0.05, 0.25, 1.0, 3.0])
    got = np.asarray(aif.integral(ts))
    for t, g in zip(ts, got, strict=True):
        if t <= tau:
            assert g == 0.0
            continue
        ref, _err = quad(
            lambda u: float(aif(u)),
            tau,
            t,
            points=[tau + 0.01],
            limit=400,
            epsabs=0.0,
            epsrel=1e-13,
        )
        assert g == pytest.approx(ref, rel=1e-9)


def test_patlak_recovers_ki(aif):
    K1, k2, k3, _ = GREY_IRREV
    ki_true = float(patlak_ki_2tcm(K1, k2, k3))
    assert ki_true == pytest.approx(0.102 * 0.062 / (0.130 + 0.062) * PER_MIN, rel=1e-14)
    t = np.linspace(0.0, 1.0, 3601)  # 1-s sampling over 60 min: the trapezoid resolves the peak
    ct = two_tissue(t, K1, k2, k3, 0.0, aif, vb=0.04)
    ki, v0 = patlak(t, ct, aif(t), t_star_h=25.0 / 60.0)
    # The voxel holds (1 - vb) tissue: Patlak on it measures (1 - vb) Ki.
    assert float(ki) == pytest.approx(0.96 * ki_true, rel=0.02)
    ki0, _ = patlak(t, two_tissue(t, K1, k2, k3, 0.0, aif), aif(t), t_star_h=25.0 / 60.0)
    assert float(ki0) == pytest.approx(ki_true, rel=0.02)
    assert 0.0 < float(v0) < 1.0
    ki_exact, _ = patlak(t, ct, aif(t), t_star_h=25.0 / 60.0, c_plasma_integral=aif.integral(t))
    assert float(ki_exact) == pytest.approx(float(ki), rel=1e-5)
    # Coarse PET frames with an exact integral also work, and the fit is jit-able.
    frames = np.array([25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0]) / 60.0
    fit = jax.jit(lambda c, cp, ic: patlak(frames, c, cp, t_star_h=0.4, c_plasma_integral=ic))
    ki_j, _ = fit(
        two_tissue(frames, K1, k2, k3, 0.0, aif, vb=0.04), aif(frames), aif.integral(frames)
    )
    assert float(ki_j) == pytest.approx(0.96 * ki_true, rel=0.02)


def test_jit_vmap_grad(aif, t_out):
    K1, k2, k3, k4 = GREY_REV
    plain = two_tissue(t_out, K1, k2, k3, k4, aif, vb=0.05)
    jitted = jax.jit(two_tissue)(t_out, K1, k2, k3, k4, aif, 0.05)
    np.testing.assert_allclose(jitted, plain, rtol=1e-13)

    K1s = jnp.array([3.0, 6.0, 9.0])
    batched = jax.vmap(lambda a: two_tissue(t_out, a, k2, k3, k4, aif, vb=0.05))(K1s)
    loop = np.stack([two_tissue(t_out, a, k2, k3, k4, aif, vb=0.05) for a in np.asarray(K1s)])
    np.testing.assert_allclose(batched, loop, rtol=1e-13)

    aifs = jax.tree.map(lambda x: jnp.stack([x, 1.1 * x]), aif)  # a batch of two input functions
    by_aif = jax.vmap(lambda a: one_tissue(t_out, K1, k2, a))(aifs)
    np.testing.assert_allclose(by_aif[0], one_tissue(t_out, K1, k2, aif), rtol=1e-13)

    def value(k1, k3_):
        return two_tissue(0.75, k1, k2, k3_, k4, aif, vb=0.05)

    g1, g3 = jax.grad(value, argnums=(0, 1))(K1, k3)
    h1, h3 = 1e-5 * K1, 1e-5 * k3
    fd1 = (value(K1 + h1, k3) - value(K1 - h1, k3)) / (2 * h1)
    fd3 = (value(K1, k3 + h3) - value(K1, k3 - h3)) / (2 * h3)
    assert float(g1) == pytest.approx(float(fd1), rel=1e-6)
    assert float(g3) == pytest.approx(float(fd3), rel=1e-6)
    # The resonant branch (k2 = -lambda3) is differentiable too.
    r = RESONANT_1T

    def one(k2_):
        return one_tissue(1.0, r[0], k2_, aif)

    h = 1e-5 * r[1]
    fd = (one(r[1] + h) - one(r[1] - h)) / (2 * h)
    assert float(jax.grad(one)(r[1])) == pytest.approx(float(fd), rel=1e-6)


def test_float64(aif, t_out):
    outs = [
        aif(t_out),
        aif.integral(t_out),
        one_tissue(t_out, 1.0, 1.0, aif),
        two_tissue(t_out, *GREY_IRREV, aif),
        *two_tissue_components(t_out, *GREY_REV, aif),
        patlak_ki_2tcm(1, 1, 1),
    ]
    assert all(o.dtype == jnp.float64 for o in outs)
    assert aif.A1.dtype == jnp.float64


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda a: one_tissue([0.0, 1.0], -1.0, 1.0, a), "K1_per_h"),
        (lambda a: one_tissue([0.0, 1.0], 1.0, float("nan"), a), "k2_per_h"),
        (lambda a: two_tissue([0.0, 1.0], 1.0, 1.0, 1.0, -0.1, a), "k4_per_h"),
        (lambda a: two_tissue([0.0, 1.0], 1.0, 1.0, -1.0, 0.0, a), "k3_per_h"),
        (lambda a: two_tissue([0.0, 1.0], 1.0, 1.0, 1.0, 0.0, a, vb=1.0), "vb"),
        (lambda a: one_tissue([0.0, 1.0], 1.0, 1.0, a, vb=-0.1), "vb"),
        (lambda a: one_tissue([0.0, 2.0, 1.0], 1.0, 1.0, a), "t_h"),
        (lambda a: one_tissue([-1.0, 1.0], 1.0, 1.0, a), "t_h"),
        (lambda a: one_tissue([0.0, 1.0], 1.0, 1.0, "feng"), "aif"),
        (lambda a: FengInput(1.0, 1.0, 1.0, 0.5, -1.0, -1.0, 0.0), "lambda1"),
        (lambda a: FengInput(1.0, 1.0, 1.0, -5.0, -1.0, 0.0, 0.0), "lambda3"),
        (lambda a: FengInput(1.0, 1.0, 1.0, -5.0, -1.0, -0.1, -0.01), "tau_h"),
        (lambda a: feng_input(1.0, 1.0, 1.0, 1.0, -5.0, 1.0, -0.1, 0.0), "lambda2"),
        (lambda a: patlak([0.1, 0.5, 1.0], [1, 2, 3], [1, 1, 1], t_star_h=0.9), "t_star_h"),
        (lambda a: patlak([0.1, 0.5, 1.0], [1, 2, 3], [1, 0, 1], t_star_h=0.2), "c_plasma"),
        (lambda a: patlak_ki_2tcm(1.0, 0.0, 0.0), "k2_per_h + k3_per_h"),
    ],
)
def test_bad_input_raises(aif, call, field):
    with pytest.raises(InputError, match="allowed") as info:
        call(aif)
    assert field in str(info.value)

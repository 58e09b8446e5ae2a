"""Tumour growth (proliferation-invasion with LQ kill) against analytic solutions: the Fisher-KPP
front speed 2 sqrt(D rho), the exact LQ surviving fraction of a protracted dose rate (Lea-
Catcheside G from twinjax.radiobiology), the oxygen effect on survival, logistic growth of the
burden and its derivative in rho, and the read-outs (burden, radius, front)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax import InputError
from twinjax.pde import (
    Grid,
    TumourGrowthPDE,
    front_position_mm,
    simulate_growth,
    tumour_burden,
    tumour_radius_mm,
)
from twinjax.radiobiology import (
    ExponentialDoseRate,
    absorbed_dose,
    hypoxia_modified_lq,
    protraction_factor,
)


def test_fisher_kpp_front_speed():
    """n_t = D n_xx + rho n (1 - n) from a step: the front moves at 2 sqrt(D rho) minus
    Bramson's logarithmic delay (x(t) = c t - 3/(2 lambda) ln t, lambda = sqrt(rho/D))."""
    diff, rho = 0.04, 0.25  # mm^2/h, 1/h: c = 0.2 mm/h
    g = Grid((2100,), 0.08)
    model = TumourGrowthPDE(g, diffusivity_mm2_per_h=diff, proliferation_rate_per_h=rho)
    x = g.coordinates_mm()[0]
    n0 = (x < 2.0).astype(float)
    # Explicit Heun at 0.9 of the stability limit (the default step of method "explicit").
    n = simulate_growth(model, n0, jnp.array([0.0, 400.0, 800.0]), method="explicit")
    front = front_position_mm(n, g)
    assert float(front[0]) == pytest.approx(2.0)  # the step itself: exact interpolation
    speed = float(front[2] - front[1]) / 400.0
    c = 2 * np.sqrt(diff * rho)
    assert abs(speed - c) / c < 0.02, speed
    lam = np.sqrt(rho / diff)
    bramson = c - 1.5 / lam * np.log(800.0 / 400.0) / 400.0
    assert speed == pytest.approx(bramson, rel=0.01)


def test_lq_kill_of_a_monoexponential_dose_rate_is_exact_and_oxygen_dependent():
    """D = 0, rho = 0, R = R0 exp(-lambda t): n(T) / n0 = exp(-alpha D(T) - beta G D(T)^2) per
    cell, alpha and beta at that cell's pO2; G from protraction_factor. At T = 24 h the curve
    delivered so far is R0 exp(-lambda t) minus the same curve's tail from 24 h (two
    exponential terms with their own starts, still closed form)."""
    g = Grid((3,), 1.0)
    po2 = np.array([0.5, 5.0, 40.0])  # mmHg: hypoxic, intermediate, oxic
    alpha, beta, t_rep = 0.3, 0.03, 1.5
    model = TumourGrowthPDE(g, diffusivity_mm2_per_h=0.0, proliferation_rate_per_h=0.0,
                            alpha_per_Gy=alpha, beta_per_Gy2=beta, repair_half_time_h=t_rep,
                            po2_mmHg=po2)  # fmt: skip
    dose, half_life = 20.0, 6.0  # Gy, h
    curve = ExponentialDoseRate.monoexponential(dose, half_life)
    times = jnp.array([0.0, 24.0, 400.0])  # 400 h = 67 half-lives: the whole dose
    n = np.asarray(simulate_growth(model, 1.0, times, dose_rate=curve, method="adaptive",
                                   rtol=1e-10, atol=1e-15))  # fmt: skip
    lam = np.log(2.0) / half_life
    so_far = [curve, ExponentialDoseRate(-dose * lam * np.exp(-lam * 24.0), lam, 24.0)]
    a_eff, b_eff = (np.asarray(v) for v in hypoxia_modified_lq(alpha, beta, po2))
    # One compiled reference for both curves (op-by-op dispatch would cost seconds).
    reference = jax.jit(lambda c: (absorbed_dose(c), protraction_factor(c, t_rep)))
    for row, part in ((1, so_far), (2, curve)):
        d, gf = (float(v) for v in reference(part))
        expected = np.exp(-a_eff * d - b_eff * gf * d**2)
        np.testing.assert_allclose(n[row], expected, rtol=1e-5)
    assert float(absorbed_dose(so_far)) == pytest.approx(dose * (1 - np.exp(-lam * 24.0)))
    # Hypoxic cells survive more than oxic ones at the same dose: 97x more at 0.5 mmHg.
    sf = n[-1]
    assert sf[0] > sf[1] > sf[2]
    assert sf[0] / sf[2] > 50.0


def test_sampled_dose_rate_maps_drive_the_kill():
    """Dose-rate maps sampled on a time grid (a voxel dose-rate simulation), linear in between,
    and a different amplitude per cell: each cell's surviving fraction is exp(-alpha D - beta G
    D^2) of its own piecewise-linear curve, with D the trapezoid sum and G D^2 = 2 int R q dt
    from SciPy's solve_ivp on q' = R - mu q (an independent reference)."""
    from scipy.integrate import solve_ivp

    g = Grid((2, 2), 2.0)
    t_knots = np.array([0.0, 2.0, 10.0, 30.0, 72.0])
    base = np.array([0.0, 1.2, 0.8, 0.3, 0.0])  # Gy/h: uptake, clearance, back to 0
    scale = np.array([[0.1, 0.2], [0.3, 0.5]])  # 2.6 to 13 Gy
    maps = base[:, None, None] * scale[None]
    alpha, beta, t_rep = 0.25, 0.05, 2.0
    model = TumourGrowthPDE(g, diffusivity_mm2_per_h=0.0, proliferation_rate_per_h=0.0,
                            alpha_per_Gy=alpha, beta_per_Gy2=beta, repair_half_time_h=t_rep)  # fmt: skip
    n = simulate_growth(model, 1.0, jnp.array([0.0, 72.0]), dose_rate=(t_knots, maps),
                        method="adaptive", rtol=1e-10, atol=1e-15)[-1]  # fmt: skip
    mu = np.log(2.0) / t_rep
    qj = np.zeros(2)
    for i in range(len(t_knots) - 1):  # piece by piece: no step straddles a kink

        def rhs(t, y, i=i):
            r = np.interp(t, t_knots[i : i + 2], base[i : i + 2])
            return [r - mu * y[0], r * y[0]]

        qj = solve_ivp(rhs, t_knots[i : i + 2], qj, rtol=1e-12, atol=1e-14).y[:, -1]
    d1 = float(np.sum(np.diff(t_knots) * (base[1:] + base[:-1]) / 2))
    gd2 = 2 * qj[1] * scale**2
    d = d1 * scale
    np.testing.assert_allclose(n, np.exp(-alpha * d - beta * gd2), rtol=1e-5)
    # G = 0.125 (72 h of delivery, 2 h repair), yet the quadratic term is a quarter of the
    # log-kill of the hottest cell: the repair state q matters to this check.
    assert gd2[0, 0] / d[0, 0] ** 2 == pytest.approx(0.125, abs=0.005)
    assert beta * gd2[1, 1] > 0.25 * alpha * d[1, 1]


def test_logistic_growth_of_the_burden():
    """No dose, uniform n0 inside a mask (no-flux, so motility moves nothing): n(t) = n0 e^(rho
    t) / (1 - n0 + n0 e^(rho t)) in every tissue cell and burden = V_tissue n(t), with the
    default IMEX method. Cells outside the mask keep their value."""
    g = Grid((6, 5), 0.5)
    mask = np.zeros(g.shape, bool)
    mask[1:5, :4] = True
    n0, rho = 0.05, 0.02
    times = jnp.array([0.0, 50.0, 100.0, 200.0])
    model = TumourGrowthPDE(g, diffusivity_mm2_per_h=0.3, proliferation_rate_per_h=rho, mask=mask)
    n = simulate_growth(model, n0, times, rtol=1e-9, atol=1e-12)  # imex
    t = np.asarray(times)
    logistic = n0 * np.exp(rho * t) / (1 - n0 + n0 * np.exp(rho * t))
    v_tissue = mask.sum() * g.cell_volume_mL
    np.testing.assert_allclose(tumour_burden(n, g, mask), v_tissue * logistic, rtol=1e-6)
    np.testing.assert_allclose(n[:, ~mask], n0, rtol=0, atol=0)
    assert n.dtype == jnp.float64 and tumour_burden(n, g).dtype == jnp.float64


def test_read_outs_burden_radius_front():
    """A uniform disc/ball of density 0.8 and radius R: burden 0.8 V, equivalent radius R
    (within the voxelisation); a linear ramp's 0.5 crossing is found exactly."""
    r_true = 3.0
    for shape, h, vol in (((40, 40), 0.2, np.pi * r_true**2),
                          ((24, 24, 24), 0.4, 4 / 3 * np.pi * r_true**3)):  # fmt: skip
        g = Grid(shape, h)
        r = np.sqrt(sum((c - 0.5 * e) ** 2 for c, e in zip(g.coordinates_mm(), g.extent_mm,
                                                          strict=True)))  # fmt: skip
        n = np.where(r < r_true, 0.8, 0.0)
        assert float(tumour_burden(n, g)) == pytest.approx(
            0.8 * (r < r_true).sum() * g.cell_volume_mL
        )
        assert float(tumour_burden(n, g)) * 1e3 == pytest.approx(0.8 * vol, rel=0.03)  # mm^3
        assert float(tumour_radius_mm(n, g)) == pytest.approx(r_true, rel=0.02)
    g = Grid((10,), 1.0)
    ramp = jnp.stack([1.0 - 0.1 * jnp.arange(10.0), jnp.ones(10), jnp.zeros(10)])
    front = front_position_mm(ramp, g)
    # Values 1 - 0.1 i at x = i + 0.5: 0.5 is reached at i = 5, x = 5.5.
    np.testing.assert_allclose(front, [5.5, 10.0, 0.0], atol=1e-12)
    assert float(tumour_radius_mm(ramp[0], g)) == pytest.approx(0.5 * 6.0)


def test_bad_input():
    g = Grid((8, 8), 0.5)
    kw = dict(diffusivity_mm2_per_h=0.1, proliferation_rate_per_h=0.01)
    with pytest.raises(InputError, match=r"proliferation_rate_per_h = -0.1; allowed: >= 0"):
        TumourGrowthPDE(g, diffusivity_mm2_per_h=0.1, proliferation_rate_per_h=-0.1)
    with pytest.raises(InputError, match="diffusivity_mm2_per_h has 1 NaN"):
        d = np.full(g.shape, 0.1)
        d[3, 3] = np.nan
        TumourGrowthPDE(g, diffusivity_mm2_per_h=d, proliferation_rate_per_h=0.01)
    with pytest.raises(InputError, match=r"po2_mmHg has shape \(4, 4\)"):
        TumourGrowthPDE(g, po2_mmHg=np.ones((4, 4)), **kw)
    with pytest.raises(InputError, match="po2_mmHg has min -1.0"):
        TumourGrowthPDE(g, po2_mmHg=-1.0, **kw)
    with pytest.raises(InputError, match=r"repair_half_time_h = 0.0; allowed: > 0"):
        TumourGrowthPDE(g, repair_half_time_h=0.0, **kw)
    model = TumourGrowthPDE(g, **kw)
    times = jnp.array([0.0, 1.0])
    with pytest.raises(InputError, match=r"n0 has shape \(8, 7\)"):
        simulate_growth(model, np.ones((8, 7)), times)
    with pytest.raises(InputError, match="n0 has min -0.5"):
        simulate_growth(model, -0.5, times)
    curve = ExponentialDoseRate.monoexponential(10.0, 60.0)
    with pytest.raises(InputError, match="alpha_per_Gy = None"):
        simulate_growth(model, 0.1, times, dose_rate=curve)
    model = TumourGrowthPDE(g, alpha_per_Gy=0.3, beta_per_Gy2=0.03, repair_half_time_h=1.5, **kw)
    with pytest.raises(InputError, match=r"dose_rate maps have shape \(2, 4, 4\)"):
        simulate_growth(model, 0.1, times, dose_rate=([0.0, 1.0], np.ones((2, 4, 4))))
    with pytest.raises(InputError, match=r"dose_rate times_h = \[1.0, 0.0\]"):
        simulate_growth(model, 0.1, times, dose_rate=([1.0, 0.0], np.ones((2, 8, 8))))
    with pytest.raises(InputError, match=r"dose_rate\(t\) returns shape \(3,\)"):
        simulate_growth(model, 0.1, times, dose_rate=lambda t: jnp.ones(3) * t)
    with pytest.raises(InputError, match="dose_rate = 'high'"):
        simulate_growth(model, 0.1, times, dose_rate="high")
    limit = 1.0 / float(model.max_rate_per_h)  # h^2 / (2 d D) = 0.3125 h
    assert limit == pytest.approx(0.25 / (4 * 0.1))
    with pytest.raises(InputError, match=r"dt_h = 1.0 h exceeds the explicit stability limit"):
        simulate_growth(model, 0.1, times, method="explicit", dt_h=1.0)
    with pytest.raises(InputError, match="front_position_mm needs a 1-D grid"):
        front_position_mm(np.ones(g.shape), g)

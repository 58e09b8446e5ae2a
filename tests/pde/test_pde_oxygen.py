"""Tissue oxygen against analytic solutions: Krogh's cylinder, the 1-D slab with zero-order
consumption (parabola, penetration depth sqrt(2 D Pv / M), two-layer diffusivity), the uniform
exchange balance, Michaelis-Menten and Vmax trends, the gradient in Vmax, and the
time-dependent right-hand side relaxing to the steady state."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax import InputError
from twinjax.pde import Grid, OxygenModel, hypoxic_fraction, oxygen_field, solve_pde

DIFF, PV = 7.2, 40.0  # mm^2/h (2e-9 m^2/s), mmHg
SLAB = Grid((200,), 0.001)  # 0.2 mm of tissue in 1 um cells; cell 0 is the vessel wall
WALL = np.arange(200) == 0
TISSUE = ~WALL  # the cells that consume
S = SLAB.coordinates_mm()[0] - 0.0005  # distance from the held vessel-cell centre (mm)

# One compiled Newton-GMRES solve for every slab model of the same structure.
_solve = eqx.filter_jit(lambda model: model.steady_state())


def _slab(**kw) -> OxygenModel:
    return OxygenModel(SLAB, vessel_mask=WALL, **kw)


def test_krogh_cylinder_oxygen_profile():
    """Zero-order consumption M around a vessel of radius rv held at Pv, no flux at rt:
    P(r) = Pv + M/(4D) (r^2 - rv^2) - M rt^2/(2D) ln(r/rv) (Krogh 1919)."""
    rv, rt, pv = 0.01, 0.1, 40.0  # mm, mm, mmHg
    diff = 7.2  # mm^2/h (2e-9 m^2/s)
    m = 3000.0 * diff  # mmHg/h
    km = 1e-3  # mmHg: Michaelis-Menten -> zero order where P >> Km
    n = 100
    g = Grid((n, n), 2 * rt / n)
    x, y = (c - rt for c in g.coordinates_mm())
    r = np.hypot(x, y)
    tissue, vessel = r <= rt, r < rv
    p = oxygen_field(g, vessel, diffusivity_mm2_per_h=diff, max_consumption_mmHg_per_h=m,
                     km_mmHg=km, vessel_po2_mmHg=pv, mask=tissue)  # fmt: skip
    krogh = pv + m / (4 * diff) * (r**2 - rv**2) - m * rt**2 / (2 * diff) * np.log(r / rv)
    ring = tissue & (r > rv + 2 * g.spacing_mm[0]) & (r < rt - 2 * g.spacing_mm[0])
    drop = pv - krogh[tissue & ~vessel].min()
    err = np.max(np.abs(np.asarray(p)[ring] - krogh[ring]))
    assert err < 0.05 * drop, (err, drop)
    assert p.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(p)[vessel], pv)
    np.testing.assert_array_equal(np.asarray(p)[~tissue], 0.0)


def test_slab_parabola_penetration_depth_and_summary():
    """A wall held at Pv, zero-order consumption M (Km = 1e-4 mmHg), no flux at L:
    p = Pv - M/(2D) ((L - x0)^2 - (x - L)^2) while oxygen reaches L (the finite-volume solution
    is exact for this quadratic); for a higher M, p = M/(2D) (d - s)^2 up to the penetration
    depth d = sqrt(2 D Pv / M) and anoxia beyond."""
    length, x0, km = 0.2, 0.0005, 1e-4
    # Oxygen reaches the far end: d = 0.24 mm > L.
    m = 1e4
    p = np.asarray(_solve(_slab(max_consumption_mmHg_per_h=m, km_mmHg=km)))
    x = S + x0
    parabola = PV - m / (2 * DIFF) * ((length - x0) ** 2 - (x - length) ** 2)
    assert parabola.min() > 10.0
    assert np.max(np.abs(p - parabola)) < 1e-3  # mmHg, of a 27.5 mmHg drop
    # Oxygen runs out: d = 0.103 mm (the tissue value of module docs: 15 mmHg/s).
    m = 15.0 * 3600.0
    model = _slab(max_consumption_mmHg_per_h=m, km_mmHg=km)
    p = np.asarray(_solve(model))
    depth = np.sqrt(2 * DIFF * PV / m)
    analytic = m / (2 * DIFF) * np.maximum(depth - S, 0.0) ** 2
    assert np.max(np.abs(p - analytic)) < 1e-3 * PV
    eps = 1e-3  # where p falls below eps Pv: s = d (1 - sqrt(eps))
    i = int(np.argmax(p < eps * PV))
    s_eps = S[i - 1] + (p[i - 1] - eps * PV) / (p[i - 1] - p[i]) * (S[i] - S[i - 1])
    assert s_eps == pytest.approx(depth * (1 - np.sqrt(eps)), rel=2e-3)
    # Balance: all the oxygen consumed enters through the wall's face.
    consumed = float(jnp.sum(model.consumption_rate(jnp.asarray(p))))
    influx = DIFF * (PV - p[1]) / SLAB.spacing_mm[0] ** 2
    assert consumed == pytest.approx(influx, rel=1e-8)
    # Summary statistics of the tissue cells against the analytic profile at the same points.
    summ = model.summary(jnp.asarray(p))
    exact = analytic[TISSUE]
    for t in (2.5, 5.0, 10.0):
        assert float(summ[f"fraction_below_{t:g}_mmHg"]) == pytest.approx(
            np.mean(exact < t), abs=1.5 / TISSUE.sum()
        )
    assert float(summ["median_mmHg"]) == pytest.approx(np.median(exact), abs=0.05)
    assert float(summ["mean_mmHg"]) == pytest.approx(np.mean(exact), rel=1e-3)


def test_two_layer_diffusivity_slab():
    """Fibrotic outer layer (D/4 beyond 0.05 mm): flux continuity gives p' = -M (L - x) / D(x),
    a piecewise parabola; the harmonic-mean face is exact but for an O(M h^2 / D) term at the
    interface."""
    m, km, length, x0 = 4000.0, 1e-4, 0.2, 0.0005
    x = S + x0
    d_map = np.where(x < 0.05, DIFF, DIFF / 4)
    p = np.asarray(_solve(OxygenModel(SLAB, vessel_mask=WALL, diffusivity_mm2_per_h=d_map,
                                      max_consumption_mmHg_per_h=m, km_mmHg=km)))  # fmt: skip

    def drop(a, b, d):  # integral of M (L - xi) / d over [a, b]
        return m / d * ((length - a) ** 2 - (length - b) ** 2) / 2

    inner = np.minimum(x, 0.05)
    exact = PV - drop(x0, inner, DIFF) - np.where(x > 0.05, drop(0.05, x, DIFF / 4), 0.0)
    assert exact.min() > 5.0
    bound = m * SLAB.spacing_mm[0] ** 2 / 8 * (4 / DIFF - 1 / DIFF) + 1e-3
    assert np.max(np.abs(p - exact)) < bound
    # The fibrotic layer costs oxygen: 4x the gradient of the homogeneous slab beyond 0.05 mm.
    homog = PV - drop(x0, x, DIFF)
    assert p[-1] < homog[-1] - 10.0


def test_michaelis_menten_and_vmax_trends():
    """Km comparable to p lowers consumption: the mean pO2 rises and the total consumption
    falls monotonically with Km (and never exceeds Vmax per cell); the hypoxic fraction
    (< 10 mmHg) rises monotonically with Vmax."""
    means, totals = [], []
    for km in (1e-4, 0.5, 2.5, 10.0):
        model = _slab(km_mmHg=km)
        p = _solve(model)
        rate = model.consumption_rate(p)
        assert float(jnp.max(rate)) <= float(model.max_consumption_mmHg_per_h)
        means.append(float(jnp.mean(p[TISSUE])))
        totals.append(float(jnp.sum(rate)))
    assert np.all(np.diff(means) > 0), means
    assert np.all(np.diff(totals) < 0), totals
    fractions = []
    for vmax in (1e4, 3e4, 5.4e4, 1.2e5):
        p = _solve(_slab(max_consumption_mmHg_per_h=vmax))
        fractions.append(float(hypoxic_fraction(p, TISSUE, threshold_mmHg=10.0)))
    assert np.all(np.diff(fractions) >= 0) and fractions[-1] > fractions[0] + 0.3, fractions
    assert fractions[0] == 0.0


def test_gradient_in_vmax_matches_finite_differences():
    """d mean(pO2) / d Vmax through the Newton solve (implicit function theorem) equals a
    central difference."""

    def mean_po2(vmax):
        return jnp.mean(_solve(_slab(max_consumption_mmHg_per_h=vmax))[TISSUE])

    vmax, h = 54000.0, 5.0
    grad = float(jax.grad(mean_po2)(vmax))
    fd = (float(mean_po2(vmax + h)) - float(mean_po2(vmax - h))) / (2 * h)
    assert grad < 0
    assert grad == pytest.approx(fd, rel=1e-5)


def test_exchange_supply_balance_and_relaxation():
    """A uniform exchange k (Pv - p) against uniform Michaelis-Menten consumption has the
    steady state k (Pv - p) = Vmax p / (p + Km) (a quadratic's root). With a necrotic half
    (no consumption) the time-dependent right-hand side, integrated from anoxia, relaxes to
    the Newton steady state."""
    g = Grid((6, 6), 0.05)
    k, vmax, km = 3000.0, 54000.0, 2.5
    model = OxygenModel(g, supply_rate_per_h=k, max_consumption_mmHg_per_h=vmax, km_mmHg=km)
    solve = eqx.filter_jit(lambda mdl: mdl.steady_state())
    b = k * PV - k * km - vmax
    root = (b + np.sqrt(b * b + 4 * k * k * PV * km)) / (2 * k)
    np.testing.assert_allclose(solve(model), root, rtol=1e-10)
    cellularity = np.ones(g.shape)
    cellularity[:, :3] = 0.0  # necrotic half
    model = OxygenModel(g, supply_rate_per_h=k, max_consumption_mmHg_per_h=vmax, km_mmHg=km,
                        consumption=cellularity)  # fmt: skip
    steady = solve(model)
    p = solve_pde(model.rate, jnp.zeros(g.shape), jnp.array([0.0, 0.02]), method="adaptive",
                  rtol=1e-10, atol=1e-10)[-1]  # fmt: skip
    np.testing.assert_allclose(p, steady, rtol=1e-7)
    # Oxygen diffuses from the necrotic half into the consuming half: pO2 falls across the
    # interface, stays below Pv in the necrotic half and above the uniform root in the other.
    row = np.asarray(steady[0])
    assert np.all(np.diff(row) < 0) and root < row[-1] and row[0] < PV - 0.5, row


def test_bad_input():
    g = Grid((8, 8), 0.5)
    ves = np.zeros(g.shape, bool)
    ves[4, 4] = True
    with pytest.raises(InputError, match=r"max_consumption_mmHg_per_h = -1.0; allowed: >= 0"):
        OxygenModel(g, vessel_mask=ves, max_consumption_mmHg_per_h=-1.0)
    with pytest.raises(InputError, match=r"km_mmHg = 0.0; allowed: > 0"):
        OxygenModel(g, vessel_mask=ves, km_mmHg=0.0)
    cons = np.ones(g.shape)
    cons[1, 2] = np.nan
    with pytest.raises(InputError, match="consumption has 1 NaN"):
        OxygenModel(g, vessel_mask=ves, consumption=cons)
    with pytest.raises(InputError, match=r"diffusivity_mm2_per_h has shape \(8, 7\)"):
        OxygenModel(g, vessel_mask=ves, diffusivity_mm2_per_h=np.ones((8, 7)))
    with pytest.raises(InputError, match=r"supply_rate_per_h has shape \(4, 4\)"):
        OxygenModel(g, supply_rate_per_h=np.ones((4, 4)))
    with pytest.raises(InputError, match="vessel_mask is empty"):
        OxygenModel(g, vessel_mask=np.zeros(g.shape, bool))
    with pytest.raises(InputError, match="supply_rate_per_h is 0 in every tissue cell"):
        OxygenModel(g, supply_rate_per_h=0.0)
    with pytest.raises(InputError, match="no oxygen supply"):
        OxygenModel(g)
    with pytest.raises(InputError, match="vessel_mask has 1 cells outside mask"):
        OxygenModel(g, vessel_mask=ves, mask=~ves)
    with pytest.raises(InputError, match="diffusivity_mm2_per_h has min 0.0 in the tissue"):
        OxygenModel(g, vessel_mask=ves, diffusivity_mm2_per_h=np.where(ves, 1.0, 0.0))
    with pytest.raises(InputError, match="vessels has dtype int64"):
        oxygen_field(g, ves.astype(np.int64))
    with pytest.raises(InputError, match=r"mask has shape \(3,\)"):
        hypoxic_fraction(np.ones(g.shape), np.ones(3, bool))
    with pytest.raises(InputError, match=r"threshold_mmHg = -5.0; allowed: > 0"):
        hypoxic_fraction(np.ones(g.shape), threshold_mmHg=-5.0)

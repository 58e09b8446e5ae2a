"""Tissue-scale PET tracer models against the exact two-tissue compartment model (no diffusion),
tracer balance on closed and exchanging grids, the FMISO oxygen-trapping ratio, the FLT fibrosis
and trapping-boundary profiles (the discrete screening length of the free tracer), and gradients
against finite differences.

Every solve uses the same grid shape, output times and tolerances, so one compilation of the
solver serves the whole file (the maps are traced arrays)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax import InputError
from twinjax.models.pet import FengInput, two_tissue
from twinjax.pde import (
    Grid,
    SampledInput,
    TracerParams,
    TracerPDE,
    fdg_model,
    flod_model,
    flt_model,
    fmiso_model,
    kelly_brady_trapping,
    simulate_tracer,
    tacs,
)

GRID = Grid((2, 24), 0.5)  # a 12 mm line of 0.5 mm cells, two rows
TIMES = (0.05, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0)  # h
AIF = FengInput.fdg_reference()  # uCi/mL, decay-corrected


def run(model, params=None, **kw):
    # Always with the exchange accumulators: one state structure, one compilation.
    return simulate_tracer(model, params, TIMES, method="adaptive", rtol=1e-10, atol=1e-12,
                           track_exchange=True, **kw)  # fmt: skip


def _maps(seed):
    rng = np.random.default_rng(seed)
    u = lambda lo, hi: rng.uniform(lo, hi, GRID.shape)  # noqa: E731
    return dict(K1_per_h=u(1.0, 8.0), k2_per_h=u(2.0, 10.0), k3_per_h=u(0.1, 5.0),
                k4_per_h=u(0.0, 0.5), vb=u(0.0, 0.1))  # fmt: skip


@jax.jit
def _exact(k1, k2, k3, k4, vb):
    # Broadcast over cells: rates (N, 1) x times (T,) -> (N, T); jitted (eager is slow).
    return two_tissue(jnp.asarray(TIMES), k1, k2, k3, k4, AIF, vb)


def _two_tissue_maps(m, half_life_h=None):
    """The exact 2TCM (twinjax.models.pet) of every cell, (T, *shape)."""
    keys = ("K1_per_h", "k2_per_h", "k3_per_h", "k4_per_h", "vb")
    cells = [np.broadcast_to(np.asarray(m.get(k, 0.0), dtype=float), GRID.shape).reshape(-1, 1)
             for k in keys]  # fmt: skip
    out = np.asarray(_exact(*cells)).T.reshape((len(TIMES),) + GRID.shape)
    if half_life_h is not None:
        out = out * np.exp(-math.log(2.0) / half_life_h * np.asarray(TIMES))[:, None, None]
    return out


def test_without_diffusion_every_cell_is_the_two_tissue_model():
    """D = 0, heterogeneous maps: each cell is the exact 2TCM (twinjax.models.pet) with its own
    K1, k2, k3, k4, vb and the same Feng input; also with 18F decay (not decay-corrected), and
    for fdg_model's maps."""
    m = _maps(0)
    got = run(TracerPDE(GRID, AIF, **m))
    exact = _two_tissue_maps(m)
    err = np.max(np.abs(np.asarray(got.total) - exact) / exact)
    assert err < 1e-6, err
    np.testing.assert_allclose(got.plasma, AIF(jnp.asarray(TIMES)), rtol=1e-14)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(got))
    # 18F (ICRP-107 half-life 1.8295 h): every output is multiplied by exp(-lambda t).
    got = run(TracerPDE(GRID, AIF, **m, half_life_h=1.8295))
    np.testing.assert_allclose(got.total, _two_tissue_maps(m, 1.8295), rtol=1e-6)
    # fdg_model: the Phelps et al. (1979) grey-matter rates, perfusion scaling K1 and k2 and
    # hexokinase expression scaling k3.
    perf, hk = m["K1_per_h"] / 4.0, m["k3_per_h"] / 2.0
    got = run(fdg_model(GRID, AIF, perfusion=perf, hexokinase=hk, diffusivity_mm2_per_h=0.0))
    ref = dict(K1_per_h=0.102 * 60 * perf, k2_per_h=0.130 * 60 * perf, k3_per_h=0.062 * 60 * hk,
               k4_per_h=0.0068 * 60)  # fmt: skip
    np.testing.assert_allclose(got.total, _two_tissue_maps(ref), rtol=1e-6)


def test_uniform_maps_with_diffusion_stay_the_two_tissue_model():
    """A uniform field has no gradients: diffusion changes nothing."""
    m = {k: np.full(GRID.shape, v[0, 0]) for k, v in _maps(1).items()}
    got = run(TracerPDE(GRID, AIF, **m, diffusivity_mm2_per_h=2.0))
    np.testing.assert_allclose(got.total, _two_tissue_maps(m), rtol=1e-6)


def test_closed_grid_bolus_conserves_tracer():
    """No vascular exchange (K1 = k2 = 0), heterogeneous diffusivity with an impermeable block,
    trapping and release: free + bound amount is constant; the bolus spreads."""
    rng = np.random.default_rng(2)
    d = rng.uniform(0.2, 3.0, GRID.shape)
    d[:, 15:18] = 0.0
    free0 = np.zeros(GRID.shape)
    free0[:, 5:8] = 100.0
    free0[:, 16] = 7.0  # inside the block: stays there, minus what it traps
    model = TracerPDE(GRID, AIF, K1_per_h=0.0, k2_per_h=0.0, k3_per_h=rng.uniform(0, 2, GRID.shape),
                      k4_per_h=0.3, diffusivity_mm2_per_h=d)  # fmt: skip
    a = run(model, initial_free=free0, initial_bound=np.full(GRID.shape, 1.0))
    amount = np.asarray(a.free.sum(axis=(1, 2)) + a.bound.sum(axis=(1, 2, 3)))
    m0 = free0.sum() + GRID.n_cells
    assert np.max(np.abs(amount - m0)) / m0 < 1e-10
    assert float(a.free[-1, 0, 10]) > 1.0  # it moved
    block = np.asarray(a.free[:, :, 16] + a.bound[:, 0, :, 16])
    np.testing.assert_allclose(block, 8.0, rtol=1e-10)  # sealed by its D = 0 faces


def test_exchange_balance_equals_influx_minus_efflux():
    """With plasma exchange and diffusion the tissue amount changes by influx - efflux, and the
    cumulative influx of each cell is exactly K1 * int_0^t Cp (FengInput.integral)."""
    m = _maps(3)
    rng = np.random.default_rng(3)
    model = TracerPDE(GRID, AIF, **m, diffusivity_mm2_per_h=rng.uniform(0.1, 2.0, GRID.shape))
    a = run(model)
    tissue = np.asarray(a.free.sum(axis=(1, 2)) + a.bound.sum(axis=(1, 2, 3)))
    net = np.asarray((a.influx - a.efflux).sum(axis=(1, 2)))
    assert np.max(np.abs(tissue - net)) / tissue.max() < 1e-10
    influx = m["K1_per_h"][None] * np.asarray(AIF.integral(jnp.asarray(TIMES)))[:, None, None]
    np.testing.assert_allclose(a.influx, influx, rtol=1e-8)
    assert np.all(np.asarray(a.efflux)[1:] > 0)


def test_fmiso_hypoxic_trapping_follows_the_kelly_brady_law():
    """pO2 2 mmHg vs 40 mmHg with k3 << k2 (trapping-limited): the trapped FMISO at 2-4 h
    differs by the trapping law's ratio (K + 40)/(K + 2) = 12.18 (K = 1.4 mmHg), and the
    hypoxic class's total TAC is higher, increasingly so (the free tracer, equal in both, still
    dominates the oxic cells' activity)."""
    po2 = np.full(GRID.shape, 40.0)
    po2[:, :12] = 2.0
    model = fmiso_model(GRID, AIF, po2, K1_per_h=3.0, k2_per_h=3.0, k_max_per_h=0.1)
    a = run(model)
    law = float(kelly_brady_trapping(2.0, 1.0) / kelly_brady_trapping(40.0, 1.0))
    assert law == pytest.approx(41.4 / 3.4)
    late = slice(4, 7)  # 2, 3, 4 h
    ratio = np.asarray(a.bound[late, 0, 0, 2] / a.bound[late, 0, 0, 21])
    np.testing.assert_allclose(ratio, law, rtol=0.02)
    # First-order correction: the free tracer is K1 Cp / (k2 + k3) in each cell.
    k3h, k3o = 0.1 * 1.4 / 3.4, 0.1 * 1.4 / 41.4
    np.testing.assert_allclose(ratio, law * (3.0 + k3o) / (3.0 + k3h), rtol=2e-3)
    curves = tacs(a, (po2 < 10).astype(int))
    contrast = np.asarray(curves[1] / curves[0])
    assert np.all(contrast[late] > 1.05) and np.all(np.diff(contrast[late]) > 0)


def test_flod_delivery_is_renkin_crone_and_flow_limited():
    """FLOD: K1 = F (1 - exp(-PS/F)) -> F when PS >> F, k2 = K1 / V_d; perfusion_scale acts on
    F inside the extraction; the solve equals fmiso_model with those K1, k2."""
    rng = np.random.default_rng(4)
    f = rng.uniform(0.5, 6.0, GRID.shape)
    po2 = rng.uniform(0.0, 60.0, GRID.shape)
    model = flod_model(GRID, AIF, po2, f, permeability_surface_per_h=4.0, k_max_per_h=0.3,
                       distribution_volume=0.8)  # fmt: skip
    k1, k2, k3, _ = model.rates(TracerParams(perfusion_scale=2.0))
    np.testing.assert_allclose(k1, 2 * f * (1 - np.exp(-4.0 / (2 * f))), rtol=1e-13)
    np.testing.assert_allclose(k2, k1 / 0.8, rtol=1e-13)
    np.testing.assert_allclose(k3[0], 0.3 * 1.4 / (1.4 + po2), rtol=1e-13)
    fast = flod_model(GRID, AIF, po2, f, permeability_surface_per_h=1e4, k_max_per_h=0.3)
    np.testing.assert_allclose(fast.rates(TracerParams())[0], f, rtol=1e-12)
    k1u, k2u, _, _ = model.rates(TracerParams())
    same = fmiso_model(GRID, AIF, po2, K1_per_h=np.asarray(k1u), k2_per_h=np.asarray(k2u),
                       k_max_per_h=0.3)  # fmt: skip
    np.testing.assert_allclose(run(model).total, run(same).total, rtol=1e-9)


def test_flt_fibrosis_lowers_uptake():
    """Fibrosis (r_D = r_P = 0.5) in half the line: lower TAC at every time; far from the border
    each cell is the 2TCM with K1 and k2 halved."""
    fib = np.zeros(GRID.shape)
    fib[:, 12:] = 1.0
    model = flt_model(GRID, AIF, K1_per_h=6.0, k2_per_h=8.0, k3_per_h=2.0, fibrosis=fib,
                      fibrosis_diffusivity_reduction=0.5, fibrosis_perfusion_reduction=0.5)  # fmt: skip
    a = run(model)
    curves = tacs(a.total, fib)
    assert np.all(np.asarray(curves[1] < curves[0]))
    exact = _two_tissue_maps(dict(K1_per_h=6.0 * (1 - 0.5 * fib), k2_per_h=8.0 * (1 - 0.5 * fib),
                                  k3_per_h=2.0))  # fmt: skip
    np.testing.assert_allclose(a.total[:, :, [0, 23]], exact[:, :, [0, 23]], rtol=1e-6)


def test_flt_diffusion_smooths_a_sharp_trapping_boundary():
    """Cellularity 1 | 0.2 (k3 = 3 | 0.6 /h) at x = 6 mm. Without diffusion every profile is a
    step. With diffusion the free FLT profile is monotone across the boundary and its deviation
    from each plateau decays by the discrete screening factor r, r + 1/r = 2 + (k2 + k3 +
    lambda3) h^2 / D (late Cp ~ exp(lambda3 t)); the trapped FLT is enhanced on the trapping
    side of the edge (free tracer diffuses into it)."""
    cell = np.ones(GRID.shape)
    cell[:, 12:] = 0.2
    kw = dict(K1_per_h=6.0, k2_per_h=8.0, k3_per_h=3.0, cellularity=cell)
    step = run(flt_model(GRID, AIF, **kw, diffusivity_mm2_per_h=0.0)).total[-1, 0]
    np.testing.assert_allclose(step[:12], step[0], rtol=1e-12)
    np.testing.assert_allclose(step[12:], step[-1], rtol=1e-12)
    model = flt_model(GRID, AIF, **kw)
    d = float(model.kinetics.diffusion.face_rate[1][0, 0]) * 0.25  # the model's D (mm^2/h)
    a = run(model)
    free = np.asarray(a.free[-1, 0])
    assert np.all(np.diff(free) > 0)  # monotone
    assert free[0] < free[11] < free[12] < free[-1]
    lam3 = float(AIF.lambda3)
    for side, k3, dev in (
        ("trap", 3.0, free[11::-1] - free[0]),
        ("low", 0.6, free[-1] - free[12:]),
    ):
        s = 2.0 + (8.0 + k3 + lam3) * 0.25 / d
        r = (s - math.sqrt(s * s - 4.0)) / 2.0
        np.testing.assert_allclose(dev[1:4] / dev[:3], r, rtol=1e-4, err_msg=side)
    bound = np.asarray(a.bound[-1, 0, 0])
    assert bound[11] > 1.02 * bound[0] and bound[12] < bound[-1]


def test_gradients_match_central_differences():
    """d mean(total at 4 h) / d scale, by reverse mode through the solve, against central
    differences (step 1e-4 relative) for every scale of TracerParams."""
    cell = np.where(GRID.coordinates_mm()[1] < 6.0, 1.0, 0.3)
    model = flt_model(GRID, AIF, K1_per_h=6.0, k2_per_h=8.0, k3_per_h=2.0, k4_per_h=0.1,
                      cellularity=cell, vb=0.05)  # fmt: skip

    def loss(p):
        return jnp.mean(run(model, p).total[-1])

    p0 = TracerParams(trapping_scale=1.2, perfusion_scale=0.9, diffusivity_scale=1.5)
    g = jax.grad(loss)(p0)
    for name in _SCALES:
        x = float(getattr(p0, name))
        h = 1e-4 * x
        up = _replace(p0, name, x + h)
        dn = _replace(p0, name, x - h)
        fd = (float(loss(up)) - float(loss(dn))) / (2 * h)
        assert float(getattr(g, name)) == pytest.approx(fd, rel=1e-4), name
    assert float(g.trapping_scale) > 0 and float(g.perfusion_scale) > 0


_SCALES = ("perfusion_scale", "efflux_scale", "trapping_scale", "release_scale",
           "diffusivity_scale")  # fmt: skip


def _replace(p, name, value):
    return TracerParams(**{k: (value if k == name else getattr(p, k)) for k in _SCALES})


def test_sampled_input_and_tacs():
    """A sampled input is linear between samples, with an implied zero at t = 0; labels average
    their cells."""
    inp = SampledInput([0.5, 1.0, 3.0], [4.0, 2.0, 1.0])
    np.testing.assert_allclose(inp(jnp.array([0.0, 0.25, 0.75, 2.0, 3.0])),
                               [0.0, 2.0, 3.0, 1.5, 1.0], rtol=1e-15)  # fmt: skip
    assert TracerPDE(GRID, inp, K1_per_h=1.0, k2_per_h=1.0).kink_times_h == (0.5, 1.0)
    lab = np.arange(GRID.n_cells).reshape(GRID.shape) % 3
    maps = np.random.default_rng(5).uniform(size=(2,) + GRID.shape)
    out = tacs(maps, lab)
    assert sorted(out) == [0, 1, 2]
    np.testing.assert_allclose(out[2], maps[:, lab == 2].mean(axis=1), rtol=1e-14)


def test_bad_input():
    m = _maps(6)
    with pytest.raises(InputError, match=r"K1_per_h has shape \(2, 23\)"):
        TracerPDE(GRID, AIF, **{**m, "K1_per_h": np.ones((2, 23))})
    with pytest.raises(InputError, match="k3_per_h has min -0.5"):
        TracerPDE(GRID, AIF, **{**m, "k3_per_h": -0.5})
    bad = m["k2_per_h"].copy()
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="k2_per_h has 1 NaN"):
        TracerPDE(GRID, AIF, **{**m, "k2_per_h": bad})
    with pytest.raises(InputError, match=r"vb has max 1.0; allowed: in \[0, 1\)"):
        TracerPDE(GRID, AIF, **{**m, "vb": 1.0})
    with pytest.raises(InputError, match="pO2_mmHg has shape"):
        fmiso_model(GRID, AIF, np.ones((24, 2)), K1_per_h=1.0, k2_per_h=1.0, k_max_per_h=0.1)
    with pytest.raises(InputError, match="pO2_mmHg has min -1.0"):
        fmiso_model(GRID, AIF, -1.0, K1_per_h=1.0, k2_per_h=1.0, k_max_per_h=0.1)
    with pytest.raises(InputError, match="k_max_per_h = -0.1"):
        fmiso_model(GRID, AIF, 5.0, K1_per_h=1.0, k2_per_h=1.0, k_max_per_h=-0.1)
    with pytest.raises(InputError, match="fibrosis_perfusion_reduction is None"):
        flt_model(GRID, AIF, K1_per_h=1.0, k2_per_h=1.0, k3_per_h=1.0, fibrosis=1.0,
                  fibrosis_diffusivity_reduction=0.5)  # fmt: skip
    with pytest.raises(InputError, match="cellularity has max 2.0"):
        flt_model(GRID, AIF, K1_per_h=1.0, k2_per_h=1.0, k3_per_h=1.0, cellularity=2.0)
    with pytest.raises(InputError, match="TracerParams.trapping_scale = -1.0"):
        TracerParams(trapping_scale=-1.0)
    with pytest.raises(InputError, match="TracerParams.perfusion_scale = nan"):
        TracerParams(perfusion_scale=float("nan"))
    with pytest.raises(InputError, match="K1_per_h/k2_per_h given with perfusion_per_h"):
        TracerPDE(GRID, AIF, **m, perfusion_per_h=1.0)
    with pytest.raises(InputError, match="plasma_input is a ndarray"):
        TracerPDE(GRID, np.ones(3), **m)
    model = TracerPDE(GRID, AIF, **m)
    with pytest.raises(InputError, match="sorted times >= 0 h"):
        simulate_tracer(model, None, [1.0, 0.5])
    with pytest.raises(InputError, match="exceeds the explicit stability limit"):
        simulate_tracer(model, None, [0.0, 1.0], method="explicit", dt_h=0.5)
    with pytest.raises(InputError, match="after the last plasma sample"):
        simulate_tracer(TracerPDE(GRID, SampledInput([0.0, 1.0], [0.0, 2.0]), **m), None, [2.0])
    with pytest.raises(InputError, match="initial_bound has shape"):
        simulate_tracer(model, None, [1.0], initial_bound=np.ones((2, 2, 24)))
    with pytest.raises(InputError, match=r"labels has shape \(24, 2\)"):
        tacs(np.ones((3, 2, 24)), np.zeros((24, 2), int))
    with pytest.raises(InputError, match="method = 'rk4'"):
        simulate_tracer(model, None, [1.0], method="rk4")

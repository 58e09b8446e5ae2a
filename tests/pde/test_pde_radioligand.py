"""Radioligand therapy at tissue scale: the review's qualitative findings for 177Lu and 225Ac
PSMA ligands on a heterogeneous tumour (Abdollahi et al. 2023/2024; Hong et al. 2024,
Theranostics 14:7122), the well-mixed ODE limit, the exact hot-activity balance, the uniform-map
dose of the voxel kernel, the Lea-Catcheside factor against the ODE of the radiobiology module,
and the PBPK plasma driving the tissue model end to end.

All 3-D solves share one grid shape, plasma length and number of output times, so the tissue
solver compiles once for the module."""

import itertools

import diffrax as dfx
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax
from twinjax import InputError
from twinjax.dosimetry import absorbed_dose_map, let_kernels, protraction_map, tissue_dose
from twinjax.pde import (
    PSMA617_TUMOUR,
    Grid,
    PlasmaInput,
    RadioligandTissue,
    template_rates,
)

N = 12  # cells per axis of every tissue solve
H = 0.05  # mm: resolves the 50-90 um alpha tracks of the Ac-225 chain
TIMES = np.array([0.0, 0.5, 2.0, 8.0, 24.0, 72.0, 168.0, 336.0])
KNOTS = np.union1d(np.geomspace(1e-3, 700.0, 20), TIMES)  # 28 plasma samples (h)
LIGAND_NMOL = 96.0  # the psma617_pbpk template's default administration
ACTIVITY_MBQ = {"Lu-177": 7400.0, "Ac-225": 8.0}  # 7.4 GBq; ~100 kBq/kg of Ac-225


def _plasma(nuclide: str) -> PlasmaInput:
    """A three-exponential PSMA plasma curve (nmol/L; peak 35 nM as the PBPK template's arterial
    plasma): the labelled share of the injected ligand, decaying in plasma."""
    total = 35.0 * np.exp(-3.0 * KNOTS) + 3.5 * np.exp(-0.15 * KNOTS) + 0.4 * np.exp(-0.02 * KNOTS)
    total[0] = 0.0  # the injection reaches the arterial plasma after t = 0
    nuc = twinjax.nuclide(nuclide)
    frac = ACTIVITY_MBQ[nuclide] / nuc.mbq_per_nmol / LIGAND_NMOL
    hot = frac * total * np.exp(-nuc.decay_constant_per_h * KNOTS)
    return PlasmaInput(KNOTS, hot, total - hot, nuclide=nuclide)


@pytest.fixture(scope="module")
def tumour():
    """A PSMA target map of blobs, 1 to ~5 x the background of 15 nmol/L, on 0.6 mm of tumour,
    and its interior cells (2 cells from the edges)."""
    g = Grid((N, N, N), H)
    x, y, z = g.coordinates_mm()
    rng = np.random.default_rng(3)
    target = np.full(g.shape, 15.0)
    for c in rng.uniform(0.0, N * H, (8, 3)):
        target += 60.0 * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 0.0128)
    interior = np.zeros(g.shape, bool)
    interior[2:-2, 2:-2, 2:-2] = True
    return {"grid": g, "target": target, "interior": interior, "po2": 40.0}


def _solve(tumour, nuclide, target_scale=1.0):
    model = RadioligandTissue(tumour["grid"], nuclide=nuclide)
    params = model.params(receptor_nmol_per_L=target_scale * tumour["target"])
    traj = model.simulate(params, _plasma(nuclide), TIMES, rtol=1e-3)
    return traj, tissue_dose(traj, po2_mmHg=tumour["po2"])


@pytest.fixture(scope="module")
def therapy(tumour):
    return {nuc: _solve(tumour, nuc) for nuc in ("Lu-177", "Ac-225")}


def test_lu177_dose_is_more_uniform_than_ac225(tumour, therapy):
    """Hong et al. 2024 / Abdollahi et al.: the mm range of Lu-177 betas smooths the target
    map, the ~70 um alpha tracks of the Ac-225 chain follow it."""
    cv = {}
    for nuc, (_, dose) in therapy.items():
        d = np.asarray(dose.absorbed_dose_Gy)[tumour["interior"]]
        cv[nuc] = d.std() / d.mean()
    print("CV", cv)
    assert cv["Lu-177"] < 0.7 * cv["Ac-225"]
    # dose metrics and DVH of the interior (twinjax.dosimetry)
    m = therapy["Lu-177"][1].metrics(tumour["interior"], dose="absorbed_dose_Gy")
    d_lu = np.asarray(therapy["Lu-177"][1].absorbed_dose_Gy)[tumour["interior"]]
    assert float(m["mean"]) == pytest.approx(d_lu.mean(), rel=1e-12)
    assert float(m["D98"]) <= float(m["D50"]) <= float(m["D2"]) <= float(m["max"])
    _, frac = therapy["Ac-225"][1].dvh(tumour["interior"])
    assert frac[0] == 1.0 and np.all(np.diff(frac) <= 0)
    # the alpha dose tracks the target map cell by cell
    d_ac = np.asarray(therapy["Ac-225"][1].absorbed_dose_Gy)[tumour["interior"]]
    r = np.corrcoef(d_ac, tumour["target"][tumour["interior"]])[0, 1]
    assert r > 0.8, r


def test_hypoxic_regions_receive_less_and_survive_more():
    """Abdollahi et al.: poorly vascularised, hypoxic domains receive less dose and keep more
    surviving cells, with both nuclides. 2.4 mm of tumour (uniform target, 57 nmol/L) whose
    first half is poorly perfused (2 % of the exchange rate) and hypoxic (pO2 2 vs 40 mmHg),
    compared with its mirror image; diffusion from the perfused half carries ligand a millimetre
    into the hypoxic half (measured dose ratio ~0.72 for both nuclides)."""
    g = Grid((N, N, N), 0.2)
    hyp = np.zeros(g.shape, bool)
    hyp[: N // 2] = True
    mirror = hyp[::-1]
    for nuc in ("Lu-177", "Ac-225"):
        model = RadioligandTissue(g, nuclide=nuc)
        kex = np.where(hyp, 0.02, 1.0) * PSMA617_TUMOUR["exchange_rate_per_h"]
        traj = model.simulate(model.params(exchange_rate_per_h=kex), _plasma(nuc), TIMES,
                              rtol=1e-3)  # fmt: skip
        dose = tissue_dose(traj, po2_mmHg=np.where(hyp, 2.0, 40.0))
        d = np.asarray(dose.absorbed_dose_Gy)
        ratio = d[hyp].mean() / d[mirror].mean()
        profile = d.mean(axis=(1, 2))
        print(nuc, "hypoxic / oxic mean dose", ratio)
        assert ratio < 0.8, nuc
        assert np.all(np.diff(profile[: N // 2]) > 0)  # rising towards the perfused half
        sf_hyp, sf_ox = (float(dose.surviving_fraction(m)) for m in (hyp, mirror))
        assert sf_hyp > 1.3 * sf_ox, (nuc, sf_hyp, sf_ox)


def test_ac225_kills_more_at_equal_mean_absorbed_dose(tumour, therapy):
    """Hong et al.: [225Ac]-PSMA is more effective than [177Lu]-PSMA. At one mean absorbed dose
    (20 Gy, reached by scaling the labelled fraction: exact) Ac-225 leaves far fewer cells."""
    sf = {}
    for nuc, (traj, dose) in therapy.items():
        factor = 20.0 / float(dose.absorbed_dose_Gy.mean())
        scaled = tissue_dose(traj.scale_activity(factor), po2_mmHg=tumour["po2"])
        assert float(scaled.absorbed_dose_Gy.mean()) == pytest.approx(20.0, rel=1e-9)
        sf[nuc] = float(scaled.surviving_fraction())
    print("SF at 20 Gy", sf)
    assert sf["Ac-225"] < 0.01 * sf["Lu-177"]
    # RBE 1 and no oxygen effect for alphas removes the advantage (the alpha part is the cause)
    traj, dose = therapy["Ac-225"]
    factor = 20.0 / float(dose.absorbed_dose_Gy.mean())
    same = tissue_dose(traj.scale_activity(factor), po2_mmHg=tumour["po2"], rbe_alpha=1.0,
                       alpha_oxygen_effect=True)  # fmt: skip
    assert float(same.surviving_fraction()) > 0.1 * sf["Lu-177"]


def test_survival_falls_with_target_density(tumour, therapy):
    """Hong et al.: strong negative correlation of PSMA density and survival (Ac-225)."""
    sf = [float(_solve(tumour, "Ac-225", s)[1].surviving_fraction()) for s in (0.25, 4.0)]
    sf.insert(1, float(therapy["Ac-225"][1].surviving_fraction()))
    print("SF vs density x0.25, x1, x4", sf)
    assert sf[0] > sf[1] > sf[2]


def test_hot_activity_balance(tumour, therapy):
    """Labelled ligand in the tissue = influx from plasma - efflux (back-flux and released
    radiometabolites) - decays, to rounding (the solver keeps it by construction); the influx
    integrated by the solver equals k_ex times the exact integral of the plasma curve."""
    for nuc, (traj, _) in therapy.items():
        lam = twinjax.nuclide(nuc).decay_constant_per_h
        hot = np.asarray(traj.hot_nmol_per_L).sum(axis=(1, 2, 3))
        influx = np.asarray(traj.influx_hot).sum(axis=(1, 2, 3))
        efflux = np.asarray(traj.efflux_hot).sum(axis=(1, 2, 3))
        decayed = lam * np.asarray(traj.cumulated_hot).sum(axis=(1, 2, 3))
        err = np.max(np.abs(hot - (influx - efflux - decayed))) / hot.max()
        assert err < 1e-8, (nuc, err)
        print(
            nuc, "influx, efflux, decayed, in tissue:", influx[-1], efflux[-1], decayed[-1], hot[-1]
        )
        assert decayed[-1] > 1e-3 * influx[-1] and efflux[-1] > 0.5 * influx[-1]
        exact = PSMA617_TUMOUR["exchange_rate_per_h"] * np.asarray(traj.plasma_hot_integral)
        np.testing.assert_allclose(np.asarray(traj.influx_hot)[:, 5, 6, 7], exact, rtol=2e-3,
                                   atol=1e-9 * exact.max())  # fmt: skip


def _well_mixed_reference(plasma, rates, lam, times):
    """The same binding system in one well-mixed cell, written out and solved independently."""
    kon, koff, kint, krel = (rates[k] for k in ("k_on_L_per_nmol_h", "k_off_per_h",
                                                "k_int_per_h", "k_rel_per_h"))  # fmt: skip
    r, kex, phi = rates["receptor_nmol_per_L"], rates["exchange_rate_per_h"], 0.38
    kt, hot_p, cold_p = (jnp.asarray(x) for x in (plasma.times_h, plasma.hot_nmol_per_L,
                                                   plasma.cold_nmol_per_L))  # fmt: skip

    def interp(t, c):  # linear up, log down between the samples
        i = jnp.clip(jnp.searchsorted(kt, t, side="right") - 1, 0, kt.shape[0] - 2)
        u = (t - kt[i]) / (kt[i + 1] - kt[i])
        c0, c1 = c[i], c[i + 1]
        down = (c1 < c0) & (c1 > 0)
        ratio = jnp.where(down, c1, 1.0) / jnp.where(down, c0, 1.0)
        return jnp.where(down, c0 * ratio**u, c0 + (c1 - c0) * u)

    def rhs(t, y, _):
        fh, fc, bh, bc, ih, ic = y
        free_r = r - bh - bc
        ch, cc = fh / phi, fc / phi
        return jnp.stack([
            kex * (interp(t, hot_p) - ch) - kon * free_r * ch + koff * bh - lam * fh,
            kex * (interp(t, cold_p) - cc) - kon * free_r * cc + koff * bc + lam * fh,
            kon * free_r * ch - (koff + kint + lam) * bh,
            kon * free_r * cc - (koff + kint) * bc + lam * bh,
            kint * bh - (krel + lam) * ih,
            kint * bc - krel * ic + lam * ih,
        ])  # fmt: skip

    # Explicit Tsit5 at a tolerance where accuracy, not stability, limits its steps.
    sol = dfx.diffeqsolve(
        dfx.ODETerm(rhs), dfx.Tsit5(), 0.0, float(times[-1]), 1e-4, jnp.zeros(6), None,
        saveat=dfx.SaveAt(ts=jnp.asarray(times)), max_steps=200_000,
        stepsize_controller=dfx.PIDController(rtol=1e-11, atol=1e-14, jump_ts=kt),
    )  # fmt: skip
    return np.asarray(sol.ys)


def test_no_diffusion_uniform_maps_equal_the_well_mixed_ode(tumour):
    g = tumour["grid"]
    model = RadioligandTissue(g, nuclide="Lu-177", diffusivity_mm2_per_h=0.0)
    params = model.params()  # PSMA617_TUMOUR everywhere
    plasma = _plasma("Lu-177")
    times = np.array([0.0, 0.05, 0.25, 1.0, 3.0, 8.0, 20.0, 48.0])
    traj = model.simulate(params, plasma, times, rtol=1e-6, atol=1e-10)
    ref = _well_mixed_reference(plasma, PSMA617_TUMOUR, model.decay_constant_per_h, times)
    for got, want in (
        (traj.bound_hot + traj.internalised_hot, ref[:, 2] + ref[:, 4]),
        (traj.bound_cold + traj.internalised_cold, ref[:, 3] + ref[:, 5]),
        (traj.free_hot, ref[:, 0]),
    ):
        got = np.asarray(got)
        assert np.ptp(got, axis=(1, 2, 3)).max() <= 1e-12 * np.abs(got).max()  # all cells alike
        np.testing.assert_allclose(got[:, 0, 0, 0], want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    # saturation: at 96 nmol the receptors are largely occupied early on
    occupancy = (ref[:, 2] + ref[:, 3]) / PSMA617_TUMOUR["receptor_nmol_per_L"]
    assert occupancy.max() > 0.5


def test_uniform_tia_map_gives_tia_times_kernel_sum():
    """Charged-particle equilibrium: where the kernel fits inside a uniform map, dose = TIA x the
    kernel's sum (= the local-deposition dose times the kernel's captured energy fraction)."""
    g = Grid((24, 24, 24), H)
    tia = np.full(g.shape, 37.0)
    hw = N - 1  # the kernels of the tissue grid (cached)
    for nuc, rbe in (("Lu-177", 1.0), ("Ac-225", 5.0)):
        low, high = let_kernels(g, nuc, half_width=hw)
        dose = np.asarray(absorbed_dose_map(tia, g, nuc, rbe_alpha=rbe, half_width=hw))
        total = low.values.sum() + (0.0 if high is None else rbe * high.values.sum())
        np.testing.assert_allclose(dose[hw:-hw, hw:-hw, hw:-hw], 37.0 * total, rtol=1e-10)
        assert 0.125 < dose[0, 0, 0] / dose[12, 12, 12] < 1.0  # a corner sees an octant and more
        if high is None:  # Lu-177: the kernel holds its captured share of the emitted energy
            local = twinjax.dosimetry.local_deposition_dose(tia, nuc, H)
            np.testing.assert_allclose(dose[12, 12, 12], low.captured * float(local[12, 12, 12]),
                                       rtol=1e-10)  # fmt: skip
        else:  # the alpha part: the four alphas of the chain, ~98 % of the energy
            assert 0.95 < high.values.sum() / (low.values.sum() + high.values.sum()) < 0.995


def test_protraction_factor_matches_the_repair_ode():
    """The closed-form Lea-Catcheside factor of a sampled dose-rate curve (the
    `twinjax.radiobiology.SampledDoseRate` model: a jump at the start, linear pieces of 0.1 to
    200 repair half-times, an exponential tail) equals the repair ODE ``q' = R - mu q, J' = R q``,
    ``G D^2 = 2 J``, integrated by SciPy (DOP853) piece by piece; G is scale-free and -> 1 without
    repair."""
    from scipy.integrate import solve_ivp

    t = np.array([0.0, 0.0, 0.03, 0.5, 1.0, 3.0, 10.0, 24.0, 48.0, 100.0])
    rates = np.array([0.0, 0.5, 0.8, 1.2, 1.0, 0.9, 0.6, 0.4, 0.3, 0.12])
    k, t_rep = 0.05, 0.27
    mu = np.log(2.0) / t_rep
    edges = np.append(t, t[-1] + 40.0 / k)  # the tail to exp(-40)

    def rate(s):
        return (
            np.interp(s, t[1:], rates[1:]) if s <= t[-1] else rates[-1] * np.exp(-k * (s - t[-1]))
        )

    y = np.zeros(3)  # (D, q, J)
    for a, b in itertools.pairwise(edges[1:]):  # from the jump at t = 0
        sol = solve_ivp(lambda s, y: [rate(s), rate(s) - mu * y[1], rate(s) * y[1]], (a, b), y,
                        method="DOP853", rtol=1e-12, atol=1e-14)  # fmt: skip
        y = sol.y[:, -1]
    d, g = protraction_map(t, np.stack([rates, 0.5 * rates], axis=1), k, t_rep)
    assert float(d[0]) == pytest.approx(y[0], rel=1e-9)
    assert float(g[0]) == pytest.approx(2.0 * y[2] / y[0] ** 2, rel=1e-8)
    assert float(g[1]) == pytest.approx(float(g[0]), rel=1e-12)
    _, g_slow = protraction_map(t, rates, k, 1e12)
    assert float(g_slow) == pytest.approx(1.0, rel=1e-8)


def test_pbpk_plasma_drives_the_tissue_end_to_end(tumour):
    """psma617_pbpk, one 7.4 GBq / 96 nmol administration -> its arterial plasma -> a uniform
    tumour grid with the template's tumour1 rates: the cells' activity per mL follows the PBPK
    tumour compartment's (measured ratio 1.002-1.009 from 0.5 h to 2 weeks; TIA per mL 1.003).
    The tissue model replaces the organ's vascular space by its quasi-steady exchange
    Q PS / (Q + PS), and sees the plasma through 28 samples."""
    tpl = twinjax.load_template("psma617_pbpk")
    pbpk = twinjax.simulate(tpl.model, tpl.params, tpl.default_schedule(), KNOTS, rtol=1e-5,
                            atol=1e-8)  # fmt: skip
    plasma = PlasmaInput.from_trajectory(pbpk)
    assert plasma.nuclide == "Lu-177" and float(plasma.cold_nmol_per_L.max()) > 10.0
    rates = template_rates(tpl, "tumour1")
    assert rates["k_off_per_h"] / rates["k_on_L_per_nmol_h"] == pytest.approx(8.0)  # K_D 8 nM
    g = Grid((N, N, N), 0.2)
    model = RadioligandTissue(g, nuclide="Lu-177",
                              interstitial_fraction=rates["interstitial_fraction"])  # fmt: skip
    traj = model.simulate(model.params(**rates), plasma, TIMES, rtol=1e-3)
    cell = np.asarray(traj.activity_concentration_MBq_per_mL).mean(axis=(1, 2, 3))
    volume_mL = float(tpl.params["V_tumour1"]) * 1e3
    organ = (
        np.asarray(pbpk.activity("tumour1"))[np.searchsorted(KNOTS, TIMES)] / volume_mL
    )  # KNOTS holds TIMES
    ratio = cell[1:] / organ[1:]
    print("tissue / PBPK activity per mL", ratio)
    np.testing.assert_allclose(ratio, 1.0, atol=0.02)
    tia_ratio = (
        float(traj.tia_MBqh().sum())
        / (g.n_cells * g.cell_volume_mL)
        / (float(pbpk.tia("tumour1")) / volume_mL)
    )
    assert tia_ratio == pytest.approx(1.0, abs=0.01)


def test_bad_input(tumour, therapy):
    g = tumour["grid"]
    model = RadioligandTissue(g, nuclide="Ac-225")
    with pytest.raises(InputError, match=r"receptor_nmol_per_L has shape \(12, 12\)"):
        model.params(receptor_nmol_per_L=np.ones((12, 12)))
    bad = np.ones(g.shape)
    bad[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="receptor_nmol_per_L has 1 NaN"):
        model.params(receptor_nmol_per_L=bad)
    with pytest.raises(InputError, match="exchange_rate_per_h has min -1.0"):
        model.params(exchange_rate_per_h=-1.0)
    with pytest.raises(InputError, match="nuclide"):
        RadioligandTissue(g, nuclide="Xx-999")
    with pytest.raises(InputError, match="interstitial_fraction has max 1.5"):
        RadioligandTissue(g, interstitial_fraction=1.5)
    with pytest.raises(InputError, match="release = 'blood'"):
        RadioligandTissue(g, release="blood")
    with pytest.raises(InputError, match="k_recycle_per_h is required"):
        RadioligandTissue(g, receptor_recycling=True).params()
    with pytest.raises(InputError, match="plasma carries Lu-177, the tissue model Ac-225"):
        model.simulate(model.params(), _plasma("Lu-177"), TIMES)
    with pytest.raises(InputError, match="times_h ends at 0.0 h"):
        model.simulate(model.params(), _plasma("Ac-225"), [0.0])
    with pytest.raises(InputError, match="times_h starts at -1.0 h"):
        model.simulate(model.params(), _plasma("Ac-225"), [-1.0, 1.0])
    with pytest.raises(InputError, match="strictly increasing"):
        PlasmaInput([0.0, 2.0, 1.0], [0, 1, 1], [0, 1, 1])
    with pytest.raises(InputError, match=r"spacing_mm = \(0.05, 0.05, 0.1\); allowed: cubic"):
        absorbed_dose_map(np.ones((4, 4, 4)), Grid((4, 4, 4), (0.05, 0.05, 0.1)), "Lu-177")
    traj = therapy["Lu-177"][0]
    with pytest.raises(InputError, match="po2_mmHg has min -5.0"):
        tissue_dose(traj, po2_mmHg=-5.0)
    with pytest.raises(InputError, match=r"po2_mmHg has shape \(3,\)"):
        tissue_dose(traj, po2_mmHg=np.ones(3))
    with pytest.raises(InputError, match="rbe_alpha = 0.0"):
        tissue_dose(traj, rbe_alpha=0.0)
    with pytest.raises(InputError, match="more labelled ligand than ligand"):
        traj.scale_activity(100.0)
    with pytest.raises(InputError, match="organ = 'brain'"):
        template_rates("psma617_pbpk", "brain")

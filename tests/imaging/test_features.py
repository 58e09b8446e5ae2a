"""PET biomarkers against analytic values: SUV of a uniform phantom imaged end to end, SUVpeak on
smooth fields, MTV/TLG of spheres, heterogeneity features of two-level and noisy images, and the
Spearman link between biomarkers and the tissue truth of simulated lesions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twinjax import InputError, nuclide
from twinjax.imaging.features import (
    auc_csh,
    biomarkers,
    coefficient_of_variation,
    glcm_features,
    histogram_entropy,
    link_to_truth,
    mtv,
    segment,
    suv,
    suv_max,
    suv_mean,
    suv_peak,
    tlg,
)
from twinjax.imaging.synth import (
    Frames,
    Scanner,
    counts_to_image,
    simulate_image,
    to_scanner_grid,
)
from twinjax.pde import Grid

PEAK_RADIUS_MM = (3e3 / (4 * math.pi)) ** (1 / 3)  # 1 mL ball, PERCIST (Wahl et al. 2009)


def test_suv_of_a_uniform_phantom_imaged_end_to_end():
    """All of an injected activity A spread uniformly over a body of W kg (1 g/mL) is SUV 1
    everywhere (Thie 2004): imaged with physical decay, frame integration, PSF, voxels and decay
    correction to the administration, the interior reads SUV 1."""
    activity, weight = 370.0, 74.0  # MBq, kg -> 5 kBq/mL at administration
    lam = nuclide("F-18").decay_constant_per_h
    g = Grid((48, 48), 1.0)
    pet = Scanner(4.0, 6.0, sensitivity_cps_per_MBq=1500.0)
    times = np.linspace(0.9, 1.4, 51)
    conc = activity / (weight * 1e3) * np.exp(-lam * times)  # MBq/mL
    frames = Frames([1.0], [1.25])
    counts = simulate_image(times, conc[:, None, None] * np.ones(g.shape), g, pet, frames)
    img = counts_to_image(counts, pet, frames)[0]
    s = np.asarray(suv(img, activity, weight))
    assert s.dtype == np.float64
    tol = (lam * 0.01) ** 2 / 12 + 1e-12  # trapezoid error of the sampled decay curve
    np.testing.assert_allclose(s[4:8, 4:8], 1.0, rtol=tol)
    assert float(suv(2.5 * 5000.0, activity, weight)) == pytest.approx(2.5, rel=1e-14)


@pytest.mark.parametrize("h", [1.0, 2.0])
def test_suv_peak_on_smooth_fields(h):
    """Quadratic field 10 - k r^2 sampled at voxel centres: the mean over a 1 mL ball centred
    on the peak is 10 - k (3/5) R^2 = 8 (R = 6.2 mm); measured within 0.3 % (1 mm voxels) and
    1.3 % (2 mm), the O(h) error of partially covered voxels. A linear field restricted to
    centres whose ball is inside the image gives the value at the best centre exactly."""
    n = int(24 / h)
    coords = (np.arange(n) + 0.5) * h
    x = np.stack(np.meshgrid(coords, coords, coords, indexing="ij"))
    c = (n // 2 + 0.5) * h
    k = 2.0 / (0.6 * PEAK_RADIUS_MM**2)
    field = 10.0 - k * np.sum((x - c) ** 2, axis=0)
    peak = float(suv_peak(field, h))
    assert peak <= float(suv_max(field)) == pytest.approx(10.0)
    assert peak == pytest.approx(8.0, rel=3e-3 if h == 1.0 else 1.3e-2)
    lin = 3.0 + 0.1 * x[0]
    m = np.zeros(field.shape, dtype=bool)
    lo, hi = math.ceil(7.0 / h), n - math.ceil(7.0 / h)
    m[lo:hi, lo:hi, lo:hi] = True
    assert float(suv_peak(lin, h, m)) == pytest.approx(3.0 + 0.1 * coords[hi - 1], rel=1e-13)


def test_mtv_and_tlg_of_spheres():
    """A voxelised uniform sphere (SUV 4, 2 mm voxels) has MTV = its voxel count and TLG = 4 MTV;
    its partial-volume version (fine sphere averaged into voxels) has MTV within one voxel shell
    (4 pi R^2 h) of 4/3 pi R^3 at 41 % of SUVmax; TLG = SUVmean(MTV) * MTV."""
    radius, h = 8.0, 2.0
    fine = Grid((80, 80, 80), 0.5)
    x = fine.coordinates_mm()
    inside = sum((xi - 20.3) ** 2 for xi in x) <= radius**2
    frac = np.asarray(
        to_scanner_grid(inside.astype(float), fine, Scanner(h, 1.0, sensitivity_cps_per_MBq=1.0))
    )
    volume_mL = 4 / 3 * math.pi * radius**3 * 1e-3
    shell_mL = 4 * math.pi * radius**2 * h * 1e-3
    binary = 4.0 * (frac >= 0.5)
    assert float(mtv(binary, h)) == pytest.approx((frac >= 0.5).sum() * h**3 * 1e-3, rel=1e-14)
    assert float(tlg(binary, h)) == pytest.approx(4.0 * float(mtv(binary, h)), rel=1e-14)
    pv = 4.0 * frac
    got = float(mtv(pv, h))
    assert abs(got - volume_mL) < shell_mL
    assert abs(got - volume_mL) < 0.1 * volume_mL  # measured: +6.7 %
    seg = np.asarray(segment(pv))
    assert float(tlg(pv, h)) == pytest.approx(pv[seg].sum() * h**3 * 1e-3, rel=1e-13)
    assert float(tlg(pv, h)) == pytest.approx(float(suv_mean(pv, seg)) * got, rel=1e-14)
    # a fixed SUV threshold of 2.5 is the 62.5 %-coverage surface
    assert float(mtv(pv, h, suv_threshold=2.5)) == pytest.approx((frac >= 0.625).sum() * 8e-3)


def test_heterogeneity_features_analytic_and_monotonic():
    """Uniform: CV 0, entropy 0, AUC-CSH 1, GLCM contrast 0 and homogeneity 1. Two-level
    checkerboard (a, b): CV |a - b| / (a + b), entropy 1 bit, AUC-CSH (a + b) / 2b, contrast
    d^2 / 2 and homogeneity (1 + 1 / (1 + d^2)) / 2 over the 4 directions of 2-D (d = bin
    difference; 2 of the 4 neighbours differ). Growing noise raises CV, entropy and contrast
    and lowers AUC-CSH and homogeneity."""
    flat = np.full((16, 16), 3.0)
    assert coefficient_of_variation(flat) == pytest.approx(0.0, abs=1e-14)
    assert histogram_entropy(flat) == 0.0
    assert auc_csh(flat) == pytest.approx(1.0, rel=1e-14)
    assert glcm_features(flat) == {"contrast": 0.0, "homogeneity": 1.0}
    a, b = 2.0, 5.0
    check = np.where(np.add.outer(np.arange(16), np.arange(16)) % 2 == 0, a, b)
    d = (b - a) / 0.25
    assert coefficient_of_variation(check) == pytest.approx((b - a) / (a + b), rel=1e-14)
    assert histogram_entropy(check) == pytest.approx(1.0, rel=1e-14)
    assert auc_csh(check) == pytest.approx((a + b) / (2 * b), rel=1e-14)
    glcm = glcm_features(check)
    assert glcm["contrast"] == pytest.approx(d**2 / 2, rel=1e-14)
    assert glcm["homogeneity"] == pytest.approx((1 + 1 / (1 + d**2)) / 2, rel=1e-14)
    rng = np.random.default_rng(11)
    z = rng.standard_normal(flat.shape)
    feats = []
    for sd in (0.1, 0.3, 1.0):
        img = flat + sd * z
        f = glcm_features(img)
        feats.append(
            (
                coefficient_of_variation(img),
                histogram_entropy(img),
                f["contrast"],
                -auc_csh(img),
                -f["homogeneity"],
            )
        )
    assert np.all(np.diff(np.array(feats), axis=0) > 0)
    assert feats[0][0] == pytest.approx(0.1 * z.std() / 3.0, rel=0.02)


def test_link_to_truth_recovers_monotone_relations():
    rng = np.random.default_rng(2)
    hypoxic = rng.uniform(0.0, 0.6, 12)
    necrotic = rng.uniform(0.0, 0.3, 12)
    features = {
        "FMISO_TBR": np.exp(3 * hypoxic) + 1.0,  # increasing in hypoxia
        "AUC_CSH": 1.0 - necrotic**2,  # decreasing in necrosis
        "flat": np.ones(12),
    }
    truth = {"hypoxic_fraction": hypoxic, "necrotic_fraction": necrotic}
    links = link_to_truth(features, truth)
    assert links.n_cases == 12
    assert links.rho["FMISO_TBR"]["hypoxic_fraction"] == pytest.approx(1.0, abs=1e-12)
    assert links.rho["AUC_CSH"]["necrotic_fraction"] == pytest.approx(-1.0, abs=1e-12)
    assert links.strongest("FMISO_TBR")[0] == "hypoxic_fraction"
    assert links.strongest("AUC_CSH") == ("necrotic_fraction", pytest.approx(-1.0))
    assert math.isnan(links.rho["flat"]["hypoxic_fraction"])
    assert links.p_value["FMISO_TBR"]["hypoxic_fraction"] < 1e-6
    rows = [{k: float(v[i]) for k, v in features.items()} for i in range(12)]
    trows = [{k: float(v[i]) for k, v in truth.items()} for i in range(12)]
    assert link_to_truth(rows, trows).rho == links.rho
    assert "hypoxic_fraction" in links.table()


def test_biomarkers_of_simulated_lesions_link_to_their_tissue_truth():
    """Eight 2-D lesions (SUV 0.7 background) whose radius, receptor density (SUV of viable
    tissue) and necrotic (cold) core vary independently, imaged noise-free (5 mm PSF, 2 mm
    voxels). What each biomarker measures (Cavinato et al. 2025): TLG the total retained tracer
    (density x viable volume), SUVmax the receptor density, and MTV at 41 % the whole lesion's
    extent, necrotic core included (the blurred core stays above the threshold), not the viable
    volume."""
    fine = Grid((96, 96), 0.5)
    pet = Scanner(2.0, 5.0, sensitivity_cps_per_MBq=4e5)
    activity, weight = 300.0, 75.0  # SUV 1 = 4 kBq/mL
    lam = nuclide("F-18").decay_constant_per_h
    radius = np.array([6.0, 9.0, 7.0, 10.0, 8.0, 6.5, 8.5, 9.5])  # mm
    density = np.array([7.0, 4.0, 11.0, 6.0, 5.0, 8.0, 10.0, 9.0])
    necrotic = np.array([0.3, 0.1, 0.0, 0.5, 0.4, 0.2, 0.25, 0.05])  # area fraction of the core
    r = np.sqrt(sum((x - 24.0) ** 2 for x in fine.coordinates_mm()))
    maps = []
    for R, rho, nf in zip(radius, density, necrotic, strict=True):
        viable = (r <= R) & (r > R * np.sqrt(nf))
        maps.append(np.where(viable, rho, np.where(r <= R, 0.0, 0.7)) * 4e-3)  # MBq/mL
    times = np.array([0.9, 1.2])
    maps = np.stack(maps)[:, None] * np.exp(-lam * times)[None, :, None, None]
    frames = Frames([1.0], [1.1])
    counts = jax.jit(jax.vmap(lambda m: simulate_image(times, m, fine, pet, frames)))(maps)
    voi = np.zeros((24, 24), dtype=bool)
    voi[4:20, 4:20] = True  # the lesion (centre voxel 12) +- 16 mm
    cases = [
        biomarkers(counts_to_image(c, pet, frames)[0], 2.0, activity, weight, voi) for c in counts
    ]
    lesion_mL = np.pi * radius**2 * 1e-3  # 2-D: 1 mm thick
    viable_mL = lesion_mL * (1 - necrotic)
    truth = {
        "lesion_mL": lesion_mL,
        "viable_mL": viable_mL,
        "receptor_density": density,
        "necrotic_fraction": necrotic,
        "total_uptake": density * viable_mL,
    }
    links = link_to_truth(cases, truth)
    assert links.strongest("TLG_g") == ("total_uptake", pytest.approx(1.0))
    assert links.strongest("SUVmax")[0] == "receptor_density"
    assert links.rho["SUVmax"]["receptor_density"] > 0.85
    assert links.strongest("MTV_mL")[0] == "lesion_mL"
    assert links.rho["MTV_mL"]["lesion_mL"] > 0.8 > abs(links.rho["MTV_mL"]["viable_mL"])
    assert all(c["SUVpeak"] <= c["SUVmax"] for c in cases)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: suv(np.ones(3), 0.0, 70.0), "injected_activity_MBq = 0.0"),
        (lambda: suv(np.ones(3), 300.0, -70.0), "body_weight_kg = -70.0"),
        (lambda: suv(np.array([1.0, np.nan]), 300.0, 70.0), "NaN"),
        (lambda: suv_max(np.ones((4, 4)), np.ones((4, 3), dtype=bool)), "mask has shape"),
        (lambda: suv_mean(np.ones((4, 4)), np.zeros((4, 4), dtype=bool)), "mask is empty"),
        (lambda: suv_peak(np.ones((4, 4)), 0.0), "spacing_mm = 0.0"),
        (lambda: suv_peak(np.ones((2, 2, 2, 2)), 1.0), "1-D, 2-D or 3-D"),
        (lambda: mtv(np.ones((4, 4)), 1.0, fraction_of_max=1.5), "fraction_of_max = 1.5"),
        (lambda: histogram_entropy(np.ones(4), bin_width_suv=0.0), "bin_width_suv = 0.0"),
        (lambda: link_to_truth({"a": [1, 2, 3]}, {"b": [1, 2]}), "different numbers of cases"),
        (lambda: link_to_truth({"a": [1, 2, np.nan]}, {"b": [1, 2, 3]}), "in case 2"),
        (lambda: link_to_truth({"a": [1, 2]}, {"b": [1, 2]}), ">= 3"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_uptake_features_are_jittable_and_differentiable():
    rng = np.random.default_rng(1)
    img = jnp.asarray(rng.uniform(1.0, 4.0, (10, 10)))
    f = jax.jit(lambda x: jnp.stack([suv_mean(x), suv_max(x), suv_peak(x, 2.0)]))
    np.testing.assert_allclose(
        f(img), [suv_mean(img), suv_max(img), suv_peak(img, 2.0)], rtol=1e-13
    )
    g = jax.grad(lambda x: suv_mean(suv(x, 300.0, 75.0)))(img * 4000.0)
    np.testing.assert_allclose(g, 75e3 / 300e6 / img.size, rtol=1e-13)

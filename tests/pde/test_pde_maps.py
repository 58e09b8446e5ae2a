"""Procedural tissue maps: Gaussian random fields against their covariance (unit variance, the
kernel value at lag l, no wrap-around between opposite faces), lognormal moments, exact fibrosis
fractions, sphere volumes, vessel lumen volume against the tube formula, perfusion scaling and
smoothing, receptor maps, TissueMaps validation, a coherent synthetic tumour, and map loading
from .npy / NIfTI."""

import math

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from twinjax import InputError
from twinjax.pde import (
    TISSUE_CLASSES,
    Grid,
    TissueMaps,
    cellularity,
    fibrosis_patches,
    gaussian_field,
    load_map,
    lognormal_field,
    necrotic_core,
    perfusion_map,
    render_vessels,
    synthetic_tumour,
    target_expression,
    vessel_network,
)

# Statistical tolerances: realisations are independent, so the standard error of a mean over R
# realisations is sd / sqrt(R), estimated from the realisations themselves. We accept 4 standard
# errors (two-sided false-alarm probability 6e-5 for a correct implementation; the seeds are fixed,
# so the outcome is reproducible) and also require the standard error itself to be small, so a
# loose estimate cannot pass by being noisy.


def _mean_se(x):
    x = np.asarray(x)
    return x.mean(), x.std(ddof=1) / math.sqrt(len(x))


@pytest.fixture(scope="module")
def realisations():
    """400 fields per kernel on a 48 x 40 grid of 0.5 mm cells, l = 2 mm (4 cells)."""
    g = Grid((48, 40), 0.5)
    out = {}
    for kernel in ("gaussian", "exponential"):
        rng = np.random.default_rng(11)
        out[kernel] = np.stack(
            [np.asarray(gaussian_field(g, 2.0, rng, kernel=kernel)) for _ in range(400)]
        )
    return out


@pytest.mark.parametrize(
    ("kernel", "c_at_l", "c_at_h"),
    [
        ("gaussian", math.exp(-0.5), math.exp(-1 / 32)),
        ("exponential", math.exp(-1), math.exp(-0.25)),
    ],
)
def test_field_has_unit_variance_and_the_kernel_correlation_at_lag_l(
    realisations, kernel, c_at_l, c_at_h
):
    x = realisations[kernel]
    assert x.dtype == np.float64 and x.shape[1:] == (48, 40)
    mean, se = _mean_se(x.mean(axis=(1, 2)))
    assert abs(mean) < 4 * se
    var, se = _mean_se((x**2).mean(axis=(1, 2)))
    assert se < 0.015 and abs(var - 1.0) < 4 * se
    # lag l = 4 cells along each axis
    for corr in (
        (x[:, 4:] * x[:, :-4]).mean(axis=(1, 2)),
        (x[:, :, 4:] * x[:, :, :-4]).mean(axis=(1, 2)),
    ):
        c, se = _mean_se(corr)
        assert se < 0.012 and abs(c - c_at_l) < 4 * se
    # Opposite faces (47 and 39 cells apart) are uncorrelated; a periodic synthesis would give
    # them the one-cell correlation c_at_h (0.97 / 0.78).
    for edge in ((x[:, 0] * x[:, -1]).mean(axis=1), (x[:, :, 0] * x[:, :, -1]).mean(axis=1)):
        c, se = _mean_se(edge)
        assert abs(c) < 4 * se and abs(c) < 0.1 * c_at_h


def test_field_from_a_jax_key_is_deterministic_and_traceable():
    g = Grid((20, 16), 0.5)
    key = jax.random.key(3)
    a = gaussian_field(g, 0.5, key)
    assert a.dtype == jnp.float64 and a.shape == g.shape
    np.testing.assert_array_equal(a, gaussian_field(g, 0.5, key))
    assert float(jnp.max(jnp.abs(a - gaussian_field(g, 0.5, jax.random.key(4))))) > 1.0
    keys = jax.random.split(key, 2)
    batch = jax.jit(jax.vmap(lambda k: gaussian_field(g, 0.5, k)))(keys)
    np.testing.assert_allclose(batch[1], gaussian_field(g, 0.5, keys[1]), atol=1e-12)
    # numpy Generators are deterministic too
    np.testing.assert_array_equal(
        gaussian_field(g, 0.5, np.random.default_rng(5)),
        gaussian_field(g, 0.5, np.random.default_rng(5)),
    )


def test_lognormal_field_has_the_requested_mean_and_cv():
    g = Grid((40, 40), 0.5)
    rng = np.random.default_rng(7)
    x = np.stack([np.asarray(lognormal_field(g, 50.0, 0.5, 1.0, rng)) for _ in range(200)])
    assert x.min() > 0
    m, se = _mean_se(x.mean(axis=(1, 2)))
    assert se < 0.5 and abs(m - 50.0) < 4 * se
    # E[X^2] = mean^2 (1 + cv^2) = 3125 exactly
    m2, se = _mean_se((x**2).mean(axis=(1, 2)))
    assert abs(m2 - 3125.0) < 4 * se
    assert abs(math.sqrt(m2 / m**2 - 1.0) - 0.5) < 0.02


def test_fibrosis_fraction_is_exact_to_one_cell_and_patchy():
    g = Grid((50, 40), 0.2)
    region = necrotic_core(g, (5.0, 4.0), 3.5)
    n = int(region.sum())
    for f in (0.0, 0.07, 0.3, 1.0):
        fib = fibrosis_patches(g, f, 0.8, np.random.default_rng(2), region=region)
        assert fib.dtype == bool and not fib[~region].any()
        assert int(fib.sum()) == round(f * n) and abs(fib.sum() / n - f) <= 1 / n
    fib = fibrosis_patches(g, 0.3, 0.8, np.random.default_rng(9))
    # patches, not salt-and-pepper: a fibrotic cell's neighbour is far more often fibrotic
    # than the 30 % of independent cells
    assert (fib[1:] & fib[:-1]).sum() / fib[:-1].sum() > 0.7
    np.testing.assert_array_equal(fib, fibrosis_patches(g, 0.3, 0.8, np.random.default_rng(9)))


def test_necrotic_core_volume_matches_the_ball():
    """Cell-centre counting of a ball of radius 5 mm: 0.8 % off at h = 0.5 mm, 0.12 % at 0.25."""
    exact = 4 / 3 * math.pi * 5.0**3
    errs = []
    for h in (0.5, 0.25):
        n = round(12 / h)
        g = Grid((n, n, n), h)
        errs.append(abs(necrotic_core(g, (6, 6, 6), 5.0).sum() * h**3 / exact - 1))
    assert errs[0] < 0.02 and errs[1] < errs[0] / 3
    g2 = Grid((48, 48), 0.25)
    assert abs(necrotic_core(g2, (6, 6), 5.0).sum() * 0.0625 / (math.pi * 25) - 1) < 0.01
    ell = necrotic_core(Grid((24, 24, 24), 0.5), (6, 6, 6), (4.0, 5.0, 3.0))
    assert abs(ell.sum() * 0.125 / (4 / 3 * math.pi * 60) - 1) < 0.02


def test_straight_vessel_partial_volume():
    """A vessel along z, radius 0.3 mm, on 0.25 mm cells: each slice holds pi r^2 of lumen to
    0.5 % (soft-wall sub-sampling; a hard in/out test was 5 % off here), and a 2-D strip whose
    walls lie on cell faces gives each cell its covered fraction to 1/32."""
    g = Grid((8, 8, 6), 0.25)
    net = render_vessels(g, [[1.03, 0.97, 0.0]], [[1.03, 0.97, 1.5]], 0.3)
    per_slice = net.vascular_fraction.sum(axis=(0, 1)) * 0.0625
    np.testing.assert_allclose(per_slice, math.pi * 0.09, rtol=0.005)
    x, y, _ = g.coordinates_mm()
    far = np.hypot(x - 1.03, y - 0.97) > 0.3 + 0.25  # cells entirely outside the wall
    assert not net.vascular_fraction[far].any()
    assert net.mask[4, 3].all() and not net.mask[far].any()
    g2 = Grid((20, 20), 0.1)
    for y0, r in ((1.0, 0.2), (1.03, 0.12)):
        strip = render_vessels(g2, [[-1.0, y0]], [[3.0, y0]], r)
        edges = np.arange(21) * 0.1
        cover = np.clip(np.minimum(edges[1:], y0 + r) - np.maximum(edges[:-1], y0 - r), 0, None)
        np.testing.assert_allclose(
            strip.vascular_fraction, np.tile(cover / 0.1, (20, 1)), atol=1 / 32 + 1e-9
        )


@pytest.fixture(scope="module")
def network_2d():
    g = Grid((64, 64), 0.1)
    return g, vessel_network(
        g, np.random.default_rng(0), intervessel_distance_mm=0.5, radius_mm=0.02
    )


def test_vessel_network_length_density_and_lumen_volume(network_2d):
    g, net = network_2d
    # length density 1 / d to one growth step (d / 4)
    target = 6.4 * 6.4 / 0.5
    assert abs(net.length_mm - target) <= 0.125
    # partial volumes integrate to the tube area 2 r L (caps and branch overlaps: < 2 %)
    total = net.vascular_fraction.sum() * 0.01
    assert abs(total / net.lumen_volume_mm3 - 1) < 0.02
    assert 0 <= net.vascular_fraction.min() and net.vascular_fraction.max() <= 1
    again = vessel_network(g, np.random.default_rng(0), intervessel_distance_mm=0.5, radius_mm=0.02)
    np.testing.assert_array_equal(again.starts_mm, net.starts_mm)
    other = vessel_network(g, np.random.default_rng(1), intervessel_distance_mm=0.5, radius_mm=0.02)
    assert other.starts_mm.shape != net.starts_mm.shape or np.any(other.starts_mm != net.starts_mm)


def test_vessel_network_3d_lumen_volume_both_renderers():
    """Supersampled (r = 0.1 mm on 0.25 mm cells) within 3 % of pi r^2 L (the union misses the
    overlaps at branch points and lumen poking out of the domain: 1.7 % here); capillaries
    (r = 0.01 mm) deposited along the centreline exactly."""
    g = Grid((16, 16, 16), 0.25)
    key = jax.random.key(2)
    thick = vessel_network(g, key, vessel_density_per_mm2=0.5, radius_mm=0.1)
    assert abs(thick.length_density - 1.0) < 0.25 / 64  # L_V = 2 MVD, to one step
    assert abs(thick.vascular_fraction.sum() * 0.25**3 / thick.lumen_volume_mm3 - 1) < 0.03
    thin = vessel_network(g, key, vessel_density_per_mm2=0.5, radius_mm=0.01)
    np.testing.assert_array_equal(thin.starts_mm, thick.starts_mm)
    assert math.isclose(
        thin.vascular_fraction.sum() * 0.25**3, thin.lumen_volume_mm3, rel_tol=1e-12
    )


def test_vessel_network_follows_the_density_map():
    g = Grid((64, 64), 0.1)
    core = necrotic_core(g, (3.2, 4.0), 1.2)
    rho = np.where(g.coordinates_mm()[1] < 2.0, 0.3, 1.0)
    rho[core] = 0.0
    net = vessel_network(
        g, np.random.default_rng(4), intervessel_distance_mm=0.5, radius_mm=0.01, density=rho
    )
    ends = np.concatenate([net.starts_mm, net.ends_mm])
    cells = tuple(np.clip((ends / 0.1).astype(int), 0, 63).T)
    assert not core[cells].any()  # no node grew into the avascular core
    inner = necrotic_core(g, (3.2, 4.0), 1.0)
    assert not net.vascular_fraction[inner].any()
    low = net.vascular_fraction[rho == 0.3].mean() / net.vascular_fraction[rho == 1.0].mean()
    assert 0.15 < low < 0.6  # ~0.3: lengths follow the relative density
    # total length = sum rho dV / d
    assert abs(net.length_mm - rho.sum() * 0.01 / 0.5) <= 0.125


def test_perfusion_scaling_and_smoothing():
    g = Grid((40, 30), 0.1)
    vf = np.zeros(g.shape)
    vf[20, :] = 0.2  # a vessel along y at x = 2.05 mm
    k = perfusion_map(g, vf, mean_perfusion_mL_per_min_per_mL=0.4, smoothing_length_mm=0.2)
    assert math.isclose(k.mean(), 24.0, rel_tol=1e-12)  # 0.4 mL/min/mL = 24 /h
    # across the line the profile is the Gaussian kernel: exp(-1/2) at one smoothing length
    assert math.isclose(k[22, 15] / k[20, 15], math.exp(-0.5), rel_tol=1e-9)
    assert math.isclose(k[18, 0] / k[20, 0], math.exp(-0.5), rel_tol=1e-9)
    # no loss at the faces (normalised convolution): a uniform map gives a uniform rate
    np.testing.assert_allclose(perfusion_map(g, np.full(g.shape, 0.05)), 30.0, rtol=1e-12)
    region = np.zeros(g.shape, bool)
    region[15:25] = True
    kr = perfusion_map(g, vf, region=region)
    assert math.isclose(kr[region].mean(), 30.0, rel_tol=1e-12)


def test_target_expression_zero_in_necrosis_and_mean_density():
    g = Grid((40, 40), 0.25)
    nec = necrotic_core(g, (5, 5), 2.0)
    region = necrotic_core(g, (5, 5), 4.5)
    rho = target_expression(g, np.random.default_rng(1), target="PSMA", necrosis=nec, region=region)
    assert rho.dtype == jnp.float64
    r = np.asarray(rho)
    assert np.all(r[nec] == 0) and np.all(r[~region] == 0) and np.all(r[region & ~nec] > 0)
    np.testing.assert_array_equal(
        rho, target_expression(g, np.random.default_rng(1), necrosis=nec, region=region)
    )
    rng = np.random.default_rng(3)
    means = [
        np.asarray(
            target_expression(g, rng, target="GRPR", cv=0.4, correlation_length_mm=0.5)
        ).mean()
        for _ in range(100)
    ]
    m, se = _mean_se(means)
    assert abs(m - 10.0) < 4 * se  # the GRPR default density, 10 nmol/L


def test_cellularity_has_the_beta_marginal_and_respects_masks():
    g = Grid((60, 60), 0.1)
    tum = necrotic_core(g, (3, 3), 2.8)
    nec = necrotic_core(g, (3, 3), 0.8)
    fib = fibrosis_patches(g, 0.2, 0.4, np.random.default_rng(0), region=tum & ~nec)
    c = cellularity(
        g,
        np.random.default_rng(1),
        mean=0.6,
        sd=0.1,
        correlation_length_mm=0.2,
        tumour=tum,
        necrosis=nec,
        fibrosis=fib,
        fibrotic_factor=0.3,
    )
    assert np.all(c[nec] == 0) and np.all(c[~tum] == 0) and 0 <= c.min() and c.max() <= 1
    viable = tum & ~nec & ~fib
    assert abs(c[viable].mean() - 0.6) < 0.02 and abs(c[viable].std() - 0.1) < 0.02
    assert abs(c[fib].mean() - 0.18) < 0.02


def test_tissue_maps_classes_and_validation():
    g = Grid((4, 3), 0.5)
    tum = np.zeros(g.shape, bool)
    tum[1:, :] = True
    nec = np.zeros(g.shape, bool)
    nec[3, 2] = True
    fib = np.zeros(g.shape, bool)
    fib[2, 0] = True
    ves = np.zeros(g.shape, bool)
    ves[0, 0] = ves[3, 2] = True
    m = TissueMaps(g, tumour=tum, necrosis=nec, fibrosis=fib, vessels=ves, diffusivity_scale=0.5)
    expected = np.array([[4, 0, 0], [1, 1, 1], [2, 1, 1], [1, 1, 4]])
    np.testing.assert_array_equal(m.tissue_class, expected)
    assert TISSUE_CLASSES[4] == "vessel" and m.tissue_class.dtype == jnp.int32
    np.testing.assert_allclose(m.diffusivity_mm2_per_h(2.0), 1.0)
    assert m.perfusion_per_h.dtype == jnp.float64
    np.testing.assert_array_equal(jax.jit(lambda t: t.tissue_class)(m), expected)
    bad = [
        ({"vascular_fraction": np.zeros((3, 4))}, "vascular_fraction has shape"),
        ({"perfusion_per_h": np.full(g.shape, np.nan)}, "perfusion_per_h has 12 NaN"),
        ({"target_density_nmol_per_L": -1.0}, "target_density_nmol_per_L has min"),
        ({"cellularity": 1.5}, "cellularity has max"),
        ({"fibrosis": np.full(g.shape, 2)}, "fibrosis is not binary"),
        ({"tumour": np.zeros(g.shape, bool)}, "tumour is empty"),
    ]
    for kw, msg in bad:
        with pytest.raises(InputError, match=msg):
            TissueMaps(g, **{"tumour": tum, **kw})


def test_synthetic_tumour_is_coherent_and_deterministic():
    g = Grid((48, 48), 0.1)
    key = jax.random.key(5)
    m = synthetic_tumour(g, key, radius_mm=2.0, mean_perfusion_mL_per_min_per_mL=0.3)
    tum, nec, fib = (np.asarray(a) for a in (m.tumour, m.necrosis, m.fibrosis))
    viable = tum & ~nec
    assert abs(nec.sum() * 0.01 / (math.pi * 0.6**2) - 1) < 0.05  # default core 0.3 radius
    assert fib.sum() == round(0.15 * viable.sum()) and not fib[~viable].any()
    vf = np.asarray(m.vascular_fraction)
    core = necrotic_core(g, (2.4, 2.4), 0.6 - 0.1 - 0.015)  # beyond one cell + vessel radius
    assert not vf[core].any()
    assert vf[fib].mean() < 0.6 * vf[viable & ~fib].mean()
    assert abs(vf[viable & ~fib].mean() / 0.05 - 1) < 0.3  # the default 5 % vascular volume
    k = np.asarray(m.perfusion_per_h)
    assert math.isclose(k[tum].mean(), 18.0, rel_tol=1e-12)  # 0.3 mL/min/mL
    np.testing.assert_array_equal(np.asarray(m.diffusivity_scale)[fib], 0.5)
    t = np.asarray(m.target_density_nmol_per_L)
    assert np.all(t[nec] == 0) and np.all(t[~tum] == 0) and np.all(t[viable] > 0)
    assert set(np.unique(m.tissue_class)) == {0, 1, 2, 3, 4}
    again = synthetic_tumour(g, key, radius_mm=2.0, mean_perfusion_mL_per_min_per_mL=0.3)
    for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    m3 = synthetic_tumour(
        Grid((16, 16, 16), 0.25), np.random.default_rng(0), radius_mm=1.5, target="FAP"
    )
    assert m3.target == "FAP" and float(m3.target_density_nmol_per_L.max()) > 0
    # FAP sits in the stroma: higher in fibrotic patches than in cellular tumour
    f3, t3 = np.asarray(m3.fibrosis), np.asarray(m3.target_density_nmol_per_L)
    assert t3[f3].mean() > t3[np.asarray(m3.tumour & ~m3.necrosis) & ~f3].mean()


def test_load_map_round_trips(tmp_path):
    g2 = Grid((5, 4), 0.5)
    a2 = np.random.default_rng(0).uniform(0, 3, g2.shape)
    np.save(tmp_path / "a.npy", a2)
    np.testing.assert_array_equal(load_map(tmp_path / "a.npy", g2, name="psma"), a2)
    g3 = Grid((6, 5, 4), (0.5, 0.4, 1.2))
    a3 = np.random.default_rng(1).uniform(0, 3, g3.shape)
    nib.save(nib.Nifti1Image(a3, np.diag([0.5, 0.4, 1.2, 1.0])), tmp_path / "a.nii")
    out = load_map(tmp_path / "a.nii", g3, name="psma")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, a3)
    # a 2-D map stored as (nx, ny, 1), gzipped
    nib.save(nib.Nifti1Image(a2[..., None], np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(load_map(str(tmp_path / "b.nii.gz"), g2, name="psma"), a2)
    signed = a2 - 1.0
    np.save(tmp_path / "s.npy", signed)
    np.testing.assert_array_equal(
        load_map(tmp_path / "s.npy", g2, name="z", nonnegative=False), signed
    )


def test_load_map_rejects_bad_files(tmp_path):
    g = Grid((6, 5, 4), (0.5, 0.4, 1.2))
    a = np.ones(g.shape)
    aff = np.diag([0.5, 0.4, 1.2, 1.0])
    nib.save(nib.Nifti1Image(a, aff), tmp_path / "ok.nii")
    raw = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "trunc.nii").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.nii.gz").write_bytes(b"not a gzip stream" * 20)
    np.save(tmp_path / "ok.npy", a)
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:200])
    nib.save(nib.Nifti1Image(np.ones((6, 5, 3)), aff), tmp_path / "shape.nii")
    nib.save(nib.Nifti1Image(a, np.diag([0.5, 0.5, 1.2, 1.0])), tmp_path / "zoom.nii")
    nan = a.copy()
    nan[1, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "neg.npy", -a)
    (tmp_path / "map.txt").write_text("1 2 3")
    cases = [
        ("missing.nii", "does not exist"),
        ("map.txt", "unknown extension"),
        ("trunc.nii", "cannot read .*trunc.nii as NIfTI"),
        ("junk.nii.gz", "cannot read .*junk.nii.gz as NIfTI"),
        ("trunc.npy", "cannot read .*trunc.npy as .npy"),
        ("shape.nii", r"shape \(6, 5, 3\)"),
        ("zoom.nii", "voxel sizes"),
        ("nan.npy", "1 NaN or infinite cells"),
        ("neg.npy", "min -1.0"),
    ]
    for name, msg in cases:
        with pytest.raises(InputError, match=msg):
            load_map(tmp_path / name, g, name="psma")


def test_generators_reject_bad_input():
    g2 = Grid((8, 8), 0.5)
    rng = np.random.default_rng(0)
    cases = [
        (lambda: gaussian_field(g2, 0.0, rng), "correlation_length_mm = 0.0"),
        (lambda: gaussian_field(g2, 1.0, rng, kernel="matern"), "kernel = 'matern'"),
        (lambda: lognormal_field(g2, 1.0, -0.1, 1.0, rng), "cv = -0.1"),
        (lambda: fibrosis_patches(g2, 1.2, 1.0, rng), "area_fraction = 1.2"),
        (lambda: necrotic_core(g2, (1.0,), 1.0), "centre_mm"),
        (lambda: necrotic_core(g2, (1.0, 1.0), -1.0), "radius_mm = -1.0"),
        (lambda: cellularity(g2, rng, mean=0.5, sd=0.6), "sd = 0.6"),
        (lambda: target_expression(g2, rng, target="SSTR2"), "target = 'SSTR2'"),
        (lambda: vessel_network(Grid((8,), 0.5), rng, intervessel_distance_mm=1.0), "2-D or 3-D"),
        (lambda: vessel_network(g2, rng), "exactly one of"),
        (lambda: vessel_network(g2, rng, vessel_density_per_mm2=10.0), "3-D network"),
        (
            lambda: vessel_network(g2, rng, intervessel_distance_mm=1.0, density=np.zeros((8, 8))),
            "density is 0 everywhere",
        ),
        (
            lambda: vessel_network(g2, rng, intervessel_distance_mm=1.0, tortuosity=2.0),
            "tortuosity",
        ),
        (lambda: perfusion_map(g2, np.zeros(g2.shape)), "vascular_fraction is 0"),
        (lambda: perfusion_map(g2, np.full(g2.shape, 1.5)), "vascular_fraction has max"),
        (
            lambda: synthetic_tumour(g2, rng, radius_mm=1.0, necrotic_radius_mm=2.0),
            "necrotic_radius_mm",
        ),
    ]
    for call, msg in cases:
        with pytest.raises(InputError, match=msg):
            call()

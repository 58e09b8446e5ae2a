"""Image synthesis against analytic results: the PSF's second moment and count conservation, the
partial-volume recovery of a blurred sphere (observe.sphere_recovery), exact voxel averaging,
frame means of exponential and piecewise-linear curves, decay correction back to the
administered activity, Poisson moments, and gradients through the whole chain."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.special import ive

from twinjax import InputError, nuclide
from twinjax.imaging.observe import sphere_recovery
from twinjax.imaging.synth import (
    Frames,
    Scanner,
    blur,
    counts_to_image,
    decay_correction_factor,
    frame_average,
    frame_average_fn,
    poisson_image,
    region_tacs,
    simulate_image,
    to_scanner_grid,
)
from twinjax.pde import Grid

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def test_point_source_fwhm_and_count_conservation():
    """Second moments of a blurred point source give the requested FWHM on every axis
    (anisotropic cells and FWHM, one FWHM below a cell); an interior source keeps its counts;
    a source in an edge cell keeps exactly the kernel mass inside, (1 + T(0)) / 2."""
    spacing, fwhm = (1.0, 0.8, 1.2), (4.0, 3.0, 1.0)
    img = np.zeros((31, 31, 31))
    img[15, 15, 15] = 7.0
    out = np.asarray(blur(img, fwhm, spacing))
    assert out.dtype == np.float64
    assert out.sum() == pytest.approx(7.0, rel=1e-12)
    offsets = np.arange(31) - 15
    for a in range(3):
        profile = out.sum(axis=tuple(b for b in range(3) if b != a)) / 7.0
        var = np.sum(profile * (offsets * spacing[a]) ** 2)
        assert np.sqrt(var) * FWHM_PER_SIGMA == pytest.approx(fwhm[a], rel=1e-6)
        assert np.sum(profile * offsets) == pytest.approx(0.0, abs=1e-12)  # centred
    line = np.zeros(40)
    line[0] = 1.0
    s = 6.0 / FWHM_PER_SIGMA / 1.5
    assert float(blur(line, 6.0, 1.5).sum()) == pytest.approx((1 + ive(0, s * s)) / 2, rel=1e-12)


@pytest.mark.parametrize("fwhm", [4.0, 8.0])
def test_blurred_sphere_mean_equals_sphere_recovery(fwhm):
    """The mean of a blurred uniform sphere inside it is its recovery coefficient. The voxelised
    sphere (0.5 mm cells, R = 4 mm) is compared with `sphere_recovery` at its own volume; the
    residual difference (0.2-0.4 %) is its staircase surface."""
    g = Grid((40, 40, 40), 0.5)
    r2 = sum((x - 10.0) ** 2 for x in g.coordinates_mm())
    inside = r2 <= 16.0
    out = np.asarray(blur(inside.astype(float), fwhm, g.spacing_mm))
    # jitted: one compile instead of one per eager op
    expected = float(jax.jit(sphere_recovery)(inside.sum() * g.cell_volume_mL * 1e-3, fwhm))
    assert out[inside].mean() == pytest.approx(expected, rel=1e-2)
    # and the counts are conserved (the domain leaves 3 FWHM around the sphere for 4 mm)
    if fwhm == 4.0:
        assert out.sum() == pytest.approx(inside.sum(), rel=1e-4)


def test_voxel_averaging_conserves_activity_and_rejects_non_integer_ratios():
    g = Grid((12, 9, 4), (0.5, 1.0, 2.0))
    pet = Scanner((1.0, 3.0, 2.0), 4.0, sensitivity_cps_per_MBq=10.0)
    rng = np.random.default_rng(3)
    maps = rng.uniform(0.0, 2.0, (2, *g.shape))
    vox = np.asarray(to_scanner_grid(maps, g, pet))
    vg = pet.voxel_grid(g)
    assert vox.shape == (2, *vg.shape) == (2, 6, 3, 4)
    np.testing.assert_allclose(
        vox.sum(axis=(1, 2, 3)) * vg.cell_volume_mL,
        maps.sum(axis=(1, 2, 3)) * g.cell_volume_mL,
        rtol=1e-14,
    )
    assert vox[1, 2, 1, 0] == pytest.approx(maps[1, 4:6, 3:6, 0].mean(), rel=1e-14)
    with pytest.raises(InputError, match=r"voxel_mm 1\.5 on axis 0 .* spacing_mm 1\.0"):
        to_scanner_grid(
            np.ones((8, 8)), Grid((8, 8), 1.0), Scanner(1.5, 4.0, sensitivity_cps_per_MBq=1.0)
        )
    with pytest.raises(InputError, match="ratio 0.5"):
        to_scanner_grid(
            np.ones((8,)), Grid((8,), 2.0), Scanner(1.0, 4.0, sensitivity_cps_per_MBq=1.0)
        )
    with pytest.raises(InputError, match="not a multiple of the 3 cells"):
        to_scanner_grid(
            np.ones((8,)), Grid((8,), 1.0), Scanner(3.0, 4.0, sensitivity_cps_per_MBq=1.0)
        )
    with pytest.raises(InputError, match="maps has shape"):
        to_scanner_grid(np.ones((2, 8)), g, pet)


def test_frame_means_of_exponential_and_piecewise_linear_curves():
    """Gauss-Legendre frames of exp(-k t) match the analytic mean to rounding; the sampled
    (piecewise-linear) frame mean is exact for the interpolant (scipy.quad on its pieces) and
    within the trapezoid error of the exponential, (x/2) coth(x/2) - 1 < x^2 / 12 (x = k dt)."""
    k = 0.7
    starts, ends = np.array([0.0, 0.3, 1.1]), np.array([0.3, 0.95, 2.0])
    analytic = (np.exp(-k * starts) - np.exp(-k * ends)) / (k * (ends - starts))
    got = frame_average_fn(lambda t: jnp.exp(-k * t) * jnp.ones(2), starts, ends)
    np.testing.assert_allclose(got, np.stack([analytic] * 2, axis=1), rtol=1e-14)
    times = np.linspace(0.0, 2.0, 41)
    dt = times[1] - times[0]
    sampled = np.asarray(frame_average(times, np.exp(-k * times), starts, ends))
    np.testing.assert_allclose(sampled, analytic, rtol=(k * dt) ** 2 / 12)
    assert np.max(np.abs(sampled / analytic - 1)) > (k * dt) ** 2 / 100  # not trivially exact
    rng = np.random.default_rng(0)
    t = np.sort(np.concatenate([[0.0, 2.0], rng.uniform(0, 2, 9)]))
    f = rng.uniform(0.0, 5.0, t.size)
    quad = [
        integrate.quad(lambda x: np.interp(x, t, f), a, b, points=t[(t > a) & (t < b)])[0] / (b - a)
        for a, b in zip(starts, ends, strict=True)
    ]
    np.testing.assert_allclose(frame_average(t, f, starts, ends), quad, rtol=1e-12)


def test_decay_correction_recovers_the_administered_activity():
    """A uniform F-18 source a0 exp(-lambda t), imaged in three frames, reads a0 (Bq/mL) after
    correction to the administration, a0 exp(-lambda t_s) after correction to the frame start;
    expected counts are S a V dt for the analytic frame mean; region TACs read the same."""
    lam = nuclide("F-18").decay_constant_per_h
    frames = Frames([1.0, 1.25, 2.0], [1.25, 1.5, 3.0])
    assert float(decay_correction_factor(1.0, 1.25, nuclide("F-18").half_life_h, 0.0)) == (
        pytest.approx(lam * 0.25 / (np.exp(-lam) - np.exp(-1.25 * lam)), rel=1e-14)
    )
    g = Grid((48, 48), 1.0)
    pet = Scanner(4.0, 5.0, sensitivity_cps_per_MBq=2000.0, nuclide="F-18")
    a0 = 0.02  # MBq/mL
    times = np.linspace(0.5, 3.5, 301)
    maps = a0 * np.exp(-lam * times)[:, None, None] * np.ones(g.shape)
    expected = np.asarray(simulate_image(times, maps, g, pet, frames))
    centre = (slice(4, 8), slice(4, 8))  # >= 16 mm (7.5 sigma) from the edges
    s, e = np.asarray(frames.start_h), np.asarray(frames.end_h)
    mean = a0 * (np.exp(-lam * s) - np.exp(-lam * e)) / (lam * (e - s))
    counts = 2000.0 * mean * (4.0 * 4.0 * 1e-3) * (e - s) * 3600.0
    tol = (lam * 0.01) ** 2 / 12 + 1e-12  # trapezoid error of the sampled curve
    np.testing.assert_allclose(
        expected[(slice(None), *centre)], counts[:, None, None] * np.ones((1, 4, 4)), rtol=tol
    )
    # maps decay-corrected to the administration are decayed by the scanner's nuclide: the same
    # counts as the physical maps, sample for sample
    corrected = a0 * np.ones((times.size, *g.shape))
    np.testing.assert_allclose(
        simulate_image(times, corrected, g, pet, frames, decay_corrected=True), expected, rtol=1e-13
    )
    img = np.asarray(counts_to_image(expected, pet, frames))
    np.testing.assert_allclose(img[(slice(None), *centre)], a0 * 1e6, rtol=tol)
    at_start = np.asarray(counts_to_image(expected, pet, frames, decay_correct_to="frame_start"))
    np.testing.assert_allclose(at_start[:, 5, 5], a0 * 1e6 * np.exp(-lam * s), rtol=tol)
    raw = np.asarray(counts_to_image(expected, pet, frames, decay_correct_to="none"))
    np.testing.assert_allclose(raw[:, 5, 5], mean * 1e6, rtol=tol)
    labels = np.zeros((12, 12), dtype=int)
    labels[centre] = 1
    tac = region_tacs(img, labels)[1]
    np.testing.assert_allclose(tac, a0 * 1e6, rtol=tol)


def test_poisson_image_moments():
    """Per-voxel mean and variance of 4000 draws equal the expected counts; each tolerance is 5
    standard errors: sqrt(lam / n) for the mean, sqrt((lam + 2 lam^2) / n) for the variance
    (fourth central moment of a Poisson, lam + 3 lam^2)."""
    lam = np.array([0.5, 5.0, 50.0, 500.0])
    n = 4000
    draws = np.asarray(poisson_image(jax.random.key(7), np.tile(lam, (n, 1))))
    assert draws.dtype == np.float64 and np.all(draws == np.round(draws))
    np.testing.assert_array_less(np.abs(draws.mean(0) - lam), 5 * np.sqrt(lam / n))
    np.testing.assert_array_less(
        np.abs(draws.var(0, ddof=1) - lam), 5 * np.sqrt((lam + 2 * lam**2) / n)
    )
    again = np.asarray(poisson_image(jax.random.key(7), np.tile(lam, (n, 1))))
    np.testing.assert_array_equal(draws, again)


def test_region_tacs_with_labels_and_fractional_masks():
    rng = np.random.default_rng(5)
    images = rng.uniform(0.0, 10.0, (3, 6, 6))
    labels = np.zeros((6, 6), dtype=int)
    labels[:2] = 2
    labels[3:, 3:] = 5
    tacs = region_tacs(images, labels)
    assert sorted(tacs) == [2, 5]
    np.testing.assert_allclose(tacs[5], images[:, 3:, 3:].mean(axis=(1, 2)), rtol=1e-14)
    # A fine-grid disc averaged into voxels weights each voxel by the fraction inside.
    fine = Grid((24, 24), 0.5)
    disc = sum((x - 6.0) ** 2 for x in fine.coordinates_mm()) <= 9.0
    frac = np.asarray(
        to_scanner_grid(disc.astype(float), fine, Scanner(2.0, 3.0, sensitivity_cps_per_MBq=1.0))
    )
    assert 0 < frac.min() or frac.min() == 0.0
    got = region_tacs(images, {"disc": frac})["disc"]
    np.testing.assert_allclose(got, (images * frac).sum(axis=(1, 2)) / frac.sum(), rtol=1e-14)
    with pytest.raises(InputError, match="images has shape"):
        region_tacs(images[:, :5], labels)
    with pytest.raises(InputError, match="fractions in"):
        region_tacs(images, {"bad": 2.0 * frac})


def test_chain_is_linear_differentiable_jittable_and_vmappable():
    g = Grid((32,), 0.5)
    pet = Scanner(2.0, 3.0, sensitivity_cps_per_MBq=500.0, nuclide="Ga-68")
    frames = Frames([0.5], [0.75])
    times = np.array([0.0, 0.5, 1.0])
    x = np.asarray(g.coordinates_mm()[0])
    maps = np.exp(-((x - 8.0) ** 2) / 4.0)[None, :] * np.array([0.0, 1.0, 0.5])[:, None]

    def total(k):
        return jnp.sum(simulate_image(times, k * maps, g, pet, frames))

    value, slope = jax.value_and_grad(total)(2.0)
    assert float(slope) == pytest.approx(float(value) / 2.0, rel=1e-12)
    eager = simulate_image(times, maps, g, pet, frames)
    jitted = jax.jit(lambda m: simulate_image(times, m, g, pet, frames))(maps)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13)
    batch = jax.vmap(lambda m: simulate_image(times, m, g, pet, frames))(np.stack([maps, 3 * maps]))
    np.testing.assert_allclose(batch[1], 3 * eager, rtol=1e-13)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Scanner(4.0, 0.0, sensitivity_cps_per_MBq=1.0), "psf_fwhm_mm = 0.0"),
        (lambda: Scanner(-1.0, 5.0, sensitivity_cps_per_MBq=1.0), "voxel_mm = -1.0"),
        (lambda: Scanner(4.0, 5.0, sensitivity_cps_per_MBq=0.0), "sensitivity_cps_per_MBq = 0.0"),
        (lambda: Scanner(4.0, 5.0, sensitivity_cps_per_MBq=1.0, nuclide="F-19"), "F-19"),
        (lambda: blur(np.ones(8), -2.0, 1.0), "fwhm_mm = -2.0"),
        (lambda: blur(np.array([1.0, np.nan]), 2.0, 1.0), "1 NaN"),
        (lambda: Frames([1.0, 0.5], [1.2, 0.7]), "strictly increasing"),
        (lambda: Frames([1.0], [1.0]), "end_h 1.0 <= start_h 1.0"),
        (lambda: Frames([0.0, 0.5], [0.6, 1.0]), "non-overlapping"),
        (lambda: frame_average([0.0, 1.0], np.ones((3, 2)), [0.0], [1.0]), "leading time axis"),
        (lambda: frame_average([0.0, 2.0, 1.0], np.ones(3), [0.0], [1.0]), "strictly increasing"),
        (lambda: frame_average([0.0, 1.0], np.ones(2), [0.5], [1.5]), "no extrapolation"),
        (lambda: decay_correction_factor(1.0, 2.0, -3.0), "half_life_h = -3.0"),
        (lambda: poisson_image(jax.random.key(0), np.array([-1.0])), "min -1.0"),
        (
            lambda: counts_to_image(
                np.ones((1, 4)),
                Scanner(1.0, 2.0, sensitivity_cps_per_MBq=1.0),
                Frames([0.0], [1.0]),
                decay_correct_to="injection",
            ),
            "injection",
        ),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_simulate_image_rejects_bad_maps():
    g = Grid((8,), 1.0)
    pet = Scanner(2.0, 3.0, sensitivity_cps_per_MBq=1.0)
    frames = Frames([0.0], [1.0])
    with pytest.raises(InputError, match="allowed: \\(len\\(times_h\\), \\*grid.shape\\)"):
        simulate_image([0.0, 1.0], np.ones((2, 9)), g, pet, frames)
    with pytest.raises(InputError, match="min -1.0"):
        simulate_image([0.0, 1.0], -np.ones((2, 8)), g, pet, frames)
    bad = np.ones((2, 8))
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        simulate_image([0.0, 1.0], bad, g, pet, frames)

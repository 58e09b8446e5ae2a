"""Voxel S-value kernels (energy conservation, agreement with the sphere model on a voxelised
sphere, the large-voxel limit), FFT dose maps against direct convolution, DVH and metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import convolve

import twinjax
from twinjax import InputError
from twinjax.dosimetry import sphere_absorbed_fractions, sphere_s_value
from twinjax.dosimetry.voxel import (
    dose_map,
    dose_metrics,
    dose_volume_histogram,
    local_deposition_dose,
    voxel_s_kernel,
)

PER_MEV = twinjax.units.J_PER_MEV * 3.6e9  # J per MeV x decays per MBq h


@pytest.mark.parametrize(
    ("name", "size_mm"),
    [
        ("Lu-177", 4.8),
        ("Lu-177", 0.5),
        ("Y-90", 4.8),
        ("Y-90", 1.0),
        ("Ac-225", 4.8),
        ("Ac-225", 0.1),
    ],
)
def test_kernels_conserve_energy(name, size_mm):
    k = voxel_s_kernel(name, size_mm)
    # The kernel integrates to the emitted non-penetrating energy (ICRP-107) within 1 %.
    absorbed_MeV = k.values.sum() * k.voxel_mass_kg / PER_MEV
    emitted = twinjax.dosimetry.sphere_absorbed_fractions(name, 1.0)["emitted_nonpenetrating"]
    assert k.emitted_MeV == pytest.approx(float(emitted), rel=1e-12)
    assert absorbed_MeV == pytest.approx(k.emitted_MeV, rel=0.01)
    assert k.captured == pytest.approx(absorbed_MeV / k.emitted_MeV, rel=1e-10)
    # Symmetric, positive, peaked at the source voxel.
    n = k.half_width
    np.testing.assert_allclose(k.values, np.flip(k.values, 0), rtol=1e-12)
    np.testing.assert_allclose(k.values, np.transpose(k.values, (1, 0, 2)), rtol=1e-12)
    assert np.all(k.values >= 0) and k.values.argmax() == k.values.size // 2
    assert k.values[n, n, n] > k.values[n + 1, n, n] > k.values[n + 1, n + 1, n]


def test_large_voxels_absorb_locally_and_small_ones_spread():
    # 5 cm voxels hold Lu-177's electrons (mean range ~0.3 mm); 0.1 mm voxels do not.
    big = voxel_s_kernel("Lu-177", 50.0)
    assert big.values[1, 1, 1] * big.voxel_mass_kg / PER_MEV > 0.99 * big.emitted_MeV
    small = voxel_s_kernel("Lu-177", 0.1)
    n = small.half_width
    assert small.values[n, n, n] * small.voxel_mass_kg / PER_MEV < 0.5 * small.emitted_MeV
    # Converged in the number of rays: doubling them moves the central voxels < 0.5 %.
    finer = voxel_s_kernel("Lu-177", 0.1, n_directions=8000)
    c = slice(n - 1, n + 2)
    np.testing.assert_allclose(finer.values[c, c, c], small.values[c, c, c], rtol=5e-3)


@pytest.mark.parametrize(("name", "size_mm", "tol"), [("Lu-177", 0.5, 0.01), ("Y-90", 1.0, 0.03)])
def test_voxelised_sphere_matches_the_sphere_model(name, size_mm, tol):
    # Stylised (sphere S-value) vs voxel dose for a sphere of radius 10 voxels, uniform activity:
    # mean dose agrees to within the surface voxelisation error.
    k = voxel_s_kernel(name, size_mm)
    n = 31 + 2 * k.half_width
    x = np.arange(n) - (n - 1) / 2
    xx, yy, zz = np.meshgrid(x, x, x, indexing="ij")
    mask = xx**2 + yy**2 + zz**2 <= 10.0**2
    tia = mask * 1.0  # MBq h per voxel
    mean = float(dose_metrics(dose_map(tia, k), mask)["mean"])
    mass = mask.sum() * k.voxel_mass_kg
    f = sphere_absorbed_fractions(name, mass)
    electrons = float(f["beta"] + f["electrons"] + f["alphas"] + f["recoils"])
    s_np = float(sphere_s_value(name, mass)) * electrons / (electrons + float(f["photons"]))
    assert mean == pytest.approx(s_np * mask.sum(), rel=tol)


def test_dose_map_is_a_linear_convolution():
    k = voxel_s_kernel("Y-90", 4.8)
    rng = np.random.default_rng(0)
    tia = rng.gamma(2.0, 10.0, size=(12, 9, 7))
    ref = convolve(tia, k.values, mode="same", method="direct")
    np.testing.assert_allclose(dose_map(tia, k), ref, rtol=1e-9, atol=1e-9 * ref.max())
    # A point source away from the edges reproduces the kernel.
    point = np.zeros((15, 15, 15))
    point[7, 7, 7] = 2.0
    n = k.half_width
    np.testing.assert_allclose(
        dose_map(point, k)[7 - n : 8 + n, 7 - n : 8 + n, 7 - n : 8 + n],
        2.0 * k.values,
        atol=1e-12 * k.values.max(),  # FFT round-off
    )
    # Differentiable in the map and vmapped over draws.
    g = jax.grad(lambda a: dose_map(a, k)[7, 7, 7])(jnp.asarray(point))
    np.testing.assert_allclose(
        g[7 - n : 8 + n, 7 - n : 8 + n, 7 - n : 8 + n], k.values, atol=1e-12 * k.values.max()
    )
    batch = jax.vmap(lambda a: dose_map(a, k))(jnp.stack([tia, 2 * tia]))
    np.testing.assert_allclose(batch[1], 2 * batch[0], rtol=1e-12)


def test_local_deposition():
    tia = np.full((2, 2, 2), 3.0)
    d = local_deposition_dose(tia, "Lu-177", 4.0)
    m = 1.0 * 0.4**3 * 1e-3
    e = float(sphere_absorbed_fractions("Lu-177", 1.0)["emitted_nonpenetrating"])
    np.testing.assert_allclose(d, 3.0 * e * PER_MEV / m, rtol=1e-12)


def test_dvh_and_metrics():
    dose = jnp.arange(1.0, 101.0).reshape(10, 10, 1)  # 1..100 Gy, one voxel each
    mask = np.ones((10, 10, 1), bool)
    m = dose_metrics(dose, mask, geud_a=1.0)
    assert float(m["mean"]) == pytest.approx(50.5)
    assert (float(m["min"]), float(m["max"])) == (1.0, 100.0)
    # Dx: the minimum dose of the hottest x % (x % of 100 voxels).
    assert (float(m["D2"]), float(m["D50"]), float(m["D90"]), float(m["D98"])) == (99, 51, 11, 3)
    assert float(m["gEUD"]) == pytest.approx(50.5)
    _, v = dose_volume_histogram(dose, mask, bins=[0.0, 50.0, 100.0, 101.0])
    np.testing.assert_allclose(v, [1.0, 0.51, 0.01, 0.0])
    half = mask.copy()
    half[5:] = False
    assert float(dose_metrics(dose, half)["max"]) == 50.0


def test_bad_input():
    k = voxel_s_kernel("Lu-177", 4.8)
    with pytest.raises(InputError, match="voxel_size_mm = -1.0"):
        voxel_s_kernel("Lu-177", -1.0)
    with pytest.raises(InputError, match=r"tia_map_MBqh has shape \(4, 4\)"):
        dose_map(np.ones((4, 4)), k)
    with pytest.raises(
        InputError, match=r"mask has shape \(3, 3, 3\) but the dose map \(4, 4, 4\)"
    ):
        dose_metrics(np.ones((4, 4, 4)), np.ones((3, 3, 3), bool))
    with pytest.raises(InputError, match="mask is empty"):
        dose_metrics(np.ones((4, 4, 4)), np.zeros((4, 4, 4), bool))
    with pytest.raises(InputError, match="values other than 0 and 1"):
        dose_metrics(np.ones((2, 2, 2)), np.full((2, 2, 2), 2))
    with pytest.raises(InputError, match="Lu-178"):
        voxel_s_kernel("Lu-178", 4.8)

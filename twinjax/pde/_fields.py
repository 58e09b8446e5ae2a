"""Spatially correlated random fields on a [`Grid`][twinjax.pde.Grid], and the tissue maps built
from them: fibrosis patches, necrotic cores, cellularity and target-expression maps.

**Gaussian random field.** `gaussian_field` draws a stationary, zero-mean, unit-variance field g
with covariance

    gaussian kernel:     C(r) = exp(-r^2 / (2 l^2))     (C(l) = exp(-1/2))
    exponential kernel:  C(r) = exp(-r / l)             (C(l) = exp(-1))

at the cell centres, by circulant embedding (FFT spectral synthesis): on a periodic grid of M_a >=
N_a cells per axis, the covariance row c_m = C(|min(m, M - m)| h) has the DFT eigenvalues S_k =
DFT(c)_k >= 0, and ``g = IDFT(sqrt(S) DFT(w))`` with white noise w ~ N(0, 1) has exactly the
circulant covariance. The grid is zero-padded to ``M_a >= N_a + min(N_a, cut l / h_a)`` (cut = 6
for the Gaussian, 12 for the exponential kernel), and only the first N_a cells are kept: two cells
of the domain are then never closer through the periodic wrap than through the domain, so opposite
edges are uncorrelated (C(cut l) <= 6e-6); with M_a >= 2 N_a - 2 the embedding is exact.
Eigenvalues that rounding (or a short embedding) makes negative are set to 0 and S is rescaled so
that ``sum_k S_k / M = C(0) = 1``: the variance of every cell is exactly 1.

**Lognormal field.** ``X = exp(mu + sigma g)`` with ``sigma^2 = ln(1 + cv^2)`` and ``mu = ln(mean)
- sigma^2 / 2`` has E[X] = mean and sd(X) / E[X] = cv exactly, because Var(g) = 1 exactly.

**Masks and maps.** A fibrosis map is the ``round(f n)`` cells of largest g (exactly the
requested area fraction to one cell); a necrotic core is the cells whose centre lies in an
ellipsoid; cellularity (tumour-cell volume fraction) has a Beta marginal through the Gaussian
copula ``c = F_Beta^{-1}(Phi(g))``; receptor-density maps are lognormal fields, zero in necrosis.

**Perfusion** (`perfusion_map`). Flow per tissue volume proportional to the vascular fraction
smoothed with a Gaussian of width `smoothing_length_mm` (the diffusion distance of small solutes
and oxygen, ~0.1-0.2 mm: Thomlinson RH, Gray LH, Br J Cancer 1955;9:539-549), scaled so its mean
over the region is F (mL/min/mL); as a rate, ``k = 60 F`` in 1/h. Default F = 0.5 mL/min/mL
(30 /h), the tumour flow of Fele-Paranj et al. (EJNMMI Radiopharm Chem 2024;9:6); 133Xe clearance
gave 0.15-0.35 mL/min/g in human tumour nodules ("Regional blood flow in human tumors", Cancer Res
1979;39:2304), and flows vary widely between and within tumours (review: Vaupel P, Kallinowski F,
Okunieff P, Cancer Res 1989;49:6449-6465).

Randomness: an explicit `jax.random` key (the field is then traceable: `jit`/`vmap` over keys) or
a `numpy.random.Generator`; the same key always gives the same map.

**Loading** (`load_map`): ``.npy`` or NIfTI (``.nii``, ``.nii.gz``) maps, e.g. from histology or
spatial transcriptomics registered to the grid, checked against the grid before use.

Units: length mm, receptor density nmol/L of tissue, perfusion rate 1/h (mL/min/mL at the edge).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.fft
from jaxtyping import Array, Float

from .._errors import InputError
from ._grid import Grid

__all__ = [
    "TARGET_DENSITY_NMOL_PER_L",
    "cellularity",
    "fibrosis_patches",
    "gaussian_field",
    "load_map",
    "lognormal_field",
    "necrotic_core",
    "perfusion_map",
    "target_expression",
]

# Typical receptor densities in tumour tissue (nmol per L of tissue).
# PSMA: 50 nmol/L, the total PSMA amount over the total lesion volume of the default patient of
#   Fele-Paranj A, Saboury B, Uribe C, Rahmim A, EJNMMI Radiopharm Chem 2024;9:6 (model structure
#   of Kletting P et al., PLoS ONE 2016;11:e0162303); its lesions span 19-266 nmol/L.
# FAP and GRPR: we found no published tumour receptor concentration in nmol/L for these targets;
#   20 and 10 nmol/L are ILLUSTRATIVE defaults of the same order as PSMA and SSTR2 (tumour Bmax
#   30 nmol/L, Siebinga H et al., EJNMMI Phys 2023;10:48, as in configs/templates). GRPR is
#   overexpressed "often in high density" in prostate carcinoma by autoradiography (Markwalder R,
#   Reubi JC, Cancer Res 1999;59:1152-9). Pass `mean_density_nmol_per_L` for a calibrated value.
TARGET_DENSITY_NMOL_PER_L = {"PSMA": 50.0, "FAP": 20.0, "GRPR": 10.0}
_CUT = {"gaussian": 6.0, "exponential": 12.0}


def _is_rng(key) -> bool:
    return isinstance(key, np.random.Generator)


def _split(key, n: int) -> list:
    """n independent streams from a jax key or a numpy Generator (deterministic)."""
    if _is_rng(key):
        return list(key.spawn(n))
    return list(jax.random.split(key, n))


def _numpy_rng(key) -> np.random.Generator:
    """A numpy Generator seeded from a jax key (for the procedural, non-traced algorithms)."""
    if _is_rng(key):
        return key
    seed = np.asarray(jax.random.bits(key, (4,), dtype=jnp.uint32))
    return np.random.default_rng(seed)


def _positive(name: str, value, unit: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} = {value!r}; allowed: finite and > 0 ({unit})")
    return v


def _fraction(name: str, value, *, open_upper: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and 0.0 <= v and (v < 1.0 if open_upper else v <= 1.0)
    if not ok:
        upper = "< 1" if open_upper else "<= 1"
        raise InputError(f"{name} = {value!r}; allowed: 0 <= {name} {upper}")
    return v


def _optional_mask(grid: Grid, name: str, value, default: bool) -> np.ndarray:
    if value is None:
        return np.full(grid.shape, default)
    arr = np.asarray(value)
    if arr.shape != grid.shape:
        raise InputError(f"{name} has shape {arr.shape}; allowed: the grid's shape {grid.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise InputError(f"{name} is not binary; allowed: booleans or 0/1")
        arr = arr.astype(bool)
    return arr


def _embedding_shape(grid: Grid, length_mm: float, kernel: str) -> tuple[int, ...]:
    """The zero-padded periodic grid: N_a + min(N_a, cut l / h_a) cells per axis, rounded up to
    an FFT-friendly size."""
    return tuple(
        scipy.fft.next_fast_len(n + min(n, math.ceil(_CUT[kernel] * length_mm / h)), real=True)
        for n, h in zip(grid.shape, grid.spacing_mm, strict=True)
    )


def _spectral_amplitude(grid: Grid, length_mm: float, kernel: str) -> np.ndarray:
    """sqrt of the circulant-embedding eigenvalues on the padded grid (rfftn half-spectrum)."""
    padded = _embedding_shape(grid, length_mm, kernel)
    r2 = np.zeros(padded)
    for a, (m, h) in enumerate(zip(padded, grid.spacing_mm, strict=True)):
        i = np.arange(m)
        lag = np.minimum(i, m - i) * h  # periodic distance on the embedding grid
        shape = [1] * grid.ndim
        shape[a] = m
        r2 = r2 + (lag**2).reshape(shape)
    if kernel == "gaussian":
        cov = np.exp(-0.5 * r2 / length_mm**2)
    else:
        cov = np.exp(-np.sqrt(r2) / length_mm)
    s = np.clip(np.fft.fftn(cov).real, 0.0, None)
    # Discrete normalisation: every cell's variance is mean_k S_k (= C(0) = 1 before clipping).
    s = s / s.mean()
    return np.sqrt(s[..., : padded[-1] // 2 + 1])


def gaussian_field(
    grid: Grid,
    correlation_length_mm: float,
    key,
    *,
    kernel: str = "gaussian",
) -> Float[Array, " *shape"]:
    """A stationary Gaussian random field of mean 0 and variance exactly 1 (module docs).

    **Arguments:**
    - `grid`: the [`Grid`][twinjax.pde.Grid] (1-D to 3-D).
    - `correlation_length_mm`: l (mm); the correlation at lag l is exp(-1/2) (Gaussian kernel)
      or exp(-1) (exponential kernel).
    - `key`: a `jax.random` key (traceable: the call can be `jit`-ed or `vmap`-ed over keys with
      the other arguments fixed) or a `numpy.random.Generator`.
    - `kernel`: ``"gaussian"`` (smooth field) or ``"exponential"`` (rough, Ornstein-Uhlenbeck-
      like field).

    **Returns:** a float64 jax array of `grid.shape` (values at the cell centres).
    """
    return jnp.asarray(_gaussian(grid, correlation_length_mm, key, kernel))


def _gaussian(grid: Grid, correlation_length_mm, key, kernel: str):
    """`gaussian_field` as a numpy array for a numpy Generator (no compilation: the procedural
    generators use this path) and a jax array for a jax key."""
    if kernel not in _CUT:
        raise InputError(f"kernel = {kernel!r}; allowed: 'gaussian' or 'exponential'")
    ell = _positive("correlation_length_mm", correlation_length_mm, "mm")
    padded = _embedding_shape(grid, ell, kernel)
    amp = _spectral_amplitude(grid, ell, kernel)
    if _is_rng(key):
        white = key.standard_normal(padded)
        axes = tuple(range(grid.ndim))
        field = np.fft.irfftn(amp * np.fft.rfftn(white), s=padded, axes=axes)
        return field[tuple(slice(0, n) for n in grid.shape)]
    # complex amplitude: the product with the spectrum passes strict dtype promotion
    return _synthesise(jnp.asarray(amp.astype(np.complex128)), key, padded, grid.shape)


@functools.partial(jax.jit, static_argnames=("padded", "shape"))
def _synthesise(amp, key, padded: tuple[int, ...], shape: tuple[int, ...]):
    # one compilation per padded shape, shared by every correlation length and kernel
    white = jax.random.normal(key, padded, dtype=jnp.float64)
    field = jnp.fft.irfftn(amp * jnp.fft.rfftn(white), s=padded, axes=tuple(range(len(shape))))
    return field[tuple(slice(0, n) for n in shape)]


def lognormal_field(
    grid: Grid,
    mean: float,
    cv: float,
    correlation_length_mm: float,
    key,
    *,
    kernel: str = "gaussian",
) -> Float[Array, " *shape"]:
    """A positive field ``exp(mu + sigma g)`` with expected value `mean` and coefficient of
    variation `cv` in every cell exactly (module docs); g is `gaussian_field`.

    **Arguments:** `mean` (> 0, any unit: the field has the same unit), `cv` (>= 0, sd / mean),
    `correlation_length_mm` (mm, of g), `key`, `kernel` as in `gaussian_field`.

    **Returns:** a float64 jax array of `grid.shape`, > 0.
    """
    m = _positive("mean", mean, "the field's unit")
    return jnp.asarray(_lognormal(grid, m, _cv(cv), correlation_length_mm, key, kernel))


def _cv(cv) -> float:
    c = float(cv)
    if not (math.isfinite(c) and c >= 0):
        raise InputError(f"cv = {cv!r}; allowed: finite and >= 0 (sd / mean)")
    return c


def _lognormal(grid: Grid, mean: float, cv: float, correlation_length_mm, key, kernel: str):
    sigma2 = math.log1p(cv * cv)
    g = _gaussian(grid, correlation_length_mm, key, kernel)
    xp = np if _is_rng(key) else jnp
    return mean * xp.exp(math.sqrt(sigma2) * g - 0.5 * sigma2)


def necrotic_core(grid: Grid, centre_mm, radius_mm) -> np.ndarray:
    """The cells whose centre lies inside the ellipsoid (circle, sphere) ``sum_a ((x_a - c_a) /
    r_a)^2 <= 1``.

    **Arguments:** `centre_mm` (one coordinate per axis, mm, from the grid's origin corner),
    `radius_mm` (> 0, mm; one value, or one semi-axis per axis).

    **Returns:** a boolean numpy array of `grid.shape` (may be empty for a core smaller than a
    cell).
    """
    c = np.asarray(centre_mm, dtype=float).reshape(-1)
    if c.shape != (grid.ndim,) or not np.all(np.isfinite(c)):
        raise InputError(f"centre_mm = {centre_mm!r}; allowed: {grid.ndim} finite coordinates (mm)")
    r = np.broadcast_to(np.asarray(radius_mm, dtype=float), (grid.ndim,))
    if not np.all(np.isfinite(r) & (r > 0)):
        raise InputError(f"radius_mm = {radius_mm!r}; allowed: finite and > 0 (mm)")
    q = sum(((x - ca) / ra) ** 2 for x, ca, ra in zip(grid.coordinates_mm(), c, r, strict=True))
    return np.asarray(q <= 1.0)


def fibrosis_patches(
    grid: Grid,
    area_fraction: float,
    correlation_length_mm: float,
    key,
    *,
    region=None,
    kernel: str = "gaussian",
) -> np.ndarray:
    """Fibrotic patches: the ``round(area_fraction * n)`` cells of `region` (n cells) where a
    Gaussian random field is largest, i.e. the field thresholded at its empirical
    ``1 - area_fraction`` quantile, so the fraction is exact to one cell.

    **Arguments:** `area_fraction` (0 to 1, of the region's cells), `correlation_length_mm` (mm,
    the patch size scale), `key`, `region` (boolean map; default the whole grid), `kernel`.

    **Returns:** a boolean numpy array of `grid.shape`, False outside `region`.
    """
    f = _fraction("area_fraction", area_fraction)
    inside = _optional_mask(grid, "region", region, True)
    g = np.asarray(_gaussian(grid, correlation_length_mm, key, kernel))
    idx = np.flatnonzero(inside)
    k = round(f * idx.size)
    out = np.zeros(grid.n_cells, dtype=bool)
    if k:
        # stable sort: ties (none in practice) are broken by cell order, so k is exact
        order = np.argsort(-g.reshape(-1)[idx], kind="stable")
        out[idx[order[:k]]] = True
    return out.reshape(grid.shape)


def cellularity(
    grid: Grid,
    key,
    *,
    mean: float = 0.6,
    sd: float = 0.1,
    correlation_length_mm: float = 0.5,
    tumour=None,
    necrosis=None,
    fibrosis=None,
    fibrotic_factor: float = 0.3,
    outside: float = 0.0,
) -> np.ndarray:
    """Tumour-cell volume fraction (0 to 1) per cell.

    In viable tumour the map has a Beta(mean, sd) marginal (Gaussian copula of a
    `gaussian_field`, so it is spatially correlated and stays in [0, 1]); it is multiplied by
    `fibrotic_factor` in fibrosis, is 0 in necrosis and `outside` outside the tumour. The
    defaults (mean 0.6, sd 0.1, fibrotic factor 0.3) are illustrative, not literature values.

    **Arguments:** `key`; `mean` (0 < mean < 1) and `sd` (>= 0, sd^2 < mean (1 - mean)) of the
    viable-tumour marginal; `correlation_length_mm` (mm); `tumour`, `necrosis`, `fibrosis`
    (optional boolean maps; default all tumour, no necrosis, no fibrosis); `fibrotic_factor`
    (0 to 1); `outside` (0 to 1).

    **Returns:** a float64 numpy array of `grid.shape` in [0, 1].
    """
    from scipy.special import ndtr
    from scipy.stats import beta as beta_dist

    mu = _fraction("mean", mean, open_upper=True)
    if mu <= 0:
        raise InputError(f"mean = {mean!r}; allowed: 0 < mean < 1")
    s = float(sd)
    if not (math.isfinite(s) and 0 <= s and s * s < mu * (1 - mu)):
        raise InputError(
            f"sd = {sd!r}; allowed: 0 <= sd < sqrt(mean (1 - mean)) = {math.sqrt(mu * (1 - mu))}"
        )
    ff = _fraction("fibrotic_factor", fibrotic_factor)
    out_v = _fraction("outside", outside)
    tum = _optional_mask(grid, "tumour", tumour, True)
    nec = _optional_mask(grid, "necrosis", necrosis, False)
    fib = _optional_mask(grid, "fibrosis", fibrosis, False)
    g = np.asarray(_gaussian(grid, correlation_length_mm, key, "gaussian"))
    if s == 0:
        c = np.full(grid.shape, mu)
    else:
        k = mu * (1 - mu) / (s * s) - 1.0  # Beta(a, b) with a + b = k has the requested sd
        c = beta_dist.ppf(ndtr(g), mu * k, (1 - mu) * k)
    c = np.where(fib, ff * c, c)
    c = np.where(nec, 0.0, c)
    return np.where(tum, c, out_v)


def target_expression(
    grid: Grid,
    key,
    *,
    target: str = "PSMA",
    mean_density_nmol_per_L: float | None = None,
    cv: float = 0.5,
    correlation_length_mm: float = 1.0,
    necrosis=None,
    region=None,
    modulation=None,
) -> Float[Array, " *shape"]:
    """A receptor-density map (nmol per L of tissue): a lognormal field of mean
    `mean_density_nmol_per_L` and coefficient of variation `cv`, times `modulation`, zero in
    `necrosis` and outside `region`.

    **Arguments:**
    - `key`: a `jax.random` key or a numpy Generator.
    - `target`: ``"PSMA"``, ``"FAP"`` or ``"GRPR"`` (sets the default density,
      `TARGET_DENSITY_NMOL_PER_L`: PSMA 50 nmol/L (Fele-Paranj et al., EJNMMI Radiopharm Chem
      2024); FAP 20 and GRPR 10 nmol/L are illustrative, see the module source).
    - `mean_density_nmol_per_L`: expected density in expressing tissue (> 0, nmol/L).
    - `cv`: spatial coefficient of variation (>= 0; 0.5 is a twinjax assumption, as for the
      between-lesion spread in the PSMA templates).
    - `correlation_length_mm`: of the underlying Gaussian field (mm).
    - `necrosis`, `region`: optional boolean maps (no expression in necrosis, none outside the
      region; default no necrosis, the whole grid).
    - `modulation`: optional map >= 0 multiplying the density (e.g. relative cellularity for an
      epithelial target, or a stromal weight for FAP); the mean is then scaled by its mean.

    **Returns:** a float64 jax array of `grid.shape`, >= 0.
    """
    if target not in TARGET_DENSITY_NMOL_PER_L:
        raise InputError(f"target = {target!r}; allowed: {sorted(TARGET_DENSITY_NMOL_PER_L)}")
    if mean_density_nmol_per_L is None:
        mean_density_nmol_per_L = TARGET_DENSITY_NMOL_PER_L[target]
    mean = _positive("mean_density_nmol_per_L", mean_density_nmol_per_L, "nmol/L")
    nec = _optional_mask(grid, "necrosis", necrosis, False)
    inside = _optional_mask(grid, "region", region, True)
    mod = (
        None if modulation is None else grid.check_field("modulation", modulation, nonnegative=True)
    )
    rho = _lognormal(grid, mean, _cv(cv), correlation_length_mm, key, "gaussian")
    if mod is not None:
        rho = rho * mod
    xp = np if _is_rng(key) else jnp
    return jnp.asarray(xp.where(inside & ~nec, rho, 0.0))


def perfusion_map(
    grid: Grid,
    vascular_fraction,
    *,
    mean_perfusion_mL_per_min_per_mL: float = 0.5,
    smoothing_length_mm: float = 0.15,
    region=None,
) -> np.ndarray:
    """Perfusion rate per cell (1/h): the vascular fraction smoothed over
    `smoothing_length_mm`, scaled to a mean of `mean_perfusion_mL_per_min_per_mL` over `region`
    and converted (x 60) to 1/h (module docs). The same proportionality gives a
    permeability-surface (PS) map: pass its mean in mL/min/mL.

    **Arguments:** `vascular_fraction` (map, 0 to 1); `mean_perfusion_mL_per_min_per_mL` (> 0;
    default 0.5, Fele-Paranj et al. 2024); `smoothing_length_mm` (Gaussian sd, mm; default
    0.15 mm, Thomlinson & Gray 1955); `region` (boolean map for the mean; default all cells).

    **Returns:** a float64 numpy array of `grid.shape` (1/h), >= 0.
    """
    from scipy.ndimage import gaussian_filter

    vf = grid.check_field("vascular_fraction", vascular_fraction, nonnegative=True)
    if vf.max() > 1.0:
        raise InputError(f"vascular_fraction has max {vf.max()!r}; allowed: <= 1")
    f = _positive("mean_perfusion_mL_per_min_per_mL", mean_perfusion_mL_per_min_per_mL, "mL/min/mL")
    ell = _positive("smoothing_length_mm", smoothing_length_mm, "mm")
    inside = _optional_mask(grid, "region", region, True)
    if not inside.any():
        raise InputError("region is empty; allowed: at least one cell inside")
    sigma = [ell / h for h in grid.spacing_mm]
    # normalised convolution: no loss of vessels near the domain faces
    smooth = gaussian_filter(vf, sigma, mode="constant") / gaussian_filter(
        np.ones(grid.shape), sigma, mode="constant"
    )
    mean = float(smooth[inside].mean())
    if mean <= 0:
        raise InputError("vascular_fraction is 0 throughout the region; no perfusion to scale")
    return 60.0 * f * smooth / mean


def load_map(path, grid: Grid, *, name: str, nonnegative: bool = True) -> np.ndarray:
    """Read a map from ``.npy`` or NIfTI (``.nii``, ``.nii.gz``, via nibabel) and check it
    against `grid`.

    The array is taken in its stored voxel order (nibabel's index order for NIfTI; the affine's
    orientation and origin are not applied, so resample/reorient onto the grid first). Trailing
    axes of length 1 beyond the grid's dimension are dropped (a 2-D map saved as (nx, ny, 1)).
    For NIfTI, the header's voxel sizes must equal `grid.spacing_mm` (within 1e-6 relative; the
    file is assumed to be in mm). For a mask, compare the result: ``load_map(...) > 0``.

    **Arguments:** `path` (str or Path); `grid`; `name` (the field's name, used in messages);
    `nonnegative` (reject negative values, default True).

    **Returns:** a float64 numpy array of `grid.shape`. Raises `InputError` naming the path for a
    missing file, an unknown extension, an unreadable/corrupt file, a wrong shape or voxel size,
    NaN/inf or negative values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{name}: map file {p} does not exist")
    low = p.name.lower()
    zooms = None
    if low.endswith(".npy"):
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise InputError(f"{name}: cannot read {p} as .npy ({e})") from e
    elif low.endswith((".nii", ".nii.gz")):
        import gzip
        import zlib

        import nibabel as nib

        try:
            img = nib.load(p)
            arr = np.asarray(img.get_fdata(dtype=np.float64))
            zooms = tuple(float(z) for z in img.header.get_zooms())
        except (nib.filebasedimages.ImageFileError, OSError, ValueError, EOFError,
                zlib.error, gzip.BadGzipFile) as e:  # fmt: skip
            raise InputError(f"{name}: cannot read {p} as NIfTI ({type(e).__name__}: {e})") from e
    else:
        raise InputError(f"{name}: {p} has an unknown extension; allowed: .npy, .nii, .nii.gz")
    while arr.ndim > grid.ndim and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != grid.shape:
        raise InputError(f"{name}: {p} has shape {arr.shape}; allowed: the grid's {grid.shape}")
    if zooms is not None:
        z = np.asarray(zooms[: grid.ndim])
        h = np.asarray(grid.spacing_mm)
        if z.shape != h.shape or np.any(np.abs(z - h) > 1e-6 * h):
            raise InputError(
                f"{name}: {p} has voxel sizes {tuple(z.tolist())} mm; allowed: the grid's "
                f"spacing {grid.spacing_mm} mm (within 1e-6 relative)"
            )
    if arr.dtype == bool:
        arr = arr.astype(float)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{name}: {p} holds {arr.dtype} values; allowed: real numbers")
    try:
        return grid.check_field(name, arr, nonnegative=nonnegative)
    except InputError as e:
        raise InputError(f"{e} (read from {p})") from None

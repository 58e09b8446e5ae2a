"""Image synthesis: from simulated tissue activity to a PET/SPECT image as a scanner reports it.

A tissue model gives the activity concentration ``a(x, t)`` (**MBq/mL**, the average over each
cell, physical activity, i.e. decay included) on a fine [`Grid`][twinjax.pde.Grid] at sampled
times ``times_h``, as an array of shape ``(n_times, *grid.shape)``. A scanner sees it through
these steps (all linear in ``a`` and differentiable, except the noise):

1. **Frame integration** (`frame_average`, `frame_average_fn`). A frame ``[t_s, t_e]`` records
   the time average ``a_f(x) = (t_e - t_s)^-1 int_{t_s}^{t_e} a(x, t) dt``, exact for the
   piecewise-linear interpolant of the samples (a fixed weight matrix on the samples), or by
   Gauss-Legendre quadrature of a callable ``a(t)``.
2. **Point-spread function** (`blur`). A separable Gaussian of standard deviation
   ``sigma = FWHM / (2 sqrt(2 ln 2))`` per axis (the convention of
   [`sphere_recovery`][twinjax.imaging.observe.sphere_recovery]), applied on the fine tissue
   grid, where it is well sampled. The discrete kernel is Lindeberg's discrete Gaussian
   ``T(n) = exp(-s^2) I_n(s^2)`` with ``s = sigma / h`` (Lindeberg 1990, IEEE Trans Pattern Anal
   Mach Intell 12:234): it sums to 1 and has variance exactly ``sigma^2`` for every ``sigma``
   (a sampled Gaussian loses variance when ``sigma`` is below about one cell), and it is the
   exact kernel of the semi-discrete diffusion equation of `twinjax.pde` after time
   ``sigma^2 / 2D``. **Edges:** zero activity outside the image; counts blurred past the edge
   are lost, as outside a scanner's field of view (the Gaussian tail beyond the margin: keep
   3 FWHM = 7 sigma around the activity to conserve the total to 1e-12).
3. **Voxelisation** (`to_scanner_grid`). Each scanner voxel holds the mean of the fine cells it
   contains (the voxel size must be an integer multiple of the grid spacing on every axis), so
   ``sum a V`` (the total activity, MBq) is conserved exactly. The reported image therefore has
   the PSF's resolution convolved with the voxel: `Scanner.psf_fwhm_mm` is the resolution
   before voxelisation.
4. **Expected counts** (`simulate_image`). ``mu_v = S a_v V_v dt``: sensitivity ``S`` (counts
   per s per MBq, as in [`PoissonCounts`][twinjax.imaging.observe.PoissonCounts]), voxel volume
   ``V_v`` (mL) and frame duration ``dt`` (s).
5. **Noise** (`poisson_image`): ``N_v ~ Poisson(mu_v)``, drawn with an explicit PRNG key.
   Reconstructed images have correlated, non-Poisson noise; ``S`` here is the *effective*
   (noise-equivalent) sensitivity per voxel that gives the image its noise level.
6. **Calibration and decay correction** (`counts_to_image`). ``C_v = N_v / (S V_v dt) * DCF``,
   reported in **Bq/mL** as a scanner does, with the decay-correction factor of a frame
   ``DCF = exp(lambda (t_s - t_ref)) lambda dt / (1 - exp(-lambda dt))`` (the mean of
   ``exp(-lambda (t - t_ref))`` over the frame, inverted), ``t_ref`` the administration time or
   the frame start. A decaying uniform source then reads its activity at ``t_ref``.

`region_tacs` turns a series of images into time-activity curves per region (label map or
weighted masks). Images here are 1-D, 2-D or 3-D; for fewer than 3 axes a voxel is taken as
1 mm thick on the missing axes, as in `Grid.cell_volume_mL`.

Units: time h, length mm, activity concentration MBq/mL in, Bq/mL out, counts dimensionless.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.special import ive

from .. import units
from .._errors import InputError
from ..nuclides import nuclide as _lookup_nuclide
from ..pde import Grid

__all__ = [
    "Frames",
    "Scanner",
    "blur",
    "counts_to_image",
    "decay_correction_factor",
    "frame_average",
    "frame_average_fn",
    "poisson_image",
    "region_tacs",
    "simulate_image",
    "to_scanner_grid",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _is_traced(x) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(x))


def _positive_tuple(name: str, value, unit: str) -> tuple[float, ...]:
    v = np.atleast_1d(np.asarray(value, dtype=float))
    if v.ndim != 1 or not 1 <= v.size <= 3 or not np.all(np.isfinite(v) & (v > 0)):
        raise InputError(
            f"{name} = {value!r}; allowed: finite values > 0 ({unit}), one value or one per "
            "axis (1 to 3)"
        )
    return tuple(float(x) for x in v)


def _per_axis(name: str, values: tuple[float, ...], ndim: int) -> tuple[float, ...]:
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise InputError(f"{name} = {values!r} has {len(values)} axes; allowed: 1 or {ndim}")
    return values


def _check_finite(name: str, value, *, nonnegative: bool = False) -> None:
    """NaN/inf (and sign) check of a concrete array; tracers pass (checked by the caller's
    concrete call)."""
    if _is_traced(value):
        return
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise InputError(
            f"{name} has {int(np.sum(~np.isfinite(arr)))} NaN or infinite values; allowed: finite"
        )
    if nonnegative and arr.size and arr.min() < 0:
        raise InputError(f"{name} has min {float(arr.min())!r}; allowed: >= 0 everywhere")


def _float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)


class Scanner(eqx.Module):
    """A PET or SPECT scanner as an image-forming system (all fields static).

    **Arguments:**
    - `voxel_mm`: reconstructed voxel size (mm), one value or one per axis.
    - `psf_fwhm_mm`: full width at half maximum of the Gaussian point-spread function (mm),
      one value or one per axis; the resolution before voxelisation.
    - `sensitivity_cps_per_MBq`: effective counts per second per MBq in a voxel (sets the noise).
    - `nuclide`: the imaged radionuclide, for decay correction (default ``"F-18"``).

    ```python
    pet = Scanner(4.0, 6.0, sensitivity_cps_per_MBq=3000.0, nuclide="Ga-68")
    ```
    """

    voxel_mm: tuple[float, ...] = eqx.field(static=True)
    psf_fwhm_mm: tuple[float, ...] = eqx.field(static=True)
    sensitivity_cps_per_MBq: float = eqx.field(static=True)
    nuclide: str = eqx.field(static=True)

    def __init__(self, voxel_mm, psf_fwhm_mm, *, sensitivity_cps_per_MBq, nuclide="F-18"):
        self.voxel_mm = _positive_tuple("Scanner voxel_mm", voxel_mm, "mm")
        self.psf_fwhm_mm = _positive_tuple("Scanner psf_fwhm_mm", psf_fwhm_mm, "mm")
        s = sensitivity_cps_per_MBq
        if not (isinstance(s, int | float) and math.isfinite(s) and s > 0):
            raise InputError(
                f"Scanner sensitivity_cps_per_MBq = {s!r}; allowed: a finite value > 0 "
                "(counts per s per MBq)"
            )
        self.sensitivity_cps_per_MBq = float(s)
        self.nuclide = _lookup_nuclide(nuclide).name

    @property
    def half_life_h(self) -> float:
        return _lookup_nuclide(self.nuclide).half_life_h

    def voxel_volume_mL(self, ndim: int) -> float:
        """Volume of one voxel of an `ndim`-axis image (mL; 1 mm thickness on missing axes)."""
        return math.prod(_per_axis("Scanner voxel_mm", self.voxel_mm, ndim)) * 1e-3

    def voxel_grid(self, grid: Grid) -> Grid:
        """The scanner's voxel grid over the domain of the tissue `grid`."""
        ratios = _ratios(grid, self)
        shape = tuple(n // r for n, r in zip(grid.shape, ratios, strict=True))
        return Grid(shape, _per_axis("Scanner voxel_mm", self.voxel_mm, grid.ndim))


def _ratios(grid: Grid, scanner: Scanner) -> tuple[int, ...]:
    voxel = _per_axis("Scanner voxel_mm", scanner.voxel_mm, grid.ndim)
    out = []
    for a, (v, h, n) in enumerate(zip(voxel, grid.spacing_mm, grid.shape, strict=True)):
        r = v / h
        k = round(r)
        if k < 1 or abs(r - k) > 1e-9 * r:
            raise InputError(
                f"scanner voxel_mm {v!r} on axis {a} is not an integer multiple of the grid "
                f"spacing_mm {h!r} (ratio {r:.6g}); allowed: voxel_mm = k * spacing_mm, k = 1, "
                "2, ..."
            )
        if n % k:
            raise InputError(
                f"grid shape {grid.shape} has {n} cells on axis {a}, not a multiple of the "
                f"{k} cells per scanner voxel; allowed: a grid that tiles whole voxels"
            )
        out.append(k)
    return tuple(out)


def to_scanner_grid(maps, grid: Grid, scanner: Scanner):
    """Average the cells of `grid` into the scanner's voxels.

    **Arguments:**
    - `maps`: activity concentration (MBq/mL, or any intensive quantity) of shape
      ``(..., *grid.shape)``; leading axes (time, frames, cases) are kept.
    - `grid`: the tissue grid; `scanner`: a [`Scanner`][].

    **Returns:** ``(..., *scanner.voxel_grid(grid).shape)``, the mean over each voxel's cells, so
    ``sum(out) * voxel volume == sum(maps) * cell volume`` exactly. Raises `InputError` for
    voxel sizes that are not integer multiples of the grid spacing.
    """
    ratios = _ratios(grid, scanner)
    x = _float(maps)
    if x.shape[x.ndim - grid.ndim :] != grid.shape or x.ndim < grid.ndim:
        raise InputError(
            f"maps has shape {x.shape}; allowed: (..., *grid.shape) with grid.shape {grid.shape}"
        )
    _check_finite("maps", maps)
    return _downsample(x, ratios)


def _downsample(x, ratios: tuple[int, ...]):
    """Mean over blocks of `ratios` cells on the trailing ``len(ratios)`` axes (a reshape)."""
    nd = len(ratios)
    lead = x.shape[: x.ndim - nd]
    split = []
    for n, r in zip(x.shape[x.ndim - nd :], ratios, strict=True):
        split += [n // r, r]
    axes = tuple(len(lead) + 2 * i + 1 for i in range(nd))
    return jnp.mean(x.reshape(lead + tuple(split)), axis=axes)


def _discrete_gaussian(s: float, n: int) -> np.ndarray:
    """Lindeberg's discrete Gaussian of standard deviation `s` cells, cut where the tail mass
    is below 1e-13 or where taps can no longer reach data (n - 1), renormalised to sum 1."""
    radius = min(math.ceil(7.5 * s) + 2, n - 1)
    k = np.arange(-radius, radius + 1)
    w = ive(np.abs(k), s * s)
    return w / w.sum()


@jax.jit
def _separable(x, kernels: tuple):
    """Convolve the trailing ``len(kernels)`` axes of `x`, one 1-D kernel each. Jitted as a
    whole (the kernels are arguments, so one compile serves every FWHM of the same shapes)."""
    for i, w in enumerate(kernels):
        if w.size == 1:
            continue
        r = w.size // 2
        axis = x.ndim - len(kernels) + i
        xm = jnp.moveaxis(x, axis, -1)
        shape = xm.shape
        # Cross-correlation with a symmetric kernel is convolution; explicit (r, r) zero
        # padding keeps the output on the input's cells with zero activity outside the image.
        out = lax.conv_general_dilated(
            xm.reshape((-1, 1, shape[-1])), w.astype(x.dtype)[None, None, :], (1,), [(r, r)]
        )
        x = jnp.moveaxis(out.reshape(shape), -1, axis)
    return x


def blur(image, fwhm_mm, spacing_mm):
    """Separable Gaussian point-spread function (module docs: discrete Gaussian, zero edges).

    **Arguments:**
    - `image`: array whose trailing axes are spatial. Their number is the length of `fwhm_mm`
      or `spacing_mm` when one is given per axis; when both are scalars, every axis is spatial
      (pass per-axis tuples to blur a stack of images).
    - `fwhm_mm`: FWHM (mm), > 0, one value or one per spatial axis.
    - `spacing_mm`: cell size (mm), > 0, one value or one per spatial axis.

    **Returns:** the blurred image, same shape and units; linear and count-conserving away from
    the edges (``sigma = FWHM / 2.3548``).
    """
    fwhm = _positive_tuple("fwhm_mm", fwhm_mm, "mm")
    spacing = _positive_tuple("spacing_mm", spacing_mm, "mm")
    x = _float(image)
    n_given = max(len(fwhm), len(spacing))
    ndim = n_given if n_given > 1 else x.ndim
    if not (1 <= ndim <= 3 and ndim <= x.ndim):
        raise InputError(
            f"image has shape {x.shape}; allowed: 1 to 3 trailing spatial axes (fwhm_mm "
            f"{fwhm_mm!r}, spacing_mm {spacing_mm!r})"
        )
    fwhm, spacing = _per_axis("fwhm_mm", fwhm, ndim), _per_axis("spacing_mm", spacing, ndim)
    _check_finite("image", image)
    return _separable(x, _psf_kernels(fwhm, spacing, x.shape[x.ndim - ndim :]))


def _psf_kernels(fwhm, spacing, shape) -> tuple:
    return tuple(
        jnp.asarray(_discrete_gaussian(f / FWHM_PER_SIGMA / h, n))
        for f, h, n in zip(fwhm, spacing, shape, strict=True)
    )


class Frames(eqx.Module):
    """Acquisition frames ``[start_h[i], end_h[i]]`` (h after the reference time of the model,
    normally the administration): sorted, non-overlapping, each with ``end > start``.

    ```python
    static = Frames([1.0], [1.25])                       # one 15-min frame at 1 h
    dynamic = Frames.from_edges([0, 0.05, 0.1, 0.25, 0.5, 1.0])
    ```
    """

    start_h: tuple[float, ...] = eqx.field(static=True)
    end_h: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, start_h, end_h):
        s = np.atleast_1d(np.asarray(start_h, dtype=float))
        e = np.atleast_1d(np.asarray(end_h, dtype=float))
        if s.ndim != 1 or s.shape != e.shape or s.size == 0:
            raise InputError(
                f"frames: start_h {s.shape} and end_h {e.shape}; allowed: two 1-D sequences of "
                "the same length >= 1"
            )
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(e))):
            raise InputError("frames: start_h/end_h contain NaN or inf; allowed: finite hours")
        bad = np.flatnonzero(e <= s)
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"frame {i}: end_h {float(e[i])!r} <= start_h {float(s[i])!r}; allowed: "
                "end_h > start_h"
            )
        if np.any(np.diff(s) <= 0):
            raise InputError(f"frames: start_h = {s.tolist()}; allowed: strictly increasing")
        over = np.flatnonzero(e[:-1] > s[1:])
        if over.size:
            i = int(over[0])
            raise InputError(
                f"frame {i} ends at {float(e[i])!r} h after frame {i + 1} starts "
                f"({float(s[i + 1])!r} h); "
                "allowed: non-overlapping frames"
            )
        self.start_h = tuple(float(v) for v in s)
        self.end_h = tuple(float(v) for v in e)

    @classmethod
    def from_edges(cls, edges_h) -> Frames:
        """Contiguous frames between consecutive `edges_h` (h)."""
        e = np.asarray(edges_h, dtype=float)
        if e.ndim != 1 or e.size < 2:
            raise InputError(f"frame edges_h = {edges_h!r}; allowed: >= 2 increasing times (h)")
        return cls(e[:-1], e[1:])

    def __len__(self) -> int:
        return len(self.start_h)

    @property
    def duration_h(self) -> np.ndarray:
        return np.asarray(self.end_h) - np.asarray(self.start_h)

    @property
    def mid_h(self) -> np.ndarray:
        return 0.5 * (np.asarray(self.end_h) + np.asarray(self.start_h))


def _frame_weights(times: np.ndarray, frames: Frames) -> np.ndarray:
    """W (frames x samples): the frame mean of the piecewise-linear interpolant is ``W @ f``.

    On a sample interval ``[t_k, t_k+1]`` overlapping the frame on ``[a, b]``, the hat functions
    integrate to ``((t_k+1 - a)^2 - (t_k+1 - b)^2) / 2 dt`` (weight of f_k) and
    ``((b - t_k)^2 - (a - t_k)^2) / 2 dt`` (weight of f_k+1)."""
    ts, te = np.asarray(frames.start_h)[:, None], np.asarray(frames.end_h)[:, None]
    lo, hi = times[None, :-1], times[None, 1:]
    a = np.maximum(ts, lo)
    b = np.maximum(np.minimum(te, hi), a)  # no overlap: a zero-length piece
    dt = hi - lo
    w = np.zeros((len(frames), times.size))
    w[:, :-1] += ((hi - a) ** 2 - (hi - b) ** 2) / (2.0 * dt)
    w[:, 1:] += ((b - lo) ** 2 - (a - lo) ** 2) / (2.0 * dt)
    return w / (te - ts)


def frame_average(times_h, maps, frame_start_h, frame_end_h):
    """Mean of sampled maps over each frame, exact for the piecewise-linear interpolant.

    **Arguments:**
    - `times_h`: sample times (h), strictly increasing, concrete.
    - `maps`: samples ``(len(times_h), ...)`` (any units; MBq/mL for images).
    - `frame_start_h`, `frame_end_h`: frame limits (h), sorted and within ``times_h``.

    **Returns:** ``(n_frames, ...)`` frame means, same units (a linear map of `maps`: pure JAX).
    """
    x = _float(maps)
    w = _frame_matrix(times_h, Frames(frame_start_h, frame_end_h), x.shape)
    _check_finite("maps", maps)
    return jnp.tensordot(jnp.asarray(w, dtype=x.dtype), x, axes=1)


def _frame_matrix(times_h, frames: Frames, shape: tuple[int, ...]) -> np.ndarray:
    """Validated `_frame_weights` for maps of `shape` sampled at `times_h`."""
    if _is_traced(times_h):
        raise InputError("times_h is traced; allowed: concrete sample times (h), static structure")
    t = np.asarray(times_h, dtype=float)
    if t.ndim != 1 or t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise InputError(
            f"times_h = {t.tolist()!r}; allowed: >= 2 finite, strictly increasing times (h)"
        )
    if len(shape) < 1 or shape[0] != t.size:
        raise InputError(
            f"maps has shape {shape}; allowed: a leading time axis of len(times_h) = {t.size}"
        )
    if frames.start_h[0] < t[0] or frames.end_h[-1] > t[-1]:
        raise InputError(
            f"frames span [{frames.start_h[0]!r}, {frames.end_h[-1]!r}] h; allowed: within the "
            f"sampled times [{float(t[0])!r}, {float(t[-1])!r}] h (no extrapolation)"
        )
    return _frame_weights(t, frames)


def frame_average_fn(fn: Callable, frame_start_h, frame_end_h, *, order: int = 16):
    """Mean of a callable ``fn(t_h) -> array`` (a JAX function of a scalar time, h) over each
    frame by `order`-point Gauss-Legendre quadrature (exact for polynomials of degree
    ``2 order - 1``; to rounding for exponentials over a frame).

    **Returns:** ``(n_frames, *fn(t).shape)``.
    """
    frames = Frames(frame_start_h, frame_end_h)
    if not (isinstance(order, int) and 1 <= order <= 64):
        raise InputError(f"order = {order!r}; allowed: an integer 1 to 64")
    x, w = np.polynomial.legendre.leggauss(order)
    mid, half = frames.mid_h[:, None], 0.5 * frames.duration_h[:, None]
    t = jnp.asarray(mid + half * x[None, :])  # (frames, order)
    vals = jax.vmap(jax.vmap(fn))(t)
    return jnp.tensordot(jnp.asarray(0.5 * w, dtype=vals.dtype), vals, axes=([0], [1]))


def decay_correction_factor(frame_start_h, frame_end_h, half_life_h, reference_time_h=None):
    """Factor turning a frame's mean activity into the activity at `reference_time_h`.

    ``DCF = exp(lambda (t_s - t_ref)) * lambda dt / (1 - exp(-lambda dt))`` with
    ``lambda = ln 2 / half_life_h`` and ``dt = t_e - t_s``: the inverse of the frame mean of
    ``exp(-lambda (t - t_ref))``. ``reference_time_h=None`` refers each frame to its own start.
    Arguments in h (arrays broadcast); pure JAX, differentiable.
    """
    if not _is_traced(half_life_h):
        hl = np.asarray(half_life_h, dtype=float)
        if not np.all(np.isfinite(hl) & (hl > 0)):
            raise InputError(f"half_life_h = {half_life_h!r}; allowed: finite and > 0 (h)")
    ts, te = _float(frame_start_h), _float(frame_end_h)
    if not _is_traced((ts, te)) and np.any(np.asarray(te) <= np.asarray(ts)):
        raise InputError(
            f"frame_end_h {np.asarray(te).tolist()} <= frame_start_h {np.asarray(ts).tolist()}; "
            "allowed: end > start"
        )
    lam = math.log(2.0) / _float(half_life_h)
    x = lam * (te - ts)
    in_frame = x / -jnp.expm1(-x)
    if reference_time_h is None:
        return in_frame
    return jnp.exp(lam * (ts - reference_time_h)) * in_frame


def simulate_image(
    times_h,
    activity_MBq_per_mL,
    grid: Grid,
    scanner: Scanner,
    frames: Frames,
    *,
    decay_corrected: bool = False,
    administration_time_h: float = 0.0,
):
    """Expected counts per scanner voxel and frame: frame mean, PSF on the tissue grid, voxel
    average, ``S a V dt`` (module docs). Pure JAX in `activity_MBq_per_mL` (differentiable,
    `vmap`-able over leading cases with the structure fixed).

    **Arguments:**
    - `times_h`: sample times (h), strictly increasing, covering the frames.
    - `activity_MBq_per_mL`: physical activity concentration (MBq/mL, decay included),
      ``(len(times_h), *grid.shape)``, >= 0 (e.g. ``1e-3 * TracerActivity.total`` in kBq/mL).
    - `grid`: the tissue [`Grid`][twinjax.pde.Grid]; `scanner`: a [`Scanner`][];
      `frames`: [`Frames`][].
    - `decay_corrected`: set if the maps are decay-corrected to `administration_time_h` (h)
      (a tracer model without a half-life): the scanner's nuclide then decays them,
      ``a exp(-lambda (t - t_adm))``, before the frames integrate them.

    **Returns:** expected counts ``(len(frames), *scanner.voxel_grid(grid).shape)``.
    """
    if not isinstance(frames, Frames):
        raise InputError(f"frames = {frames!r}; allowed: a twinjax.imaging.Frames")
    x = _float(activity_MBq_per_mL)
    if x.shape[1:] != grid.shape:
        raise InputError(
            f"activity_MBq_per_mL has shape {x.shape}; allowed: (len(times_h), *grid.shape) "
            f"with grid.shape {grid.shape}"
        )
    weights = _frame_matrix(times_h, frames, x.shape)
    if not math.isfinite(administration_time_h):
        raise InputError(f"administration_time_h = {administration_time_h!r}; allowed: finite")
    if decay_corrected:
        lam = math.log(2.0) / scanner.half_life_h
        times = np.asarray(times_h, dtype=float) - administration_time_h
        # the decay rides in the frame weights: W_fk exp(-lambda t_k), exact at the samples
        weights = weights * np.exp(-lam * times)[None, :]
    ratios = _ratios(grid, scanner)
    _check_finite("activity_MBq_per_mL", activity_MBq_per_mL, nonnegative=True)
    fwhm = _per_axis("Scanner psf_fwhm_mm", scanner.psf_fwhm_mm, grid.ndim)
    kernels = _psf_kernels(fwhm, grid.spacing_mm, grid.shape)
    exposure = scanner.sensitivity_cps_per_MBq * scanner.voxel_volume_mL(grid.ndim)
    scale = (exposure * frames.duration_h * units.S_PER_H).reshape((-1,) + (1,) * grid.ndim)
    w, sc = jnp.asarray(weights, dtype=x.dtype), jnp.asarray(scale, dtype=x.dtype)
    return _forward(x, w, kernels, sc, ratios)


@functools.partial(jax.jit, static_argnums=4)
def _forward(x, weights, kernels, scale, ratios):
    """Frame means -> PSF -> voxel means -> counts, one program per structure (not per value)."""
    mean = jnp.tensordot(weights, x, axes=1)
    return _downsample(_separable(mean, kernels), ratios) * scale


def poisson_image(key, expected_counts):
    """Counts ``N ~ Poisson(expected_counts)`` per voxel (float array of the same dtype).

    **Arguments:** `key` a JAX PRNG key; `expected_counts` >= 0, any shape.
    """
    _check_finite("expected_counts", expected_counts, nonnegative=True)
    lam = _float(expected_counts)
    return jax.random.poisson(key, lam, lam.shape).astype(lam.dtype)


def counts_to_image(
    counts,
    scanner: Scanner,
    frames: Frames,
    *,
    decay_correct_to: str = "administration",
    administration_time_h: float = 0.0,
):
    """Counts back to a calibrated image in Bq/mL, decay-corrected as a scanner reports it.

    **Arguments:**
    - `counts`: ``(len(frames), *voxels)`` measured (or expected) counts.
    - `scanner`, `frames`: those used to simulate them.
    - `decay_correct_to`: ``"administration"`` (to `administration_time_h`, h; the SUV
      convention), ``"frame_start"`` or ``"none"`` (frame-mean physical activity).

    **Returns:** activity concentration (Bq/mL), same shape.
    """
    if decay_correct_to not in ("administration", "frame_start", "none"):
        raise InputError(
            f"decay_correct_to = {decay_correct_to!r}; allowed: 'administration', "
            "'frame_start' or 'none'"
        )
    if not math.isfinite(administration_time_h):
        raise InputError(f"administration_time_h = {administration_time_h!r}; allowed: finite")
    n = _float(counts)
    if n.ndim < 2 or n.shape[0] != len(frames):
        raise InputError(
            f"counts has shape {n.shape}; allowed: (len(frames) = {len(frames)}, *voxels)"
        )
    ndim = n.ndim - 1
    dt_s = frames.duration_h * units.S_PER_H
    per_mbq = scanner.sensitivity_cps_per_MBq * scanner.voxel_volume_mL(ndim) * dt_s
    factor = 1.0 / (per_mbq * units.BQ_TO_MBQ)  # counts -> Bq/mL
    if decay_correct_to != "none":
        ref = administration_time_h if decay_correct_to == "administration" else None
        start, end = np.asarray(frames.start_h), np.asarray(frames.end_h)
        factor = factor * np.asarray(decay_correction_factor(start, end, scanner.half_life_h, ref))
    return n * jnp.asarray(factor, dtype=n.dtype).reshape((-1,) + (1,) * ndim)


def region_tacs(images, label_map) -> dict:
    """Mean of each region in each image: time-activity curves.

    **Arguments:**
    - `images`: ``(..., *spatial)`` (e.g. frames x voxels), any units.
    - `label_map`: an integer array of the spatial shape (regions are the labels > 0; 0 is
      background), or a mapping ``name -> weights`` of the spatial shape with booleans or
      fractions in [0, 1] (e.g. a fine-grid mask averaged by `to_scanner_grid`: partial voxels
      count by the fraction of them inside the region).

    **Returns:** ``{label: array (...)}``, the weighted mean ``sum w x / sum w`` per region,
    same units as `images`. Linear in `images` (pure JAX).
    """
    if isinstance(label_map, Mapping):
        names, weights = list(label_map), []
        if not names:
            raise InputError("label_map is an empty mapping; allowed: name -> weight map")
        for name in names:
            w = np.asarray(label_map[name], dtype=float)
            if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1 or w.sum() <= 0:
                raise InputError(
                    f"region {name!r} weights: allowed: finite fractions in [0, 1], not all 0"
                )
            weights.append(w)
        if len({w.shape for w in weights}) > 1:
            raise InputError(f"region weight maps differ in shape: {[w.shape for w in weights]}")
    else:
        lab = np.asarray(label_map)
        if not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"label_map has dtype {lab.dtype}; allowed: integers or a mapping")
        names = [int(v) for v in np.unique(lab) if v > 0]
        if not names:
            raise InputError("label_map has no label > 0; allowed: regions labelled 1, 2, ...")
        weights = [(lab == v).astype(float) for v in names]
    shape = weights[0].shape
    x = _float(images)
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape) :] != shape:
        raise InputError(
            f"images has shape {x.shape}; allowed: (..., *{shape}) matching the label map"
        )
    _check_finite("images", images)
    w = np.stack([v.ravel() / v.sum() for v in weights])  # (regions, voxels)
    flat = x.reshape(x.shape[: x.ndim - len(shape)] + (-1,))
    means = flat @ jnp.asarray(w.T, dtype=x.dtype)
    return {name: means[..., i] for i, name in enumerate(names)}

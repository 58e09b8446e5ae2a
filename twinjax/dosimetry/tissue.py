"""From a tissue simulation to dose and effect maps: absorbed dose, dose rate, BED with the exact
protraction factor of each cell, and hypoxia-modified LQ survival; for beta and alpha emitters.

**Dose.** The time-integrated activity map (MBq h per cell) of a [`TissueTrajectory`][] is
convolved with the voxel S-value kernel of the nuclide at the grid's (cubic) spacing
([`twinjax.dosimetry.voxel_s_kernel`][], [`twinjax.dosimetry.dose_map`][]); the activity maps at
the simulated times, convolved the same way, are dose-rate maps (Gy/h). The kernel is split by
linear energy transfer: ``K(w) = K_L + w K_H`` is linear in the weight w the kernel gives alpha
and recoil energy, so ``K_H = K(2) - K(1)`` (alpha particles and recoils, high LET) and ``K_L =
2 K(1) - K(2)`` (electrons, low LET) are exact. The RBE-weighted dose is ``D_w = D_L + RBE D_H``
(RBE = 5 by default, the value MIRD Pamphlet No. 22 recommends for deterministic effects of
alpha emitters: Sgouros et al. 2010, J Nucl Med 51:311). The kernel half-width defaults to the
radius holding 99.9 % of the emitted energy, capped at the grid (energy leaving the grid is
lost, as in any convolution on a finite map).

**BED.** Per cell, ``BED = D_w (1 + G D_w / (alpha/beta))`` with the Lea-Catcheside factor G of
the cell's dose-rate curve: linear between the simulated times, zero before the first,
exponential after the last (rate as the TIA tail), the curve of
[`twinjax.radiobiology.SampledDoseRate`][]. G is evaluated in closed form segment by segment
(repair ``q' = R - mu q``, ``G D^2 = 2 int R q``), vectorised over cells; D_w is the exact
dose of the TIA map.

**Survival.** Low-LET radiosensitivity follows the pO2 map (alpha(p), beta(p) of
[`twinjax.radiobiology.hypoxia_modified_lq`][]: Wouters & Brown 1997). Alpha particles are
oxygen-independent by default (OER ~ 1 above ~200 keV/um: Barendsen 1968, Curr Top Radiat Res Q
4:293; Hall & Giaccia, Radiobiology for the Radiologist). The two components add in the
mixed-field LQ form of Zaider & Rossi (1980, Radiat Res 83:732):

    -ln S = alpha_L D_L + alpha_H RBE D_H + G_eff (sqrt(beta_L) D_L + sqrt(beta_H) RBE D_H)^2

with G_eff the protraction factor of ``sqrt(beta_L) R_L(t) + sqrt(beta_H) RBE R_H(t)``. For a
pure beta emitter this is ``alpha(p) D + beta(p) G D^2``; for a well-oxygenated cell it is
``alpha BED``, the repository's RBE-weighted LQ. The tumour's surviving fraction is the
volume-weighted mean of the survival map over the tumour.

Units: dose Gy, dose rate Gy/h, time h, pO2 mmHg, alpha 1/Gy, beta 1/Gy^2.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..nuclides import nuclide as _lookup
from ..pde import Grid, TissueTrajectory
from ..radiobiology import hypoxia_modified_lq
from ..radiobiology import tissue as _tissue
from .voxel import VoxelKernel, dose_map, dose_metrics, dose_volume_histogram, voxel_s_kernel

__all__ = ["TissueDose", "absorbed_dose_map", "let_kernels", "protraction_map", "tissue_dose"]


# ------------------------------------------------------------------------------- kernels
def _cubic_spacing(grid: Grid) -> float:
    if not isinstance(grid, Grid) or grid.ndim != 3:
        raise InputError(f"grid = {grid!r}; allowed: a 3-D twinjax.pde.Grid")
    h = grid.spacing_mm
    if max(h) - min(h) > 1e-9 * max(h):
        raise InputError(
            f"grid spacing_mm = {h}; allowed: cubic cells (voxel S-value kernels are built for "
            "cubes; resample the maps first)"
        )
    return h[0]


def _auto_half_width(nuclide: str, h_mm: float) -> int:
    """The kernel half-width (voxels) holding 99.9 % of the emitted energy (as
    `voxel_s_kernel`'s default)."""
    from .voxel import _energy_cdf

    cdf, local, emitted = _energy_cdf(nuclide, "all", 1.0, 1.0)
    spread = emitted - local
    h = h_mm * 0.1
    r = h * np.arange(1, 2001)
    need = r[np.argmax(cdf(r) >= 0.999 * spread)] if spread > 0 else h
    return max(1, math.ceil(need / h - 0.5))


@functools.lru_cache(maxsize=16)
def _kernels(nuclide: str, h_mm: float, half_width: int):
    k1 = voxel_s_kernel(nuclide, h_mm, half_width=half_width)
    if _lookup(nuclide).chain.energy_per_parent_decay_MeV("alpha") <= 0:
        return k1, None
    k2 = voxel_s_kernel(nuclide, h_mm, half_width=half_width, rbe_alpha=2.0)
    low = dataclasses.replace(k1, values=2.0 * k1.values - k2.values)
    return low, dataclasses.replace(k1, values=k2.values - k1.values)


def let_kernels(grid: Grid, nuclide: str, *, half_width: int | None = None):
    """The voxel S-value kernels (Gy per MBq h in the centre voxel) of `nuclide` at the grid's
    cubic spacing, split into low LET (electrons, photons excluded) and high LET (alpha
    particles and recoils, unweighted): ``(low, high)``, `high` None without alpha emission.
    `half_width` (voxels): default 99.9 % of the energy, at most the grid's largest extent."""
    h = _cubic_spacing(grid)
    name = _lookup(nuclide).name
    if half_width is None:
        half_width = min(_auto_half_width(name, h), max(grid.shape) - 1)
    if not isinstance(half_width, int) or half_width < 1:
        raise InputError(f"half_width = {half_width!r}; allowed: an integer >= 1")
    return _kernels(name, h, half_width)


def absorbed_dose_map(tia_map_MBqh, grid: Grid, nuclide: str, *, rbe_alpha: float = 1.0,
                      half_width: int | None = None) -> Float[Array, "X Y Z"]:  # fmt: skip
    """Absorbed dose (Gy) of a TIA map (MBq h per cell) on a cubic 3-D grid: ``D_L + rbe_alpha
    D_H`` (physical dose with the default `rbe_alpha` = 1). Differentiable in the map."""
    tia = grid.check_field("tia_map_MBqh", tia_map_MBqh, nonnegative=True) \
        if not isinstance(tia_map_MBqh, jax.core.Tracer) else tia_map_MBqh  # fmt: skip
    low, high = let_kernels(grid, nuclide, half_width=half_width)
    dose = dose_map(tia, low)
    return dose if high is None else dose + rbe_alpha * dose_map(tia, high)


# ------------------------------------------------------------------------- protraction
def _psi(x):
    """psi1, psi2, psi3 (phi_k(-x)), beta = (1/2 - psi1 + psi2) / x and gamma = (x/3 - 1/2 +
    psi1 - psi2) / x^2 for x >= 0: Taylor series below 0.5 (no cancellation), else direct."""
    n = np.arange(20)
    fact = np.array([math.factorial(k) for k in range(25)], dtype=float)
    xs = jnp.minimum(x, 0.5)[..., None]
    pw = (-xs) ** n.astype(float)
    series = [jnp.sum(pw / fact[n + k], -1) for k in (1, 2, 3)]
    series.append(jnp.sum(pw * ((n + 2) / fact[n + 3]), -1))
    series.append(jnp.sum(pw * ((n + 3) / fact[n + 4]), -1))
    xd = jnp.maximum(x, 0.5)
    e = jnp.exp(-xd)
    p1 = -jnp.expm1(-xd) / xd
    p2 = (xd - 1.0 + e) / xd**2
    p3 = (0.5 * xd**2 - xd + 1.0 - e) / xd**3
    direct = [p1, p2, p3, (0.5 - p1 + p2) / xd, (xd / 3.0 - 0.5 + p1 - p2) / xd**2]
    return [jnp.where(x < 0.5, s, d) for s, d in zip(series, direct, strict=True)]


def protraction_map(times_h, dose_rate_Gy_per_h, tail_rate_per_h, repair_half_time_h):
    """Absorbed dose D and Lea-Catcheside factor G of each cell's dose-rate curve (module
    docs): `dose_rate_Gy_per_h` ``(T, ...)`` at `times_h` ``(T,)``, linear between them, zero
    before, ``R_T exp(-k (t - t_T))`` after (`tail_rate_per_h` k > 0, scalar or per cell).
    Returns ``(D (Gy), G)`` of shape ``(...)`` (G = 1 where D = 0)."""
    t = jnp.asarray(times_h, dtype=float)
    r = jnp.asarray(dose_rate_Gy_per_h, dtype=float)
    if t.ndim != 1 or r.shape[:1] != t.shape:
        raise InputError(
            f"times_h {t.shape} and dose_rate_Gy_per_h {r.shape}; allowed: (T,), (T, ...)"
        )
    if not (math.isfinite(repair_half_time_h) and repair_half_time_h > 0):
        raise InputError(f"repair_half_time_h = {repair_half_time_h!r}; allowed: > 0 (h)")
    k = jnp.broadcast_to(jnp.asarray(tail_rate_per_h, dtype=float), r.shape[1:])
    return _protraction(t, r, k, jnp.asarray(math.log(2.0) / repair_half_time_h))


def _protraction(t, r, k, mu):

    def segment(carry, seg):
        q, j, d = carry
        dt, r0, r1 = seg
        s = jnp.where(dt > 0, (r1 - r0) / jnp.where(dt > 0, dt, 1.0), 0.0)
        p1, p2, p3, be, ga = _psi(mu * dt)
        j = j + q * (r0 * dt * p1 + s * dt**2 * (p1 - p2)) + r0 * dt**2 * (r0 * p2 + s * dt * be) \
            + s * dt**3 * (r0 * p3 + s * dt * ga)  # fmt: skip
        q = q * jnp.exp(-mu * dt) + r0 * dt * p1 + s * dt**2 * p2
        return (q, j, d + 0.5 * (r0 + r1) * dt), None

    zero = jnp.zeros(r.shape[1:])
    (q, j, d), _ = jax.lax.scan(segment, (zero, zero, zero), (jnp.diff(t), r[:-1], r[1:]))
    a = r[-1]
    d = d + a / k
    j = j + q * a / (k + mu) + a * a / (2.0 * k * (k + mu))
    g = jnp.where(d > 0, 2.0 * j / jnp.where(d > 0, d, 1.0) ** 2, 1.0)
    return d, g


# ------------------------------------------------------------------------------ results
@dataclasses.dataclass(frozen=True)
class TissueDose:
    """Dose and effect maps of a tissue simulation ([`tissue_dose`][]); maps have the grid's
    shape. `absorbed_dose_Gy` (physical), `alpha_dose_Gy` (its high-LET part),
    `rbe_weighted_dose_Gy` (``D_L + RBE D_H``), `dose_rate_Gy_per_h` ``(T, ...)`` (RBE-weighted,
    at `times_h`), `protraction_factor` (G of the RBE-weighted curve), `bed_Gy` (oxic
    alpha/beta), `survival` (hypoxia-modified LQ), `tia_MBqh`; `rbe`, `voxel_volume_mL`."""

    absorbed_dose_Gy: Array
    alpha_dose_Gy: Array
    rbe_weighted_dose_Gy: Array
    dose_rate_Gy_per_h: Array
    times_h: Array
    protraction_factor: Array
    bed_Gy: Array
    survival: Array
    tia_MBqh: Array
    rbe: float
    voxel_volume_mL: float

    def _mask(self, mask):
        if mask is None:
            return np.ones(self.survival.shape, bool)
        m = np.asarray(mask)
        if m.shape != self.survival.shape:
            raise InputError(f"mask has shape {m.shape}; allowed: {self.survival.shape}")
        if m.dtype != bool and not np.all(np.isin(m, (0, 1))):
            raise InputError("mask is not binary; allowed: booleans or 0/1")
        if not m.any():
            raise InputError("mask is empty; allowed: at least one cell inside")
        return m.astype(bool)

    def surviving_fraction(self, mask=None) -> Float[Array, ""]:
        """Surviving fraction of the region `mask` (default: every cell): the volume-weighted
        mean of the survival map (equal cells)."""
        m = self._mask(mask)
        return jnp.sum(jnp.where(m, self.survival, 0.0)) / float(m.sum())

    def metrics(self, mask=None, *, dose: str = "rbe_weighted_dose_Gy", geud_a: float = 1.0):
        """[`twinjax.dosimetry.dose_metrics`][] (mean, min, max, D98, D90, D50, D2, gEUD) of a
        dose map (`dose`: a field name) over `mask`."""
        return dose_metrics(getattr(self, dose), self._mask(mask), geud_a=geud_a)

    def dvh(self, mask=None, *, dose: str = "rbe_weighted_dose_Gy", bins=None):
        """Cumulative DVH ``(dose (Gy), fraction receiving at least it)`` over `mask`."""
        return dose_volume_histogram(getattr(self, dose), self._mask(mask), bins=bins)


def tissue_dose(
    trajectory: TissueTrajectory,
    *,
    tissue="prostate_cancer",
    alpha_per_Gy: float | None = None,
    alpha_beta_Gy: float | None = None,
    repair_half_time_h: float | None = None,
    po2_mmHg=None,
    rbe_alpha: float = 5.0,
    alpha_oxygen_effect: bool = False,
    oer_alpha_max: float = 2.5,
    oer_beta_max: float = 3.0,
    k_mmHg: float = 3.0,
    tail: str = "effective",
    half_width: int | None = None,
) -> TissueDose:
    """Dose, BED and survival maps of a [`TissueTrajectory`][] (module docs).

    **Arguments:**
    - `trajectory`: a tissue simulation on a cubic 3-D grid.
    - `tissue`: a [`twinjax.radiobiology.Tissue`][] or its name (default ``prostate_cancer``:
      alpha 0.15 /Gy, alpha/beta 3.1 Gy, T_rep 0.27 h, Wang et al. 2003); `alpha_per_Gy`,
      `alpha_beta_Gy` (Gy), `repair_half_time_h` (h) override it (well-oxygenated values).
    - `po2_mmHg`: pO2 map or scalar (mmHg), >= 0; None: well oxygenated everywhere.
    - `rbe_alpha`: RBE of alpha particles and recoils (default 5); `alpha_oxygen_effect`:
      apply the oxygen modification to them too (default False: OER 1 at high LET).
    - `oer_alpha_max`, `oer_beta_max`, `k_mmHg`: as `hypoxia_modified_lq`.
    - `tail`: ``"effective"`` or ``"physical"``, for the TIA and the dose-rate tails.
    - `half_width`: kernel half-width (voxels), as [`let_kernels`][].

    **Returns:** a [`TissueDose`][].
    """
    if not isinstance(trajectory, TissueTrajectory):
        raise InputError(f"trajectory must be a TissueTrajectory, got {type(trajectory).__name__}")
    grid = trajectory.grid
    tis = _tissue(tissue) if isinstance(tissue, str) else tissue
    alpha = tis.alpha_per_Gy if alpha_per_Gy is None else alpha_per_Gy
    ab = tis.alpha_beta_Gy if alpha_beta_Gy is None else alpha_beta_Gy
    trep = tis.repair_half_time_h if repair_half_time_h is None else repair_half_time_h
    for name, v in (("alpha_per_Gy", alpha), ("alpha_beta_Gy", ab), ("repair_half_time_h", trep),
                    ("rbe_alpha", rbe_alpha)):  # fmt: skip
        if v is None or not (math.isfinite(float(v)) and float(v) > 0):
            raise InputError(f"{name} = {v!r}; allowed: finite and > 0")
    beta = alpha / ab
    po2 = None if po2_mmHg is None else grid.check_field("po2_mmHg", po2_mmHg, nonnegative=True)
    if tail not in ("effective", "physical"):
        raise InputError(f"tail = {tail!r}; allowed: 'effective' or 'physical'")
    low, high = let_kernels(grid, trajectory.nuclide, half_width=half_width)
    # Mixed-field LQ with oxygen-modified low-LET sensitivity (module docs).
    if po2 is None:
        a_low, b_low = jnp.full(grid.shape, float(alpha)), jnp.full(grid.shape, float(beta))
    else:
        a_low, b_low = hypoxia_modified_lq(alpha, beta, po2, oer_alpha_max=oer_alpha_max,
                                           oer_beta_max=oer_beta_max, k_mmHg=k_mmHg)  # fmt: skip
    a_high, b_high = (
        (a_low, b_low) if alpha_oxygen_effect else (a_low * 0 + alpha, b_low * 0 + beta)
    )
    lq = tuple(jnp.asarray(x, dtype=float) for x in (a_low, b_low, a_high, b_high, rbe_alpha, ab))
    out = _dose_core(trajectory, jnp.asarray(low.values),
                     None if high is None else jnp.asarray(high.values), lq,
                     jnp.asarray(math.log(2.0) / trep), tail)  # fmt: skip
    return TissueDose(**out, times_h=trajectory.times_h, rbe=float(rbe_alpha),
                      voxel_volume_mL=grid.cell_volume_mL)  # fmt: skip


def _conv(maps, values):
    """`dose_map` of one map or a stack of maps with kernel `values` (traced: the kernel's
    metadata is not needed for the convolution)."""
    k = VoxelKernel(values, 0.0, "", 1.0, 0.0, 1.0)
    if maps.ndim == 3:
        return dose_map(maps, k)
    return jax.vmap(lambda a: dose_map(a, k))(maps)


@eqx.filter_jit
def _dose_core(traj, k_low, k_high, lq, mu, tail):
    a_low, b_low, a_high, b_high, rbe, ab = lq
    tia, act, times = traj.tia_MBqh(tail), traj.activity_MBq, traj.times_h
    d_low, r_low = _conv(tia, k_low), _conv(act, k_low)
    d_high = jnp.zeros_like(d_low) if k_high is None else _conv(tia, k_high)
    r_high = jnp.zeros_like(r_low) if k_high is None else _conv(act, k_high)
    d_w, r_w = d_low + rbe * d_high, r_low + rbe * r_high
    lam = traj.decay_constant_per_h

    def tail_rate(r):  # as the TIA's tail (`TissueTrajectory.tia_MBqh`)
        if tail == "physical" or times.shape[0] < 2:
            return jnp.full(r.shape[1:], lam)
        ok = (r[-2] > 0) & (r[-1] > 0)
        eff = jnp.log(jnp.where(ok, r[-2], 1.0) / jnp.where(ok, r[-1], 1.0)) / (
            times[-1] - times[-2]
        )
        return jnp.where(ok, jnp.maximum(eff, lam), lam)

    _, g_w = _protraction(times, r_w, tail_rate(r_w), mu)
    r_eff = jnp.sqrt(b_low) * r_low + jnp.sqrt(b_high) * rbe * r_high
    _, g_eff = _protraction(times, r_eff, tail_rate(r_eff), mu)
    d_eff = jnp.sqrt(b_low) * d_low + jnp.sqrt(b_high) * rbe * d_high
    effect = a_low * d_low + a_high * rbe * d_high + g_eff * d_eff**2
    return dict(
        absorbed_dose_Gy=d_low + d_high, alpha_dose_Gy=d_high, rbe_weighted_dose_Gy=d_w,
        dose_rate_Gy_per_h=r_w, protraction_factor=g_w, bed_Gy=d_w * (1.0 + g_w * d_w / ab),
        survival=jnp.exp(-effect), tia_MBqh=tia,
    )  # fmt: skip

"""From dose to effect: oxygen-modified LQ parameters, cell survival, tumour control (TCP) and
normal-tissue complication (NTCP) probabilities.

- **Oxygen.** Radiosensitivity relative to anoxia follows the Alper-Howard-Flanders form
  ``OER(p) = (m p + K) / (p + K)`` (1 at p = 0, m when well oxygenated). alpha and beta are
  modified separately, ``alpha(p) = alpha_ox OER_alpha(p) / m_alpha`` and ``beta(p) = beta_ox
  (OER_beta(p) / m_beta)^2``, with m_alpha = 2.5, m_beta = 3.0 and K = 3 mmHg by default (the
  constants of Wouters & Brown 1997, Radiat Res 147:541).
- **Survival.** The LQ surviving fraction of a dose-rate curve is ``exp(-alpha BED)`` (BED from
  [`bed`][], which carries G; RBE-weighted for alpha emitters).
- **TCP.** Poisson statistics of surviving clonogens (Munro & Gilbert 1961, Br J Radiol 34:246):
  ``TCP = exp(-sum_i rho V_i SF_i)`` over voxels or DVH bins; the population version averages it
  over a normal distribution of alpha truncated at 0 (Webb & Nahum 1993, Phys Med Biol 38:653), by
  Gauss-Legendre quadrature on ``alpha_mean +- 8 alpha_sd``, keeping alpha/beta fixed.
- **NTCP.** Lyman-Kutcher-Burman: ``NTCP = Phi((gEUD - TD50) / (m TD50))`` with ``gEUD = (sum v_i
  D_i^(1/n))^n`` (Lyman 1985, Radiat Res Suppl 8:S13; Kutcher & Burman 1989, Int J Radiat Oncol
  Biol Phys 16:1623; Niemierko 1999 for gEUD). Published LKB parameters are fitted to 2-Gy
  fractions: pass EQD2.

Units: dose Gy, alpha 1/Gy, beta 1/Gy^2, pO2 mmHg, volume cm^3, density 1/cm^3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr
from jaxtyping import Array, Float

from .._errors import InputError
from ._lq import _check_concrete
from ._tissues import LKB, Tissue

__all__ = [
    "geud",
    "hypoxia_modified_lq",
    "ntcp_lkb",
    "oxygen_enhancement_ratio",
    "surviving_fraction",
    "tcp",
]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(96)


def oxygen_enhancement_ratio(po2_mmHg, *, m=3.0, k_mmHg=3.0) -> Float[Array, ...]:
    """``OER(p) = (m p + K) / (p + K)``: radiosensitivity at pO2 `po2_mmHg` (mmHg) relative to
    anoxia (1 at 0 mmHg, -> `m` when well oxygenated; half-way at `k_mmHg`)."""
    _check_concrete("po2_mmHg", po2_mmHg, ">= 0 (mmHg)", lambda v: np.all(v >= 0))
    _check_concrete("m", m, ">= 1", lambda v: np.all(v >= 1))
    _check_concrete("k_mmHg", k_mmHg, "> 0 (mmHg)", lambda v: np.all(v > 0))
    p = jnp.asarray(po2_mmHg, dtype=float)
    return (m * p + k_mmHg) / (p + k_mmHg)


def hypoxia_modified_lq(
    alpha_per_Gy, beta_per_Gy2, po2_mmHg, *, oer_alpha_max=2.5, oer_beta_max=3.0, k_mmHg=3.0
) -> tuple[Float[Array, ...], Float[Array, ...]]:
    """alpha and beta at pO2 `po2_mmHg` from their well-oxygenated values (module docs).

    **Returns:** ``(alpha (1/Gy), beta (1/Gy^2))``, broadcast over `po2_mmHg` (e.g. a pO2 map).
    """
    oa = oxygen_enhancement_ratio(po2_mmHg, m=oer_alpha_max, k_mmHg=k_mmHg) / oer_alpha_max
    ob = oxygen_enhancement_ratio(po2_mmHg, m=oer_beta_max, k_mmHg=k_mmHg) / oer_beta_max
    return jnp.asarray(alpha_per_Gy, dtype=float) * oa, jnp.asarray(
        beta_per_Gy2, dtype=float
    ) * ob**2


def surviving_fraction(bed_Gy, alpha_per_Gy) -> Float[Array, ...]:
    """LQ surviving fraction ``exp(-alpha BED)`` (BED in Gy from [`bed`][], alpha in 1/Gy)."""
    _check_concrete("bed_Gy", bed_Gy, ">= 0 (Gy)", lambda v: np.all(v >= 0))
    _check_concrete("alpha_per_Gy", alpha_per_Gy, "> 0 (1/Gy)", lambda v: np.all(v > 0))
    return jnp.exp(-jnp.asarray(alpha_per_Gy, dtype=float) * jnp.asarray(bed_Gy, dtype=float))


def _tumour_value(name, given, tissue, field):
    if given is not None:
        return given
    value = None if tissue is None else getattr(tissue, field)
    if value is None:
        where = "" if tissue is None else f" (the library has none for {tissue.name!r})"
        raise InputError(f"tcp needs {name}{where}; allowed: pass {name}=... explicitly")
    return value


def tcp(
    bed_Gy,
    volume_cm3,
    *,
    tissue: Tissue | None = None,
    alpha_per_Gy=None,
    clonogen_density_per_cm3=None,
    alpha_sd_per_Gy=None,
) -> Float[Array, ""]:
    """Poisson tumour-control probability of a (possibly non-uniform) BED distribution.

    **Arguments:**
    - `bed_Gy`: BED per voxel or DVH bin (Gy), or one value for a uniform dose.
    - `volume_cm3`: the volume of each voxel/bin (cm^3), same shape (or the total volume).
    - `tissue`: a [`Tissue`][] supplying alpha, its SD and the clonogen density; explicit
      arguments override it.
    - `alpha_per_Gy`, `clonogen_density_per_cm3`: mean alpha (1/Gy) and clonogens per cm^3.
    - `alpha_sd_per_Gy`: between-patient SD of alpha (1/Gy); 0 gives the individual TCP, > 0 the
      population TCP (module docs).

    **Returns:** TCP in [0, 1].
    """
    alpha = _tumour_value("alpha_per_Gy", alpha_per_Gy, tissue, "alpha_per_Gy")
    rho = _tumour_value(
        "clonogen_density_per_cm3", clonogen_density_per_cm3, tissue, "clonogen_density_per_cm3"
    )
    sd = alpha_sd_per_Gy if alpha_sd_per_Gy is not None else (
        tissue.alpha_sd_per_Gy if tissue is not None and tissue.alpha_sd_per_Gy else 0.0
    )  # fmt: skip
    _check_concrete("alpha_per_Gy", alpha, "> 0 (1/Gy)", lambda v: np.all(v > 0))
    _check_concrete("clonogen_density_per_cm3", rho, "> 0 (1/cm^3)", lambda v: np.all(v > 0))
    _check_concrete("alpha_sd_per_Gy", sd, ">= 0 (1/Gy)", lambda v: np.all(v >= 0))
    _check_concrete("bed_Gy", bed_Gy, "finite and >= 0 (Gy)",
                    lambda v: np.all(np.isfinite(v) & (v >= 0)))  # fmt: skip
    _check_concrete("volume_cm3", volume_cm3, "finite and >= 0 (cm^3)",
                    lambda v: np.all(np.isfinite(v) & (v >= 0)))  # fmt: skip
    bed = jnp.asarray(bed_Gy, dtype=float)
    vol = jnp.broadcast_to(jnp.asarray(volume_cm3, dtype=float), bed.shape)
    alpha, rho, sd = (jnp.asarray(x, dtype=float) for x in (alpha, rho, sd))

    def individual(a):
        # log TCP = -rho sum V exp(-a BED); exp keeps it in [0, 1] and differentiable.
        return jnp.exp(-rho * jnp.sum(vol * jnp.exp(-a * bed)))

    # Truncated-normal average over alpha (alpha > 0) by Gauss-Legendre on mean +- 8 SD.
    lo = jnp.maximum(alpha - 8.0 * sd, 0.0)
    hi = alpha + 8.0 * sd
    safe_sd = jnp.where(sd > 0, sd, 1.0)
    nodes = 0.5 * (hi - lo) * jnp.asarray(_GL_NODES) + 0.5 * (hi + lo)
    dens = jnp.exp(-0.5 * ((nodes - alpha) / safe_sd) ** 2)
    w = jnp.asarray(_GL_WEIGHTS) * dens
    pop = jnp.sum(w * jax.vmap(individual)(nodes)) / jnp.sum(w)
    return jnp.where(sd > 0, pop, individual(alpha))


def geud(dose_Gy, volume_fraction=None, *, a) -> Float[Array, ""]:
    """Generalised equivalent uniform dose ``(sum v_i D_i^a)^(1/a)`` (Gy).

    **Arguments:** `dose_Gy` per voxel/bin; `volume_fraction` of each (sums to 1; default equal
    voxels); `a` (``1/n`` in LKB; large `a` -> max dose, ``a = 1`` -> mean dose).
    """
    d = jnp.atleast_1d(jnp.asarray(dose_Gy, dtype=float))
    _check_concrete("dose_Gy", d, "finite and >= 0 (Gy)",
                    lambda v: np.all(np.isfinite(v) & (v >= 0)))  # fmt: skip
    if volume_fraction is None:
        v = jnp.full(d.shape, 1.0 / d.size)
    else:
        v = jnp.broadcast_to(jnp.asarray(volume_fraction, dtype=float), d.shape)
        _check_concrete(
            "volume_fraction",
            v,
            "fractions >= 0 that sum to 1",
            lambda x: np.all(x >= 0) and abs(x.sum() - 1.0) < 1e-6,
        )
    _check_concrete("a", a, "a finite number != 0", lambda x: np.all(np.isfinite(x) & (x != 0)))
    # Scaled by the largest dose (no overflow for large |a|; the value is invariant in the scale,
    # so it carries no gradient). Voxels without dose add nothing for a > 0 and make the gEUD 0
    # for a < 0 (tumour-like); the safe base keeps gradients finite there.
    scale = jax.lax.stop_gradient(jnp.maximum(jnp.max(d), 1e-300))
    safe = jnp.where(d > 0, d, scale) / scale
    terms = jnp.where(d > 0, v * safe**a, jnp.where(a > 0, 0.0, jnp.inf))
    return scale * jnp.sum(terms) ** (1.0 / a)


def ntcp_lkb(eqd2_Gy, volume_fraction=None, *, lkb: LKB | Tissue) -> Float[Array, ""]:
    """Lyman-Kutcher-Burman NTCP of an EQD2 distribution (module docs).

    **Arguments:**
    - `eqd2_Gy`: EQD2 per voxel/DVH bin (Gy), or the uniform/mean organ EQD2.
    - `volume_fraction`: fraction of the organ in each voxel/bin (default equal voxels).
    - `lkb`: an [`LKB`][] or a [`Tissue`][] with LKB parameters (e.g. ``tissue("kidney")``).

    **Returns:** NTCP in [0, 1].
    """
    if isinstance(lkb, Tissue):
        if lkb.lkb is None:
            raise InputError(
                f"tissue {lkb.name!r} has no LKB parameters; allowed: an LKB(td50_Gy, m, n) or a "
                "tissue with them (kidney, salivary_glands, liver)"
            )
        lkb = lkb.lkb
    if not isinstance(lkb, LKB):
        raise InputError(f"lkb = {lkb!r}; allowed: an LKB or a Tissue")
    eud = geud(eqd2_Gy, volume_fraction, a=1.0 / lkb.n)
    return ndtr((eud - lkb.td50_Gy) / (lkb.m * lkb.td50_Gy))

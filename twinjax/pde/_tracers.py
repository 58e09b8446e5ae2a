r"""Named tissue-scale PET tracer systems, each a [`TracerPDE`][twinjax.pde.TracerPDE].

**[18F]FDG** (Wang, Liu, Ziegler and Shi 2015, Lect Notes Comput Vis Biomech 22:123; built on
Wang, Vaupel, Ziegler and Shi 2015, Phys Med Biol 60:2547): vascular delivery and GLUT
transport (``K1``, ``k2``, scaled by a relative perfusion map), hexokinase phosphorylation to
FDG-6-phosphate (``k3``, scaled by a relative hexokinase-expression map) and slow
dephosphorylation by glucose-6-phosphatase (``k4``); free FDG diffuses. Default rates: human
grey matter, Phelps et al. 1979 (Ann Neurol 6:371-388), ``K1 = 0.102 mL/min/mL``, ``k2 =
0.130``, ``k3 = 0.062``, ``k4 = 0.0068 /min`` (x 60 for 1/h). Tumour ``k3`` is usually larger;
calibrate it with `TracerParams.trapping_scale`.

**[18F]FMISO** (Kelly and Brady 2006, Phys Med Biol 51:5859): FMISO crosses membranes freely
and is reduced and bound in cells at a rate that falls hyperbolically with the local oxygen
tension (the form used in the Kelly-Brady line of models, e.g. by Warren and Partridge 2016),

$$k_3(pO_2) = k_{max} \frac{K}{K + pO_2},$$

maximal in anoxia and halved at ``pO2 = K``. ``K = 1.4 mmHg`` by default: the pO2 of
half-maximal FMISO binding fitted to experimental data by Warren and Partridge (2016, Phys Med
Biol 61:8596; 95 % CI 0.3-2.6 mmHg). In the trapping-limited regime (``k3 << k2``) the bound
tracer grows in proportion to ``k3``, so two cells at pO2 ``p1`` and ``p2`` differ by ``(K +
p2)/(K + p1)``. The pO2 map is an input (e.g. from an oxygen model).

**FLOD** (Shi et al. 2017, Physiol Meas 38:188): the flow-limited oxygen-dependent extension of
Kelly and Brady's model, introduced to match dynamic FMISO PET in xenografts. Here it is the same
oxygen-dependent trapping with delivery limited by a perfusion map ``F`` through Renkin-Crone
extraction, ``K1 = F (1 - exp(-PS/F))``, ``k2 = K1 / V_d`` (see
[`TracerPDE`][twinjax.pde.TracerPDE]): perfusion, not only permeability, limits how much tracer
reaches a hypoxic cell.
``V_d = 1`` by default: in well-oxygenated tissue FMISO uptake tends to the blood activity
(Warren and Partridge 2016).

**[18F]FLT** (Cavinato et al. 2023, IEEE CIBCB; Cavinato et al. 2025, Eur J Nucl Med Mol
Imaging 52:1708): histology maps drive the tracer: fibrosis (a fraction 0-1 per cell) reduces
the diffusivity and the perfusion by given factors, ``D = D0 (1 - r_D f)``, ``(K1, k2) = (K1,
k2)_0 (1 - r_P f)``; thymidine-kinase-1 trapping is proportional to the proliferating-cell
content, ``k3 = k3_max c`` (cellularity map 0-1), with optional slow release ``k4``.

**Diffusivities.** Free small tracers diffuse as their parent sugar: glucose in water at 25 C,
``0.673e-5 cm^2/s`` (Longsworth 1953, J Am Chem Soc 75:5705), reduced in tissue by the
tortuosity ``lambda = 1.6`` of the extracellular space (``D / lambda^2``; Nicholson and Sykova
1998, Trends Neurosci 21:207), and scaled to each tracer's molar mass by Stokes-Einstein (``D ~
M^(-1/3)``): about 0.94 mm^2/h for FDG.

Units: time h, rates 1/h, diffusivity mm^2/h, pO2 mmHg; concentrations in the unit of the
plasma input.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from ..units import MIN_TO_H
from ._grid import Grid
from ._tracer_core import TracerPDE

__all__ = [
    "FDG_PHELPS_1979_PER_H",
    "fdg_model",
    "flod_model",
    "flt_model",
    "fmiso_model",
    "kelly_brady_trapping",
    "tracer_diffusivity_mm2_per_h",
]

# Phelps et al. 1979, Ann Neurol 6:371-388, human grey matter (per min -> per h).
FDG_PHELPS_1979_PER_H = {
    "K1_per_h": 0.102 / MIN_TO_H,
    "k2_per_h": 0.130 / MIN_TO_H,
    "k3_per_h": 0.062 / MIN_TO_H,
    "k4_per_h": 0.0068 / MIN_TO_H,
}
# Half-maximal FMISO binding pO2, Warren and Partridge 2016, Phys Med Biol 61:8596.
FMISO_K_MMHG = 1.4

_GLUCOSE_D_CM2_PER_S = 0.673e-5  # Longsworth 1953, J Am Chem Soc 75:5705 (25 C, dilute)
_TORTUOSITY = 1.6  # Nicholson and Sykova 1998, Trends Neurosci 21:207
_GLUCOSE_G_PER_MOL = 180.16
_MOLAR_MASS = {"FDG": 182.15, "FMISO": 189.14, "FLT": 244.22}  # g/mol, from the formulas


def tracer_diffusivity_mm2_per_h(molar_mass_g_per_mol: float) -> float:
    """Tissue diffusivity (mm^2/h) of a small tracer of the given molar mass (g/mol): glucose's
    free diffusivity (Longsworth 1953) over the squared tortuosity 1.6 (Nicholson and Sykova
    1998), scaled by ``(M_glucose / M)^(1/3)`` (Stokes-Einstein)."""
    if not (np.isfinite(molar_mass_g_per_mol) and molar_mass_g_per_mol > 0):
        raise InputError(f"molar_mass_g_per_mol = {molar_mass_g_per_mol!r}; allowed: > 0 g/mol")
    d_mm2_per_h = _GLUCOSE_D_CM2_PER_S * 100.0 * 3600.0 / _TORTUOSITY**2
    return d_mm2_per_h * (_GLUCOSE_G_PER_MOL / molar_mass_g_per_mol) ** (1.0 / 3.0)


def kelly_brady_trapping(pO2_mmHg, k_max_per_h, K_mmHg=FMISO_K_MMHG):
    """Oxygen-dependent FMISO trapping rate ``k3 = k_max K / (K + pO2)`` (1/h) (module docs).

    Pure jax (differentiable in every argument, e.g. to build k3 maps from a traced oxygen
    field); no validation.

    **Arguments:** `pO2_mmHg` (mmHg, >= 0, any shape), `k_max_per_h` (1/h, anoxic rate),
    `K_mmHg` (mmHg, pO2 of half-maximal trapping).
    """
    p = jnp.asarray(pO2_mmHg, dtype=float)
    return k_max_per_h * K_mmHg / (K_mmHg + p)


def _relative(grid: Grid, name: str, value) -> np.ndarray:
    return grid.check_field(name, value, nonnegative=True)


def _scalar(name: str, value, *, positive=False) -> float:
    v = np.asarray(value, dtype=float)
    ok = v.ndim == 0 and np.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        raise InputError(
            f"{name} = {value!r}; allowed: a finite scalar {'>' if positive else '>='} 0"
        )
    return float(v)


def fdg_model(grid: Grid, plasma_input, *, K1_per_h=FDG_PHELPS_1979_PER_H["K1_per_h"],
              k2_per_h=FDG_PHELPS_1979_PER_H["k2_per_h"],
              k3_per_h=FDG_PHELPS_1979_PER_H["k3_per_h"],
              k4_per_h=FDG_PHELPS_1979_PER_H["k4_per_h"], perfusion=1.0, hexokinase=1.0, vb=0.0,
              diffusivity_mm2_per_h=None, half_life_h=None) -> TracerPDE:  # fmt: skip
    """[18F]FDG after Wang et al. (2015): delivery, transport, hexokinase trapping (module docs).

    **Arguments:**
    - `grid`, `plasma_input`: as [`TracerPDE`][twinjax.pde.TracerPDE] (decay-corrected plasma
      FDG, e.g. `FengInput.fdg_reference()`).
    - `K1_per_h`, `k2_per_h`, `k3_per_h`, `k4_per_h`: rates (1/h), scalars or maps; default the
      grey-matter values of Phelps et al. (1979).
    - `perfusion`: relative perfusion / microvessel map (-), >= 0, multiplies K1 and k2.
    - `hexokinase`: relative hexokinase expression map (-), >= 0, multiplies k3.
    - `vb`: blood volume fraction map, [0, 1).
    - `diffusivity_mm2_per_h`: free-FDG diffusivity (mm^2/h); default from its molar mass.
    - `half_life_h`: 18F half-life (1.8295 h) for non-decay-corrected output, or None.

    **Returns:** a `TracerPDE` with one bound species, ``"FDG-6-P"``.
    """
    perf = _relative(grid, "perfusion", perfusion)
    hk = _relative(grid, "hexokinase", hexokinase)
    k1 = grid.check_field("K1_per_h", K1_per_h, nonnegative=True)
    k2 = grid.check_field("k2_per_h", k2_per_h, nonnegative=True)
    k3 = grid.check_field("k3_per_h", k3_per_h, nonnegative=True)
    d = tracer_diffusivity_mm2_per_h(_MOLAR_MASS["FDG"]) if diffusivity_mm2_per_h is None \
        else diffusivity_mm2_per_h  # fmt: skip
    return TracerPDE(grid, plasma_input, K1_per_h=perf * k1, k2_per_h=perf * k2,
                     k3_per_h=hk * k3, k4_per_h=k4_per_h, vb=vb, diffusivity_mm2_per_h=d,
                     bound_names=("FDG-6-P",), half_life_h=half_life_h)  # fmt: skip


def _trapping_map(grid: Grid, pO2_mmHg, k_max_per_h, K_mmHg) -> np.ndarray:
    p = grid.check_field("pO2_mmHg", pO2_mmHg, nonnegative=True)
    kmax = _scalar("k_max_per_h", k_max_per_h)
    k = _scalar("K_mmHg", K_mmHg, positive=True)
    return np.asarray(kelly_brady_trapping(p, kmax, k))


def fmiso_model(grid: Grid, plasma_input, pO2_mmHg, *, K1_per_h, k2_per_h, k_max_per_h,
                K_mmHg=FMISO_K_MMHG, perfusion=1.0, vb=0.0, diffusivity_mm2_per_h=None,
                half_life_h=None) -> TracerPDE:  # fmt: skip
    """[18F]FMISO with Kelly and Brady's (2006) oxygen-dependent trapping (module docs).

    **Arguments:**
    - `grid`, `plasma_input`: as [`TracerPDE`][twinjax.pde.TracerPDE].
    - `pO2_mmHg`: oxygen tension map (mmHg), >= 0 (e.g. a steady oxygen field).
    - `K1_per_h`, `k2_per_h`: exchange rates with plasma (1/h), scalars or maps.
    - `k_max_per_h`: trapping rate in anoxia (1/h), scalar >= 0.
    - `K_mmHg`: pO2 of half-maximal trapping (mmHg), > 0; default 1.4 (Warren and Partridge
      2016).
    - `perfusion`: relative perfusion map (-), multiplies K1 and k2.
    - `vb`, `diffusivity_mm2_per_h`, `half_life_h`: as in [`fdg_model`][].

    **Returns:** a `TracerPDE` with one irreversibly bound species, ``"FMISO-bound"``.
    """
    perf = _relative(grid, "perfusion", perfusion)
    k1 = grid.check_field("K1_per_h", K1_per_h, nonnegative=True)
    k2 = grid.check_field("k2_per_h", k2_per_h, nonnegative=True)
    k3 = _trapping_map(grid, pO2_mmHg, k_max_per_h, K_mmHg)
    d = tracer_diffusivity_mm2_per_h(_MOLAR_MASS["FMISO"]) if diffusivity_mm2_per_h is None \
        else diffusivity_mm2_per_h  # fmt: skip
    return TracerPDE(grid, plasma_input, K1_per_h=perf * k1, k2_per_h=perf * k2, k3_per_h=k3,
                     vb=vb, diffusivity_mm2_per_h=d, bound_names=("FMISO-bound",),
                     half_life_h=half_life_h)  # fmt: skip


def flod_model(grid: Grid, plasma_input, pO2_mmHg, perfusion_per_h, *,
               permeability_surface_per_h, k_max_per_h, K_mmHg=FMISO_K_MMHG,
               distribution_volume=1.0, vb=0.0, diffusivity_mm2_per_h=None,
               half_life_h=None) -> TracerPDE:  # fmt: skip
    """[18F]FMISO, flow-limited oxygen-dependent (FLOD) model of Shi et al. (2017) (module docs).

    **Arguments:**
    - `grid`, `plasma_input`, `pO2_mmHg`, `k_max_per_h`, `K_mmHg`: as [`fmiso_model`][].
    - `perfusion_per_h`: plasma flow map F (1/h = mL/mL/h), >= 0.
    - `permeability_surface_per_h`: PS map or scalar (1/h), > 0.
    - `distribution_volume`: free-tracer tissue/plasma distribution volume V_d (-), > 0;
      default 1.
    - `vb`, `diffusivity_mm2_per_h`, `half_life_h`: as in [`fdg_model`][].

    **Returns:** a flow-limited `TracerPDE` (`TracerParams.perfusion_scale` scales F inside the
    Renkin-Crone extraction).
    """
    k3 = _trapping_map(grid, pO2_mmHg, k_max_per_h, K_mmHg)
    d = tracer_diffusivity_mm2_per_h(_MOLAR_MASS["FMISO"]) if diffusivity_mm2_per_h is None \
        else diffusivity_mm2_per_h  # fmt: skip
    return TracerPDE(grid, plasma_input, perfusion_per_h=perfusion_per_h,
                     permeability_surface_per_h=permeability_surface_per_h,
                     distribution_volume=distribution_volume, k3_per_h=k3, vb=vb,
                     diffusivity_mm2_per_h=d, bound_names=("FMISO-bound",),
                     half_life_h=half_life_h)  # fmt: skip


def flt_model(grid: Grid, plasma_input, *, K1_per_h, k2_per_h, k3_per_h, k4_per_h=0.0,
              cellularity=1.0, fibrosis=0.0, fibrosis_diffusivity_reduction=None,
              fibrosis_perfusion_reduction=None, perfusion=1.0, vb=0.0,
              diffusivity_mm2_per_h=None, half_life_h=None) -> TracerPDE:  # fmt: skip
    """[18F]FLT on histology maps after Cavinato et al. (2023, 2025) (module docs).

    **Arguments:**
    - `grid`, `plasma_input`: as [`TracerPDE`][twinjax.pde.TracerPDE].
    - `K1_per_h`, `k2_per_h`: exchange rates of fibrosis-free tissue (1/h), scalars or maps.
    - `k3_per_h`: thymidine-kinase trapping rate at full cellularity (1/h), scalar or map.
    - `k4_per_h`: dephosphorylation rate (1/h); default 0 (irreversible).
    - `cellularity`: proliferating-cell fraction map, in [0, 1]; multiplies k3.
    - `fibrosis`: fibrosis fraction map (or 0/1 mask), in [0, 1].
    - `fibrosis_diffusivity_reduction`, `fibrosis_perfusion_reduction`: r_D and r_P in [0, 1],
      the fractions of diffusivity and perfusion lost in fully fibrotic tissue; required when
      `fibrosis` is non-zero anywhere.
    - `perfusion`: relative perfusion map (-), multiplies K1 and k2.
    - `vb`, `diffusivity_mm2_per_h` (of fibrosis-free tissue), `half_life_h`: as in
      [`fdg_model`][].

    **Returns:** a `TracerPDE` with one bound species, ``"FLT-MP"``.
    """
    cell = grid.check_field("cellularity", cellularity, nonnegative=True)
    fib = grid.check_field("fibrosis", fibrosis, nonnegative=True)
    for name, m in (("cellularity", cell), ("fibrosis", fib)):
        if np.any(m > 1.0):
            raise InputError(f"{name} has max {float(m.max())!r}; allowed: in [0, 1]")
    reductions = []
    for name, r in (("fibrosis_diffusivity_reduction", fibrosis_diffusivity_reduction),
                    ("fibrosis_perfusion_reduction", fibrosis_perfusion_reduction)):  # fmt: skip
        if r is None:
            if np.any(fib > 0):
                raise InputError(f"{name} is None with fibrotic cells; allowed: a value in [0, 1]")
            r = 0.0
        r = _scalar(name, r)
        if r > 1.0:
            raise InputError(f"{name} = {r!r}; allowed: in [0, 1]")
        reductions.append(r)
    r_d, r_p = reductions
    perf = _relative(grid, "perfusion", perfusion) * (1.0 - r_p * fib)
    k1 = grid.check_field("K1_per_h", K1_per_h, nonnegative=True)
    k2 = grid.check_field("k2_per_h", k2_per_h, nonnegative=True)
    k3 = grid.check_field("k3_per_h", k3_per_h, nonnegative=True)
    d0 = tracer_diffusivity_mm2_per_h(_MOLAR_MASS["FLT"]) if diffusivity_mm2_per_h is None \
        else diffusivity_mm2_per_h  # fmt: skip
    d = grid.check_field("diffusivity_mm2_per_h", d0, nonnegative=True) * (1.0 - r_d * fib)
    return TracerPDE(grid, plasma_input, K1_per_h=perf * k1, k2_per_h=perf * k2,
                     k3_per_h=cell * k3, k4_per_h=k4_per_h, vb=vb, diffusivity_mm2_per_h=d,
                     bound_names=("FLT-MP",), half_life_h=half_life_h)  # fmt: skip

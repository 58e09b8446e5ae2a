"""Tissue oxygen on a [`Grid`][twinjax.pde.Grid]: diffusion, Michaelis-Menten consumption and
vascular supply.

The oxygen tension p (pO2, mmHg) obeys

    dp/dt = div(D0 d(x) grad p) - Vmax c(x) p / (p + Km) + k(x) (Pv - p)

- **Diffusion** with a reference diffusivity D0 (mm^2/h) times a dimensionless map d(x) (e.g.
  reduced in fibrosis), finite-volume with harmonic-mean faces ([`Diffusion`][]); no flux
  through the domain boundary or out of the tissue mask.
- **Consumption** (Michaelis-Menten, "hyperbolic"): ``Vmax`` is the maximal consumption rate
  expressed as a rate of pO2 (the molar rate divided by the O2 solubility, mmHg/h), ``Km``
  the pO2 of half-maximal consumption, c(x) >= 0 a dimensionless cellularity map (1 in viable
  tumour, 0 in necrosis or lumen). For ``p < 0``, which only Newton iterates visit, the
  consumption continues linearly, ``Vmax c p / Km`` (C1 at 0): the reaction is then
  increasing in p everywhere, so the steady state is unique and Newton cannot run into the
  pole of ``p / (p + Km)`` at ``p = -Km``.
- **Supply**, either or both of: vessel cells held at the vessel pO2 ``Pv`` (a Dirichlet
  condition, e.g. a segmented vessel map at fine resolution), or a permeability-surface
  exchange ``k(x) (Pv - p)`` (1/h) in every cell (a vascular-supply map at voxel scale, where
  vessels are smaller than a cell).

Default values (tissue and tumour, at 37 C): ``D0 = 2e-9 m^2/s = 7.2 mm^2/h`` (Grimes,
Fletcher & Partridge 2014, R Soc Open Sci 1:140080; Dasu, Toma-Dasu & Karlsson 2003, Phys Med
Biol 48:2829), ``Vmax = 15 mmHg/s = 54000 mmHg/h`` and ``Km = 2.5 mmHg`` (Dasu et al. 2003),
``Pv = 40 mmHg`` (the capillary inlet pO2 of Kirkpatrick, Brizel & Dewhirst 2003, Radiat Res
159:336). With these, oxygen penetrates ``sqrt(2 D0 Pv / Vmax) = 0.10 mm`` from a vessel wall
under zero-order consumption, the classical diffusion distance of tumour cords.

Hypoxia is reported as the fraction of tissue below 2.5, 5 and 10 mmHg, the thresholds of the
polarographic-electrode literature (e.g. Vaupel, Hockel & Mayer 2007, Antioxid Redox Signal
9:1221: 10 mmHg is the median pO2 of many tumours, 2.5 mmHg the "HP2.5" endpoint).

Units: length mm, time h, pO2 mmHg, diffusivity mm^2/h, consumption mmHg/h, exchange 1/h.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._errors import InputError
from ._grid import Grid
from ._operators import Diffusion
from ._solve import steady_state

__all__ = ["OxygenModel", "hypoxic_fraction", "oxygen_field", "oxygen_summary"]

_S_PER_H = 3600.0


def _scalar(name: str, value, allowed: str, ok) -> Float[Array, ""]:
    """A scalar parameter as a float64 array; a concrete value is validated (`ok`), a traced one
    (inside `grad`/`jit`/`vmap`) passes through so the model stays differentiable."""
    if isinstance(value, jax.core.Tracer):
        if jnp.ndim(value) != 0:
            raise InputError(f"{name} has shape {jnp.shape(value)}; allowed: a scalar")
        return jnp.asarray(value, dtype=float)
    v = np.asarray(value, dtype=float)
    if v.ndim != 0 or not np.isfinite(v) or not ok(float(v)):
        raise InputError(f"{name} = {np.asarray(value).tolist()!r}; allowed: {allowed}")
    return jnp.asarray(v)


def _split_diffusivity(grid: Grid, value, tissue: np.ndarray):
    """``(D0, d(x))``: a scalar D0 (traceable) times a dimensionless map, from a scalar or a map
    (mm^2/h). A map is split at its maximum, so gradients flow through its overall scale."""
    if isinstance(value, jax.core.Tracer) or np.ndim(value) == 0:
        d0 = _scalar("diffusivity_mm2_per_h", value, ">= 0 (mm^2/h)", lambda v: v >= 0)
        return d0, np.ones(grid.shape)
    d = grid.check_field("diffusivity_mm2_per_h", value, nonnegative=True)
    top = float(d[tissue].max())
    return jnp.asarray(np.float64(top)), (d / top if top > 0 else np.ones(grid.shape))


class OxygenModel(eqx.Module):
    """Oxygen diffusion, consumption and supply on a grid (module docs).

    **Arguments:**
    - `grid`: a [`Grid`][twinjax.pde.Grid].
    - `vessel_mask`: boolean map of vessel cells held at `vessel_po2_mmHg`, or None.
    - `supply_rate_per_h`: map (or scalar) of the exchange rate k >= 0 (1/h), or None. At least
      one of the two supplies must deliver oxygen somewhere.
    - `diffusivity_mm2_per_h`: D0, a scalar, or a map (heterogeneous tissue), > 0 in the tissue
      (default 7.2 mm^2/h).
    - `max_consumption_mmHg_per_h`: Vmax >= 0 (default 54000 mmHg/h = 15 mmHg/s).
    - `km_mmHg`: Michaelis constant Km > 0 (default 2.5 mmHg).
    - `vessel_po2_mmHg`: Pv >= 0 (default 40 mmHg).
    - `consumption`: dimensionless map (or scalar) c >= 0 scaling Vmax per cell (cellularity;
      0 in necrosis). Default 1.
    - `mask`: boolean tissue map; cells outside exchange nothing and read 0 mmHg. Vessel cells
      must lie inside it. Default: the whole grid.

    The scalar parameters are array leaves: the model can be built inside `jax.grad`, `jit` or
    `vmap` with traced values (maps must be concrete).
    """

    grid: Grid
    diffusion: Diffusion  # of the dimensionless map d(x); multiplied by D0 when applied
    diffusivity_mm2_per_h: Float[Array, ""]
    max_consumption_mmHg_per_h: Float[Array, ""]
    km_mmHg: Float[Array, ""]
    vessel_po2_mmHg: Float[Array, ""]
    consumption: Float[Array, " *shape"]  # 0 outside the tissue and in held vessel cells
    supply_rate_per_h: Float[Array, " *shape"]
    held: Bool[Array, " *shape"]  # vessel cells held at Pv
    tissue: Bool[Array, " *shape"]

    def __init__(
        self,
        grid: Grid,
        *,
        vessel_mask=None,
        supply_rate_per_h=None,
        diffusivity_mm2_per_h=7.2,
        max_consumption_mmHg_per_h=15.0 * _S_PER_H,
        km_mmHg=2.5,
        vessel_po2_mmHg=40.0,
        consumption=1.0,
        mask=None,
    ):
        if not isinstance(grid, Grid):
            raise InputError(f"grid = {grid!r}; allowed: a twinjax.pde.Grid")
        tissue = np.ones(grid.shape, bool) if mask is None else grid.check_mask("mask", mask)
        if vessel_mask is None and supply_rate_per_h is None:
            raise InputError(
                "no oxygen supply: allowed: vessel_mask (cells held at vessel_po2_mmHg) and/or "
                "supply_rate_per_h (exchange k (Pv - p), 1/h)"
            )
        held = np.zeros(grid.shape, bool)
        if vessel_mask is not None:
            held = grid.check_mask("vessel_mask", vessel_mask)
            if np.any(held & ~tissue):
                raise InputError(
                    f"vessel_mask has {int(np.sum(held & ~tissue))} cells outside mask; "
                    "allowed: vessel cells inside the tissue mask"
                )
        k = np.zeros(grid.shape)
        if supply_rate_per_h is not None:
            k = np.where(
                tissue,
                grid.check_field("supply_rate_per_h", supply_rate_per_h, nonnegative=True),
                0.0,
            )
            if not held.any() and not k.any():
                raise InputError(
                    "supply_rate_per_h is 0 in every tissue cell; allowed: > 0 somewhere (or a "
                    "vessel_mask)"
                )
        d0, d_rel = _split_diffusivity(grid, diffusivity_mm2_per_h, tissue)
        if not isinstance(d0, jax.core.Tracer) and not (float(d0) > 0 and d_rel[tissue].min() > 0):
            raise InputError(
                f"diffusivity_mm2_per_h has min {float(d0) * float(d_rel[tissue].min())!r} in the "
                "tissue; allowed: > 0 in every tissue cell (mm^2/h)"
            )
        c = grid.check_field("consumption", consumption, nonnegative=True)
        self.grid = grid
        self.diffusion = Diffusion(grid, d_rel, mask=tissue)
        self.diffusivity_mm2_per_h = d0
        self.max_consumption_mmHg_per_h = _scalar(
            "max_consumption_mmHg_per_h",
            max_consumption_mmHg_per_h,
            ">= 0 (mmHg/h)",
            lambda v: v >= 0,
        )
        self.km_mmHg = _scalar("km_mmHg", km_mmHg, "> 0 (mmHg)", lambda v: v > 0)
        self.vessel_po2_mmHg = _scalar(
            "vessel_po2_mmHg", vessel_po2_mmHg, ">= 0 (mmHg)", lambda v: v >= 0
        )
        self.consumption = jnp.asarray(np.where(tissue & ~held, c, 0.0))
        self.supply_rate_per_h = jnp.asarray(k)
        self.held = jnp.asarray(held)
        self.tissue = jnp.asarray(tissue)

    # -- right-hand sides (method of lines) ---------------------------------------------------

    def consumption_rate(self, po2_mmHg, consumption=None) -> Float[Array, " *shape"]:
        """``Vmax c p / (p + Km)`` (mmHg/h) per cell; `consumption` overrides the cellularity
        map (e.g. the tumour cell density of a growth model)."""
        c = (
            self.consumption
            if consumption is None
            else jnp.where(self.tissue & ~self.held, jnp.asarray(consumption, dtype=float), 0.0)
        )
        p = po2_mmHg
        # p / (max(p, 0) + Km): Michaelis-Menten for p >= 0, its tangent p / Km below (docs).
        return self.max_consumption_mmHg_per_h * c * p / (jnp.maximum(p, 0.0) + self.km_mmHg)

    def diffusion_rate(self, t, po2_mmHg, args=None) -> Float[Array, " *shape"]:
        """The diffusion part of dp/dt (mmHg/h): stiff, for the implicit side of ``"imex"``."""
        rate = self.diffusivity_mm2_per_h * self.diffusion(po2_mmHg)
        return jnp.where(self.held, 0.0, rate)

    def reaction_rate(self, t, po2_mmHg, args=None) -> Float[Array, " *shape"]:
        """Consumption and exchange (mmHg/h); `args` as in [`OxygenModel.rate`][]."""
        exchange = self.supply_rate_per_h * (self.vessel_po2_mmHg - po2_mmHg)
        rate = exchange - self.consumption_rate(po2_mmHg, args)
        return jnp.where(self.tissue & ~self.held, rate, 0.0)

    def rate(self, t, po2_mmHg, args=None) -> Float[Array, " *shape"]:
        """dp/dt (mmHg/h), the right-hand side for [`solve_pde`][twinjax.pde.solve_pde].

        `args`: None, or a dimensionless consumption map replacing `consumption` (to couple the
        oxygen field to an evolving cell density). Held vessel cells and cells outside the
        tissue do not change: start from [`OxygenModel.initial_po2`][].
        """
        return self.diffusion_rate(t, po2_mmHg) + self.reaction_rate(t, po2_mmHg, args)

    def initial_po2(self, po2_mmHg=None) -> Float[Array, " *shape"]:
        """A starting field: `po2_mmHg` (default Pv) in the tissue, Pv in held vessel cells, 0
        outside the tissue."""
        p = self.vessel_po2_mmHg if po2_mmHg is None else jnp.asarray(po2_mmHg, dtype=float)
        p = jnp.broadcast_to(p, self.grid.shape)
        return jnp.where(self.held, self.vessel_po2_mmHg, jnp.where(self.tissue, p, 0.0))

    @property
    def max_rate_per_h(self) -> Float[Array, ""]:
        """An upper bound of the fastest local rate (1/h): diffusion, exchange and the
        steepest consumption slope ``Vmax c / Km``. ``1 / max_rate_per_h`` is a stable explicit
        step; it shows how stiff oxygen is next to tumour growth (seconds against days)."""
        diff = self.diffusivity_mm2_per_h * self.diffusion.max_rate_per_h
        slope = self.max_consumption_mmHg_per_h * jnp.max(self.consumption) / self.km_mmHg
        return diff + jnp.max(self.supply_rate_per_h) + slope

    # -- steady state ---------------------------------------------------------------------

    def steady_state(
        self,
        *,
        consumption=None,
        po2_guess_mmHg=None,
        rtol: float = 1e-8,
        atol: float = 1e-10,
        max_steps: int = 100,
        throw: bool = True,
    ) -> Float[Array, " *shape"]:
        """The steady pO2 map (mmHg) by Newton-GMRES ([`steady_state`][twinjax.pde.steady_state]).

        **Arguments:**
        - `consumption`: optional dimensionless map replacing the model's cellularity map.
        - `po2_guess_mmHg`: the Newton start (default Pv in the tissue).
        - `rtol`, `atol`, `max_steps`, `throw`: as `steady_state`; a failure raises
          `SolverError`.

        **Returns:** pO2 per cell (mmHg): Pv in held vessel cells, 0 outside the tissue.
        Differentiable in every scalar parameter (implicit function theorem).
        """
        # GMRES is unpreconditioned: tissue rows are divided by the largest diffusion and
        # exchange rate, so every row is O(1) like the held rows (Pv - p) (the root is the
        # same; the scale carries no gradient).
        scale = jax.lax.stop_gradient(
            self.diffusivity_mm2_per_h * self.diffusion.max_rate_per_h
            + jnp.max(self.supply_rate_per_h)
        )
        held, tissue = self.held, self.tissue

        def residual(p, _):
            rate = self.rate(None, p, consumption) / scale
            return jnp.where(held, self.vessel_po2_mmHg - p, jnp.where(tissue, rate, -p))

        guess = self.initial_po2(po2_guess_mmHg)
        return steady_state(residual, guess, rtol=rtol, atol=atol, max_steps=max_steps, throw=throw)

    def summary(self, po2_mmHg) -> dict[str, Float[Array, ""]]:
        """[`oxygen_summary`][] over the tissue cells that are not held vessel cells."""
        return oxygen_summary(po2_mmHg, self.tissue & ~self.held)


def oxygen_field(grid: Grid, vessels, **kwargs) -> Float[Array, " *shape"]:
    """The steady pO2 map (mmHg) of a vessel map on `grid`.

    **Arguments:**
    - `grid`: a [`Grid`][twinjax.pde.Grid].
    - `vessels`: a boolean map of vessel cells (held at `vessel_po2_mmHg`), or a float map of
      the exchange rate k (1/h) per cell (a vascular-supply map: ``k (Pv - p)``).
    - `**kwargs`: the other arguments of [`OxygenModel`][] (`diffusivity_mm2_per_h`,
      `max_consumption_mmHg_per_h`, `km_mmHg`, `vessel_po2_mmHg`, `consumption`, `mask`) and of
      [`OxygenModel.steady_state`][] (`rtol`, `atol`, `max_steps`, `throw`).
    """
    solve_kw = {k: kwargs.pop(k) for k in ("rtol", "atol", "max_steps", "throw") if k in kwargs}
    arr = np.asarray(vessels)
    if arr.dtype == bool:
        model = OxygenModel(grid, vessel_mask=arr, **kwargs)
    elif np.issubdtype(arr.dtype, np.floating):
        model = OxygenModel(grid, supply_rate_per_h=arr, **kwargs)
    else:
        raise InputError(
            f"vessels has dtype {arr.dtype}; allowed: a boolean vessel mask or a float map of "
            "exchange rates (1/h)"
        )
    return model.steady_state(**solve_kw)


def _region(po2_mmHg, mask):
    """``(p, m)``: the pO2 values and a float weight of 1 inside `mask`, both flattened. The mask
    is validated when concrete; a traced one (a model under `jit`) is used as given."""
    p = jnp.asarray(po2_mmHg, dtype=float).reshape(-1)
    if mask is None:
        return p, jnp.ones_like(p)
    if not isinstance(mask, jax.core.Tracer):
        m = np.asarray(mask)
        if m.shape != jnp.shape(po2_mmHg):
            raise InputError(
                f"mask has shape {m.shape}; allowed: the pO2 map's shape {jnp.shape(po2_mmHg)}"
            )
        if m.dtype != bool and not np.all(np.isin(m, (0, 1))):
            raise InputError("mask is not binary; allowed: booleans or 0/1")
        if not m.any():
            raise InputError("mask is empty; allowed: at least one cell inside")
    return p, jnp.asarray(mask).reshape(-1).astype(float)


def _fraction_below(p, m, threshold):
    return jnp.sum(jnp.where(p < threshold, m, 0.0)) / jnp.sum(m)


def hypoxic_fraction(po2_mmHg, mask=None, threshold_mmHg=10.0) -> Float[Array, ""]:
    """Fraction of the cells in `mask` (default all) with pO2 below `threshold_mmHg` (mmHg)."""
    thr = _scalar("threshold_mmHg", threshold_mmHg, "> 0 (mmHg)", lambda v: v > 0)
    return _fraction_below(*_region(po2_mmHg, mask), thr)


def oxygen_summary(
    po2_mmHg, mask=None, *, thresholds_mmHg=(2.5, 5.0, 10.0)
) -> dict[str, Float[Array, ""]]:
    """Median and mean pO2 and hypoxic fractions of the cells in `mask` (default all).

    **Returns:** a dict with ``"median_mmHg"``, ``"mean_mmHg"`` and, per threshold t,
    ``"fraction_below_{t:g}_mmHg"`` (default 2.5, 5 and 10 mmHg; module docs).
    """
    thresholds = [
        _scalar("thresholds_mmHg", t, "> 0 (mmHg)", lambda v: v > 0) for t in thresholds_mmHg
    ]
    p, m = _region(po2_mmHg, mask)
    count = jnp.sum(m)
    # Median of the masked cells with a traceable mask: cells outside sort to the end.
    ranked = jnp.sort(jnp.where(m > 0, p, jnp.inf))
    lo = ((count - 1) // 2).astype(int)
    hi = (count // 2).astype(int)
    out = {
        "median_mmHg": 0.5 * (ranked[lo] + ranked[hi]),
        "mean_mmHg": jnp.sum(p * m) / count,
    }
    for t, thr in zip(thresholds_mmHg, thresholds, strict=True):
        out[f"fraction_below_{float(t):g}_mmHg"] = _fraction_below(p, m, thr)
    return out

"""Tumour growth under radioligand therapy: proliferation-invasion (Fisher-KPP) with a
dose-rate-driven, oxygen-modified linear-quadratic kill and incomplete repair.

For the normalised tumour-cell density n = N / K (K the carrying capacity) on a
[`Grid`][twinjax.pde.Grid]:

    dn/dt = div(D0 d(x) grad n) + rho n (1 - n) - (alpha(p) R + 2 beta(p) R q) n
    dq/dt = R - mu q,        mu = ln 2 / T_rep

- **Proliferation-invasion** (Swanson, Alvord & Murray 2000, Cell Prolif 33:317, who made D
  heterogeneous between grey and white matter; Swanson et al. 2003, J Neurol Sci 216:1; the
  form ``div(D(x) grad n)`` with an image-derived D map as in Jarrett et al. 2018, Phys Med Biol
  63:105015): random motility with diffusivity D0 d(x) (mm^2/h; d(x) a dimensionless map, e.g.
  reduced in fibrosis) and logistic proliferation at rate rho (1/h). Fronts travel at
  ``2 sqrt(D rho)`` (Fisher 1937; Kolmogorov, Petrovsky & Piskunov 1937).
- **Radiation** at the local dose rate R(x, t) (Gy/h, e.g. from a radioligand dose-rate
  simulation). q(x, t) (Gy) is the dose whose sublethal damage is still unrepaired, repaired
  mono-exponentially with half-time T_rep; the kill rate ``alpha R + 2 beta R q`` integrates
  to the Lea-Catcheside LQ effect ``alpha D + beta G D^2`` (Dale 1985, Br J Radiol 58:515), so
  without growth and motility ``n(T) / n(0) = exp(-alpha D - beta G D^2)`` exactly, with G as
  [`twinjax.radiobiology.protraction_factor`][] computes it. alpha and beta are reduced in
  hypoxic cells by [`twinjax.radiobiology.hypoxia_modified_lq`][] (the Alper-Howard-Flanders
  OER of Wouters & Brown 1997, Radiat Res 147:541) from a pO2 map (mmHg), e.g. an
  [`oxygen_field`][twinjax.pde.oxygen_field].

Time integration is the method of lines of [`solve_pde`][twinjax.pde.solve_pde]: ``"imex"``
(default; diffusion implicit, reactions explicit), ``"explicit"`` (fixed step, checked
against the diffusion stability limit), ``"adaptive"`` or ``"implicit"``.

Units: length mm, time h, diffusivity mm^2/h, rho 1/h, dose Gy, dose rate Gy/h, alpha 1/Gy,
beta 1/Gy^2, repair half-time h, pO2 mmHg, volume mL.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._errors import InputError
from ..radiobiology import DoseRate, hypoxia_modified_lq
from ._grid import Grid
from ._operators import Diffusion
from ._oxygen import _scalar, _split_diffusivity
from ._solve import solve_pde

__all__ = [
    "TumourGrowthPDE",
    "front_position_mm",
    "simulate_growth",
    "tumour_burden",
    "tumour_radius_mm",
]


def _maybe_scalar(name, value, allowed, ok):
    return None if value is None else _scalar(name, value, allowed, ok)


class TumourGrowthPDE(eqx.Module):
    """Proliferation-invasion with LQ kill (module docs).

    **Arguments:**
    - `grid`: a [`Grid`][twinjax.pde.Grid].
    - `diffusivity_mm2_per_h`: D, a scalar or a map (heterogeneous tissue), >= 0 (mm^2/h).
    - `proliferation_rate_per_h`: rho, a scalar or a map, >= 0 (1/h).
    - `alpha_per_Gy`, `beta_per_Gy2`: well-oxygenated LQ parameters (> 0, >= 0); needed only
      when a dose rate is given.
    - `repair_half_time_h`: T_rep > 0 (h); needed with a dose rate.
    - `po2_mmHg`: pO2 map or scalar (mmHg) modifying alpha and beta; None = well oxygenated.
    - `mask`: boolean tissue map; cells outside do not change and exchange nothing.

    Scalar parameters may be traced (the model can be built inside `jax.grad`/`vmap`).
    """

    grid: Grid
    diffusion: Diffusion  # of the dimensionless map d(x); multiplied by D0 when applied
    diffusivity_mm2_per_h: Float[Array, ""]
    proliferation_rate_per_h: Float[Array, " *shape"]
    alpha_per_Gy: Float[Array, ""] | None
    beta_per_Gy2: Float[Array, ""] | None
    repair_half_time_h: Float[Array, ""] | None
    po2_mmHg: Float[Array, " *shape"] | None
    tissue: Bool[Array, " *shape"]

    def __init__(
        self,
        grid: Grid,
        *,
        diffusivity_mm2_per_h,
        proliferation_rate_per_h,
        alpha_per_Gy=None,
        beta_per_Gy2=None,
        repair_half_time_h=None,
        po2_mmHg=None,
        mask=None,
    ):
        if not isinstance(grid, Grid):
            raise InputError(f"grid = {grid!r}; allowed: a twinjax.pde.Grid")
        tissue = np.ones(grid.shape, bool) if mask is None else grid.check_mask("mask", mask)
        d0, d_rel = _split_diffusivity(grid, diffusivity_mm2_per_h, tissue)
        if (
            isinstance(proliferation_rate_per_h, jax.core.Tracer)
            or np.ndim(proliferation_rate_per_h) == 0
        ):
            rho = _scalar(
                "proliferation_rate_per_h", proliferation_rate_per_h, ">= 0 (1/h)", lambda v: v >= 0
            )
        else:
            rho = jnp.asarray(
                grid.check_field(
                    "proliferation_rate_per_h", proliferation_rate_per_h, nonnegative=True
                )
            )
        if po2_mmHg is not None and not isinstance(po2_mmHg, jax.core.Tracer):
            po2_mmHg = jnp.asarray(grid.check_field("po2_mmHg", po2_mmHg, nonnegative=True))
        self.grid = grid
        self.diffusion = Diffusion(grid, d_rel, mask=tissue)
        self.diffusivity_mm2_per_h = d0
        self.proliferation_rate_per_h = rho
        self.alpha_per_Gy = _maybe_scalar(
            "alpha_per_Gy", alpha_per_Gy, "> 0 (1/Gy)", lambda v: v > 0
        )
        self.beta_per_Gy2 = _maybe_scalar(
            "beta_per_Gy2", beta_per_Gy2, ">= 0 (1/Gy^2)", lambda v: v >= 0
        )
        self.repair_half_time_h = _maybe_scalar(
            "repair_half_time_h", repair_half_time_h, "> 0 (h)", lambda v: v > 0
        )
        self.po2_mmHg = po2_mmHg
        self.tissue = jnp.asarray(tissue)

    @property
    def max_rate_per_h(self) -> Float[Array, ""]:
        """The largest diffusion rate (1/h): explicit steps must satisfy ``dt <= 1 / rate``."""
        return self.diffusivity_mm2_per_h * self.diffusion.max_rate_per_h

    def radiosensitivity(self) -> tuple[Float[Array, " *shape"], Float[Array, " *shape"]]:
        """alpha (1/Gy) and beta (1/Gy^2) per cell at the model's pO2."""
        if self.alpha_per_Gy is None or self.beta_per_Gy2 is None:
            raise InputError(
                f"alpha_per_Gy = {self.alpha_per_Gy}, beta_per_Gy2 = {self.beta_per_Gy2}; "
                "allowed: both given (> 0 and >= 0) when a dose rate is applied"
            )
        if self.po2_mmHg is None:
            return self.alpha_per_Gy, self.beta_per_Gy2
        return hypoxia_modified_lq(self.alpha_per_Gy, self.beta_per_Gy2, self.po2_mmHg)

    def diffusion_rate(self, t, n, args=None):
        """Motility, ``div(D grad n)`` (1/h): the stiff part for ``"imex"``."""
        return self.diffusivity_mm2_per_h * self.diffusion(n)

    def growth_rate(self, t, n, args=None):
        """Logistic proliferation ``rho n (1 - n)`` (1/h), zero outside the tissue."""
        return jnp.where(self.tissue, self.proliferation_rate_per_h * n * (1.0 - n), 0.0)


# --------------------------------------------------------------------------------------------
# Dose-rate inputs


class _SampledMaps(eqx.Module):
    """Dose-rate maps linear in time between `times_h`, zero before the first and after the last
    sample."""

    times_h: Float[Array, " T"]
    maps: Float[Array, " T *shape"]

    def __call__(self, t):
        tk = self.times_h
        i = jnp.clip(jnp.searchsorted(tk, t, side="right") - 1, 0, tk.shape[0] - 2)
        width = tk[i + 1] - tk[i]
        w = jnp.clip((t - tk[i]) / jnp.where(width > 0, width, 1.0), 0.0, 1.0)
        r = (1.0 - w) * self.maps[i] + w * self.maps[i + 1]
        return jnp.where((t >= tk[0]) & (t <= tk[-1]), r, 0.0)


def _dose_rate_input(grid: Grid, dose_rate) -> tuple[Callable, np.ndarray]:
    """``(R(t) -> scalar or map (Gy/h), jump times (h))`` from the accepted forms."""
    if isinstance(dose_rate, DoseRate):
        breaks = dose_rate.breaks_h
        jumps = () if isinstance(breaks, jax.core.Tracer) else np.asarray(breaks).reshape(-1)
        return dose_rate.rate, jumps
    if isinstance(dose_rate, tuple) and len(dose_rate) == 2:
        times, maps = dose_rate
        t = np.asarray(times, dtype=float)
        if t.ndim != 1 or t.shape[0] < 2 or not (np.all(np.isfinite(t)) and np.all(np.diff(t) > 0)):
            raise InputError(
                f"dose_rate times_h = {t.tolist()!r}; allowed: >= 2 finite, increasing times (h)"
            )
        if isinstance(maps, jax.core.Tracer):
            m = jnp.asarray(maps, dtype=float)
        else:
            m = np.asarray(maps, dtype=float)
            if not (np.all(np.isfinite(m)) and np.all(m >= 0)):
                raise InputError(
                    "dose_rate maps have NaN, infinite or negative values; allowed: "
                    "finite and >= 0 (Gy/h)"
                )
        if m.shape != (t.shape[0], *grid.shape):
            raise InputError(
                f"dose_rate maps have shape {m.shape}; allowed: (len(times_h), *grid.shape) = "
                f"{(t.shape[0], *grid.shape)} (Gy/h)"
            )
        return _SampledMaps(jnp.asarray(t), jnp.asarray(m)), t
    if callable(dose_rate):
        out = jax.eval_shape(dose_rate, jax.ShapeDtypeStruct((), jnp.result_type(float)))
        if getattr(out, "shape", None) not in ((), grid.shape):
            raise InputError(
                f"dose_rate(t) returns shape {getattr(out, 'shape', out)}; allowed: a scalar or "
                f"a map of the grid's shape {grid.shape} (Gy/h)"
            )
        return dose_rate, np.zeros(0)
    raise InputError(
        f"dose_rate = {dose_rate!r}; allowed: None, a radiobiology.DoseRate, a callable t_h -> "
        "Gy/h (scalar or map), or (times_h, maps) sampled dose-rate maps"
    )


# --------------------------------------------------------------------------------------------
# Simulation


def simulate_growth(
    model: TumourGrowthPDE,
    n0,
    times_h,
    *,
    dose_rate=None,
    method: str = "imex",
    dt_h: float | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    jump_times_h=(),
    max_steps: int = 100_000,
    throw: bool = True,
    adjoint: str = "reverse",
) -> Float[Array, " T *shape"]:
    """Tumour-cell density maps at `times_h` (module docs).

    **Arguments:**
    - `model`: a [`TumourGrowthPDE`][].
    - `n0`: the density at ``times_h[0]``, a map or scalar, >= 0 (1 = carrying capacity).
    - `times_h`: sorted output times (h); the first is the start.
    - `dose_rate`: None (no irradiation); a [`twinjax.radiobiology.DoseRate`][] (uniform dose
      rate); a callable ``t_h -> Gy/h`` returning a scalar or a map; or a pair ``(times_h
      (T,), maps (T, *grid.shape))`` of sampled dose-rate maps (Gy/h), linear in between and
      zero outside the sampled interval. The unrepaired dose q starts at 0.
    - `method`: ``"imex"`` (default), ``"explicit"`` (`dt_h` defaults to 0.9 times the
      diffusion stability limit), ``"adaptive"`` or ``"implicit"`` ([`solve_pde`][]).
    - `rtol`, `atol`, `max_steps`, `throw`, `adjoint`: as [`solve_pde`][] (``"forward"`` for
      `jax.jvp` in a few scalar parameters); `jump_times_h` add to the dose-rate curve's own
      breakpoints.

    **Returns:** n, shape ``(len(times_h), *grid.shape)``.
    """
    if not isinstance(model, TumourGrowthPDE):
        raise InputError(f"model = {type(model).__name__}; allowed: a TumourGrowthPDE")
    grid = model.grid
    if isinstance(n0, jax.core.Tracer):
        y0 = jnp.broadcast_to(jnp.asarray(n0, dtype=float), grid.shape)
    else:
        y0 = jnp.asarray(grid.check_field("n0", n0, nonnegative=True))
    jumps = np.asarray(jump_times_h, dtype=float).reshape(-1)
    if dose_rate is None:

        def f(t, n, args):
            return model.growth_rate(t, n)

        def stiff(t, n, args):
            return model.diffusion_rate(t, n)
    else:
        rate, breaks = _dose_rate_input(grid, dose_rate)
        alpha, beta = model.radiosensitivity()
        if model.repair_half_time_h is None:
            raise InputError(
                "repair_half_time_h = None; allowed: > 0 (h) when a dose rate is applied"
            )
        mu = math.log(2.0) / model.repair_half_time_h
        jumps = np.concatenate([jumps, np.asarray(breaks, dtype=float).reshape(-1)])
        tissue = model.tissue

        def f(t, y, args):
            n, q = y
            r = jnp.where(tissue, jnp.broadcast_to(rate(t), grid.shape), 0.0)
            # d/dt of the LQ effect alpha D + beta G D^2 is alpha R + 2 beta R q (module docs).
            kill = (alpha * r + 2.0 * beta * r * q) * n
            return model.growth_rate(t, n) - kill, r - mu * q

        def stiff(t, y, args):
            n, q = y
            return model.diffusion_rate(t, n), jnp.zeros_like(q)

        y0 = (y0, jnp.zeros(grid.shape))
    if method == "explicit":
        if dt_h is None:
            top = model.max_rate_per_h
            if isinstance(top, jax.core.Tracer) or float(top) <= 0:
                raise InputError(
                    "method 'explicit' needs dt_h (h) here (no concrete diffusion rate to derive "
                    "it from)"
                )
            dt_h = 0.9 / float(top)
        top = model.max_rate_per_h
        limit = None if isinstance(top, jax.core.Tracer) else float(top)
        kw = dict(dt_h=dt_h, stability_rate_per_h=limit)
    else:
        kw = {}

    def full(t, y, args):
        return jax.tree.map(jnp.add, f(t, y, args), stiff(t, y, args))

    ys = solve_pde(
        f if method == "imex" else full,
        y0,
        times_h,
        method=method,
        stiff=stiff if method == "imex" else None,
        rtol=rtol,
        atol=atol,
        jump_times_h=jumps,
        max_steps=max_steps,
        throw=throw,
        adjoint=adjoint,
        **kw,
    )
    return ys if dose_rate is None else ys[0]


# --------------------------------------------------------------------------------------------
# Read-outs


def _density(n, grid: Grid):
    n = jnp.asarray(n, dtype=float)
    if n.shape[n.ndim - grid.ndim :] != grid.shape:
        raise InputError(
            f"n has shape {n.shape}; allowed: (..., *grid.shape) with grid.shape = {grid.shape}"
        )
    return n


def tumour_burden(n, grid: Grid, mask=None) -> Float[Array, " ..."]:
    """Tumour burden ``sum_i n_i V_cell`` (mL): the volume the cells would fill at carrying
    capacity. `n` is a density map or a stack of them (leading axes kept); `mask` restricts the
    sum (e.g. a region of interest)."""
    n = _density(n, grid)
    if mask is not None:
        n = jnp.where(grid.check_mask("mask", mask), n, 0.0)
    axes = tuple(range(n.ndim - grid.ndim, n.ndim))
    return jnp.sum(n, axis=axes) * grid.cell_volume_mL


def tumour_radius_mm(n, grid: Grid, *, threshold=0.5) -> Float[Array, " ..."]:
    """Equivalent radius (mm) of the cells with density >= `threshold`, as imaging measures it
    (Swanson et al. 2003: the radius of the sphere of the visible volume): 3-D ``(3 V / (4
    pi))^(1/3)``, 2-D ``sqrt(A / pi)``, 1-D half the length. Leading axes of `n` are kept."""
    n = _density(n, grid)
    thr = _scalar("threshold", threshold, "in (0, 1]", lambda v: 0 < v <= 1)
    axes = tuple(range(n.ndim - grid.ndim, n.ndim))
    size = jnp.sum((n >= thr).astype(float), axis=axes) * math.prod(grid.spacing_mm)
    if grid.ndim == 3:
        return jnp.cbrt(3.0 * size / (4.0 * math.pi))
    if grid.ndim == 2:
        return jnp.sqrt(size / math.pi)
    return 0.5 * size


def front_position_mm(n, grid: Grid, *, threshold=0.5) -> Float[Array, " ..."]:
    """Distance (mm) from the grid's origin to the first place where a 1-D density profile falls
    below `threshold` (linear between cell centres; a travelling front's position). 0 if the
    first cell is already below, the domain length if no cell is. Leading axes are kept."""
    if grid.ndim != 1:
        raise InputError(
            f"front_position_mm needs a 1-D grid; got {grid.ndim}-D (use tumour_radius_mm)"
        )
    n = _density(n, grid)
    thr = _scalar("threshold", threshold, "in (0, 1]", lambda v: 0 < v <= 1)
    h = grid.spacing_mm[0]
    x = (jnp.arange(grid.shape[0], dtype=float) + 0.5) * h
    below = n < thr
    i = jnp.argmax(below, axis=-1)
    im = jnp.maximum(i - 1, 0)
    take = lambda k: jnp.take_along_axis(n, k[..., None], axis=-1)[..., 0]  # noqa: E731
    v0, v1 = take(im), take(i)
    frac = (v0 - thr) / jnp.where(v0 > v1, v0 - v1, 1.0)
    pos = x[im] + frac * h
    pos = jnp.where(i == 0, 0.0, pos)
    return jnp.where(jnp.any(below, axis=-1), pos, grid.extent_mm[0])

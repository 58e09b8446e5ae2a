r"""Tissue-scale PET tracer kinetics on a grid: the compartment model of every cell, coupled by
diffusion of the free tracer.

Each cell i carries the free (interstitial and intracellular, unbound) tracer ``C_F`` and one or
more bound / trapped / metabolised species ``C_B,j`` (concentrations per unit tissue volume, in
the unit of the plasma input). The free tracer exchanges with plasma and diffuses; the bound
species do not move:

$$\partial_t C_F = s_D \nabla\cdot(D \nabla C_F) + K_1 C_p(t) - k_2 C_F
    - \sum_j k_{3,j} C_F + \sum_j k_{4,j} C_{B,j},$$
$$\partial_t C_{B,j} = k_{3,j} C_F - k_{4,j} C_{B,j},$$

with maps (one value per cell) of the influx ``K1`` (1/h, mL plasma / mL tissue / h: perfusion
times extraction), the efflux ``k2`` (1/h), the trapping rates ``k3_j`` and release rates
``k4_j`` (1/h), and the diffusivity ``D`` (mm^2/h, finite volumes with harmonic-mean faces and
no-flux domain boundaries, [`Diffusion`][twinjax.pde.Diffusion]). Without diffusion each cell is
exactly the classical two-tissue compartment model (`twinjax.models.pet.two_tissue`).

**Flow-limited delivery** (optional): with a perfusion map ``F`` (1/h, mL plasma / mL tissue /
h) and a permeability-surface product ``PS`` (1/h), the influx is the Renkin-Crone extraction
``K1 = F (1 - exp(-PS / F))`` (Renkin 1959, Am J Physiol 197:1205; Crone 1963, Acta Physiol
Scand 58:292) and the efflux ``k2 = K1 / V_d`` with the free tracer's distribution volume
``V_d`` (-). ``K1 -> F`` when ``PS >> F`` (flow-limited) and ``K1 -> PS`` when ``PS << F``.

**Measured activity.** The PET concentration of a cell is ``(1 - vb)(C_F + sum_j C_B,j) + vb
C_p`` with the blood volume fraction map ``vb`` (whole blood taken as plasma, as in
`twinjax.models.pet`). All kinetics are decay-corrected; with `half_life_h` every output
concentration is multiplied by ``exp(-ln 2 t / T_half)`` (the activity a scanner sees). This is
exact: physical decay acts on every species alike, so solving with decay and a non-corrected
input gives the same.

**Parameters.** The maps are structure; the numbers a calibration samples are
[`TracerParams`][]: dimensionless scales of the maps (perfusion, efflux, trapping, release,
diffusivity), all 1 by default. Gradients flow through the solve to every scale (and to the
array leaves of the model, e.g. a `FengInput`).

Units: time h, rates 1/h, diffusivity mm^2/h, length mm; concentrations in the unit of
the input ``C_p`` (e.g. kBq/mL or nmol/L).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..models.pet import FengInput
from ._grid import Grid
from ._operators import Diffusion

__all__ = ["SampledInput", "TracerPDE", "TracerParams"]


def _concrete(x) -> np.ndarray | None:
    """`x` as a float numpy array, or None when it is traced (validation is then skipped)."""
    try:
        return np.asarray(x, dtype=float)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class SampledInput(eqx.Module):
    """A plasma input ``C_p(t)`` from samples, linear between them.

    **Arguments:**
    - `times_h`: sorted sample times (h), >= 0, 1-D, at least 2. When the first is after 0, a
      zero sample at ``t = 0`` (before the injection reaches plasma) is implied.
    - `values`: the plasma concentrations at `times_h`, >= 0 (any concentration unit; the
      tissue maps come out in the same unit).

    The curve is not extrapolated: a simulation past the last sample is refused.
    """

    times_h: Float[Array, " n"]
    values: Float[Array, " n"]

    def __init__(self, times_h, values):
        t = np.asarray(times_h, dtype=float)
        v = np.asarray(values, dtype=float)
        if t.ndim != 1 or t.shape[0] < 2:
            raise InputError(f"times_h has shape {t.shape}; allowed: a 1-D array of >= 2 times (h)")
        if v.shape != t.shape:
            raise InputError(f"values has shape {v.shape}; allowed: the shape of times_h {t.shape}")
        if not (np.all(np.isfinite(t)) and t[0] >= 0 and np.all(np.diff(t) > 0)):
            raise InputError(f"times_h = {t}; allowed: finite, >= 0 h, strictly increasing")
        if not np.all(np.isfinite(v) & (v >= 0)):
            raise InputError(f"values = {v}; allowed: finite concentrations >= 0")
        if t[0] > 0:
            t, v = np.concatenate([[0.0], t]), np.concatenate([[0.0], v])
        self.times_h = jnp.asarray(t)
        self.values = jnp.asarray(v)

    def __call__(self, t_h):
        return jnp.interp(jnp.asarray(t_h, dtype=float), self.times_h, self.values)


def _input_kinks(plasma_input) -> tuple[float, ...]:
    """Times where the input's derivative jumps (step-size controllers restart there)."""
    if isinstance(plasma_input, FengInput):
        tau = _concrete(plasma_input.tau_h)
        return () if tau is None or tau <= 0 else (float(tau),)
    if isinstance(plasma_input, SampledInput):
        return tuple(float(x) for x in np.asarray(plasma_input.times_h)[1:-1])
    return ()


class TracerParams(eqx.Module):
    """Dimensionless scales of a [`TracerPDE`][]'s maps: the PyTree a calibration samples.

    **Fields** (>= 0, default 1):
    - `perfusion_scale`: multiplies the influx ``K1`` and efflux ``k2`` together (same
      distribution volume); in flow-limited models it multiplies the perfusion ``F``.
    - `efflux_scale`: multiplies ``k2`` alone (changes the distribution volume).
    - `trapping_scale`: multiplies every ``k3`` map (e.g. hexokinase, hypoxic trapping, TK1).
    - `release_scale`: multiplies every ``k4`` map.
    - `diffusivity_scale`: multiplies the diffusivity map (exact: face diffusivities are
      harmonic means, homogeneous of degree one).
    """

    perfusion_scale: Float[Array, ""]
    efflux_scale: Float[Array, ""]
    trapping_scale: Float[Array, ""]
    release_scale: Float[Array, ""]
    diffusivity_scale: Float[Array, ""]

    def __init__(self, perfusion_scale=1.0, efflux_scale=1.0, trapping_scale=1.0,
                 release_scale=1.0, diffusivity_scale=1.0):  # fmt: skip
        for name, v in (("perfusion_scale", perfusion_scale), ("efflux_scale", efflux_scale),
                        ("trapping_scale", trapping_scale), ("release_scale", release_scale),
                        ("diffusivity_scale", diffusivity_scale)):  # fmt: skip
            c = _concrete(v)
            if c is not None and not np.all(np.isfinite(c) & (c >= 0)):
                raise InputError(f"TracerParams.{name} = {c.tolist()!r}; allowed: finite and >= 0")
        self.perfusion_scale = jnp.asarray(perfusion_scale, dtype=float)
        self.efflux_scale = jnp.asarray(efflux_scale, dtype=float)
        self.trapping_scale = jnp.asarray(trapping_scale, dtype=float)
        self.release_scale = jnp.asarray(release_scale, dtype=float)
        self.diffusivity_scale = jnp.asarray(diffusivity_scale, dtype=float)


def _species_maps(grid: Grid, name: str, value, n: int | None) -> np.ndarray:
    """A rate given as one map/scalar or a tuple of them -> an (n, *shape) stack. Only a tuple
    means several species (a list or array is one map, e.g. of a 1-D grid)."""
    if isinstance(value, tuple):
        maps = [grid.check_field(f"{name}[{i}]", v, nonnegative=True) for i, v in enumerate(value)]
        if not maps:
            raise InputError(f"{name} is empty; allowed: one map (or scalar) per bound species")
    else:
        maps = [grid.check_field(name, value, nonnegative=True)]
    if n is not None and len(maps) == 1 and n > 1:
        maps = maps * n
    if n is not None and len(maps) != n:
        raise InputError(f"{name} has {len(maps)} maps; allowed: 1 or one per bound species ({n})")
    return np.stack(maps)


class _Diffusion(eqx.Module):
    """The arrays of a [`Diffusion`][twinjax.pde.Diffusion] without its static stability rate,
    so that models differing only in their maps share one compilation (and can be stacked for
    `vmap`); applied by `Diffusion.__call__` itself."""

    face_rate: tuple[Float[Array, " *faces"], ...]
    boundary_rate: Float[Array, " *shape"]
    boundary_value: Float[Array, ""]

    def __call__(self, u):
        return Diffusion.__call__(self, u)  # type: ignore[arg-type]


class _Kinetics(eqx.Module):
    """What the solver needs of a [`TracerPDE`][]: the input, the operator and the maps, no
    names or other static metadata (models that differ only in values share one compilation)."""

    plasma_input: Callable
    diffusion: _Diffusion
    # Both deliveries are stored (the unused one as zeros/ones) and chosen by an array flag:
    # rate-based and flow-limited models then share one compiled solver too.
    K1: Float[Array, " *shape"]
    k2: Float[Array, " *shape"]
    flow: Float[Array, " *shape"]
    ps: Float[Array, " *shape"]
    vd: Float[Array, " *shape"]
    flow_flag: Float[Array, ""]
    k3: Float[Array, " n *shape"]
    k4: Float[Array, " n *shape"]
    vb: Float[Array, " *shape"]
    decay_constant_per_h: Float[Array, ""]  # 0 for decay-corrected output
    max_diffusion_rate_per_h: Float[Array, ""]  # Diffusion.max_rate_per_h
    max_reaction_rate_per_h: Float[Array, ""]  # Gershgorin bound of the reaction block

    def rates(self, params: TracerParams):
        """``(K1, k2, k3, k4)`` maps (1/h) at `params`; k3, k4 stacked over bound species."""
        k1 = params.perfusion_scale * self.K1
        k2 = params.perfusion_scale * params.efflux_scale * self.k2
        f = params.perfusion_scale * self.flow
        pos = f > 0
        fs = jnp.where(pos, f, 1.0)
        k1f = jnp.where(pos, -fs * jnp.expm1(-self.ps / fs), 0.0)  # Renkin-Crone
        k2f = params.efflux_scale * k1f / self.vd
        flow = self.flow_flag > 0
        k1, k2 = jnp.where(flow, k1f, k1), jnp.where(flow, k2f, k2)
        return k1, k2, params.trapping_scale * self.k3, params.release_scale * self.k4


class TracerPDE(eqx.Module):
    """A PET tracer on a grid: free tracer that exchanges with plasma and diffuses, plus bound
    species that stay put (module docs). Simulate with [`simulate_tracer`][].

    **Arguments:**
    - `grid`: a [`Grid`][twinjax.pde.Grid].
    - `plasma_input`: ``C_p(t)``, a callable of time (h): a `twinjax.models.pet.FengInput`, a
      [`SampledInput`][], or any jax-traceable function (decay-corrected concentration).
    - `K1_per_h`: influx map (1/h), >= 0. Not with `perfusion_per_h`.
    - `k2_per_h`: efflux map (1/h), >= 0. Not with `perfusion_per_h`.
    - `k3_per_h`: trapping rate map (1/h), >= 0, of the one bound species, or a tuple of
      maps/scalars, one per bound species (parallel pathways from the free tracer).
    - `k4_per_h`: release rate map(s) (1/h), >= 0: one for all species or a tuple, one per
      bound species.
    - `vb`: blood volume fraction map, in [0, 1).
    - `diffusivity_mm2_per_h`: diffusivity map of the free tracer (mm^2/h), >= 0.
    - `perfusion_per_h`, `permeability_surface_per_h`, `distribution_volume`: flow-limited
      delivery instead of `K1_per_h`/`k2_per_h` (module docs): maps of F (1/h, >= 0), PS (1/h,
      > 0) and V_d (-, > 0).
    - `bound_names`: names of the bound species (default ``("bound",)`` or numbered).
    - `half_life_h`: physical half-life (h) for non-decay-corrected output; None (default)
      gives decay-corrected activity.
    - `boundary`: ``"no-flux"`` (default) or ``"fixed"`` domain faces for the free tracer
      (held at 0: an absorbing surrounding).

    **Fields:** `grid`; `bound_names`; `kinetics`, all the solver uses: `plasma_input`,
    `diffusion`, the maps `K1`, `k2`, `k3`, `k4` (stacked over bound species), `vb` (and `flow`,
    `ps`, `vd` of flow-limited delivery), so a map can be replaced with `eqx.tree_at(lambda m:
    m.kinetics.k3, model, new_k3)` (e.g. a trapping map built from a traced oxygen field with
    [`kelly_brady_trapping`][twinjax.pde.kelly_brady_trapping]).
    """

    grid: Grid
    kinetics: _Kinetics
    bound_names: tuple[str, ...] = eqx.field(static=True)
    kink_times_h: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, grid: Grid, plasma_input: Callable, *, K1_per_h=None, k2_per_h=None,
                 k3_per_h=0.0, k4_per_h=0.0, vb=0.0, diffusivity_mm2_per_h=0.0,
                 perfusion_per_h=None, permeability_surface_per_h=None, distribution_volume=None,
                 bound_names: Sequence[str] | None = None, half_life_h: float | None = None,
                 boundary: str = "no-flux"):  # fmt: skip
        if not isinstance(grid, Grid):
            raise InputError(f"grid is a {type(grid).__name__}; allowed: a twinjax.pde.Grid")
        if not callable(plasma_input):
            raise InputError(
                f"plasma_input is a {type(plasma_input).__name__}; allowed: a callable of time "
                "(h), e.g. twinjax.models.pet.FengInput or twinjax.pde.SampledInput"
            )
        flow_limited = perfusion_per_h is not None
        if flow_limited:
            if K1_per_h is not None or k2_per_h is not None:
                raise InputError(
                    "K1_per_h/k2_per_h given with perfusion_per_h; allowed: either the rates "
                    "K1_per_h and k2_per_h, or perfusion_per_h with permeability_surface_per_h "
                    "and distribution_volume"
                )
            if permeability_surface_per_h is None or distribution_volume is None:
                raise InputError(
                    "perfusion_per_h needs permeability_surface_per_h (1/h, > 0) and "
                    "distribution_volume (-, > 0)"
                )
            f = grid.check_field("perfusion_per_h", perfusion_per_h, nonnegative=True)
            ps = grid.check_field("permeability_surface_per_h", permeability_surface_per_h,
                                  positive=True)  # fmt: skip
            vd = grid.check_field("distribution_volume", distribution_volume, positive=True)
            k1 = k2 = np.zeros(grid.shape)
            exchange = np.where(f > 0, -f * np.expm1(-ps / np.where(f > 0, f, 1.0)), 0.0)
            exchange = exchange * (1.0 + 1.0 / vd)
        else:
            if K1_per_h is None or k2_per_h is None:
                raise InputError(
                    "K1_per_h and k2_per_h are required (1/h, >= 0), or perfusion_per_h for "
                    "flow-limited delivery"
                )
            k1 = grid.check_field("K1_per_h", K1_per_h, nonnegative=True)
            k2 = grid.check_field("k2_per_h", k2_per_h, nonnegative=True)
            f, ps, vd = np.zeros(grid.shape), np.ones(grid.shape), np.ones(grid.shape)
            exchange = k2
        k3 = _species_maps(grid, "k3_per_h", k3_per_h, None)
        k4 = _species_maps(grid, "k4_per_h", k4_per_h, k3.shape[0])
        vbm = grid.check_field("vb", vb, nonnegative=True)
        if np.any(vbm >= 1.0):
            raise InputError(f"vb has max {float(vbm.max())!r}; allowed: in [0, 1) in every cell")
        n = k3.shape[0]
        if bound_names is None:
            bound_names = ("bound",) if n == 1 else tuple(f"bound{j}" for j in range(n))
        bound_names = tuple(str(s) for s in bound_names)
        if len(bound_names) != n:
            raise InputError(f"bound_names = {bound_names}; allowed: {n} name(s), one per k3 map")
        if half_life_h is not None and not (np.isfinite(half_life_h) and half_life_h > 0):
            raise InputError(f"half_life_h = {half_life_h!r}; allowed: > 0 (h) or None")
        lam = 0.0 if half_life_h is None else math.log(2.0) / float(half_life_h)
        op = Diffusion(grid, diffusivity_mm2_per_h, boundary=boundary)
        # Gershgorin bound of the reaction block at unit scales (explicit step sizes).
        react = float(np.max(exchange + k3.sum(0) + k4.sum(0)))
        self.grid = grid
        self.kinetics = _Kinetics(
            plasma_input=plasma_input,
            diffusion=_Diffusion(op.face_rate, op.boundary_rate, op.boundary_value),
            K1=jnp.asarray(k1), k2=jnp.asarray(k2), flow=jnp.asarray(f), ps=jnp.asarray(ps),
            vd=jnp.asarray(vd), flow_flag=jnp.asarray(1.0 if flow_limited else 0.0),
            k3=jnp.asarray(k3), k4=jnp.asarray(k4), vb=jnp.asarray(vbm),
            decay_constant_per_h=jnp.asarray(lam),
            max_diffusion_rate_per_h=jnp.asarray(op.max_rate_per_h),
            max_reaction_rate_per_h=jnp.asarray(react),
        )  # fmt: skip
        self.bound_names = bound_names
        self.kink_times_h = _input_kinks(plasma_input)

    @property
    def flow_limited(self) -> bool:
        return bool(self.kinetics.flow_flag > 0)

    @property
    def plasma_input(self) -> Callable:
        return self.kinetics.plasma_input

    def rates(self, params: TracerParams):
        """``(K1, k2, k3, k4)`` maps (1/h) at `params`; k3, k4 stacked over bound species."""
        return self.kinetics.rates(params)

    def stability_rate_per_h(self, params: TracerParams) -> float:
        """An upper bound of half the spectral radius of the linear system (1/h) for concrete
        `params`: explicit (Heun) steps need ``dt_h <= 1 / rate``."""
        s = {k: float(getattr(params, k)) for k in ("perfusion_scale", "efflux_scale",
             "trapping_scale", "release_scale", "diffusivity_scale")}  # fmt: skip
        ex = max(s["perfusion_scale"], 1.0) * max(s["efflux_scale"], 1.0)
        sr = max(s["trapping_scale"], s["release_scale"], 1.0)
        kin = self.kinetics
        return (s["diffusivity_scale"] * float(kin.max_diffusion_rate_per_h)
                + ex * sr * float(kin.max_reaction_rate_per_h))  # fmt: skip


class TracerState(eqx.Module):
    """The solved state: free (*shape), bound (n, *shape) and, when tracked, the cumulative
    influx from and efflux to plasma (*shape, concentration per tissue volume)."""

    free: Array
    bound: Array
    influx: Array | None = None
    efflux: Array | None = None


# The right-hand sides are module-level functions of (t, y, args) with args = (kinetics, rates,
# diffusivity scale): the same function objects on every call, so Diffrax's compiled solve is
# reused across models and parameter values (only array values change).
def _exchange(t, y: TracerState, args) -> TracerState:
    """Plasma exchange and reactions (the explicit part of the IMEX split)."""
    kin, (k1, k2, k3, k4), _ = args
    cp = kin.plasma_input(t)
    trap = k3 * y.free[None] - k4 * y.bound
    dfree = k1 * cp - k2 * y.free - trap.sum(0)
    if y.influx is None:
        return TracerState(dfree, trap)
    return TracerState(dfree, trap, k1 * cp, k2 * y.free)


def _diffusion(t, y: TracerState, args) -> TracerState:
    """Diffusion of the free tracer (the implicit part of the IMEX split)."""
    kin, _, d_scale = args
    zero = jax.tree.map(jnp.zeros_like, y)
    return eqx.tree_at(lambda s: s.free, zero, d_scale * kin.diffusion(y.free))


def _full(t, y: TracerState, args) -> TracerState:
    """The whole right-hand side."""
    kin, _, d_scale = args
    dy = _exchange(t, y, args)
    return eqx.tree_at(lambda s: s.free, dy, dy.free + d_scale * kin.diffusion(y.free))


def _decay(model: _Kinetics, ts):
    return jnp.exp(-model.decay_constant_per_h * ts)

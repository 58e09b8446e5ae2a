"""Simulating a [`TracerPDE`][twinjax.pde.TracerPDE]: activity maps at the scan times, and mean
time-activity curves (TACs) per tissue class.

`simulate_tracer` integrates the method-of-lines system from the injection (t = 0) with
[`solve_pde`][twinjax.pde.solve_pde]. The right-hand sides are fixed module-level functions and
the model's maps travel as arrays in `args`, so Diffrax's compiled solve serves every parameter
draw of a calibration and every model of the same grid shape, input type and number of bound
species (a change of method, tolerances or output-time count compiles anew). The kinks of the
plasma input (the bolus arrival of a Feng input, the samples of a sampled input) are passed to
the step controller.

Units: time h; concentrations in the unit of the plasma input.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ._solve import solve_pde
from ._tracer_core import (
    SampledInput,
    TracerParams,
    TracerPDE,
    TracerState,
    _decay,
    _diffusion,
    _exchange,
    _full,
    _Kinetics,
)

__all__ = ["TracerActivity", "simulate_tracer", "tacs"]


class TracerActivity(eqx.Module):
    """Per-cell activity concentration maps at the output times (leading axis T).

    **Fields:**
    - `times_h`: (T,) output times (h).
    - `plasma`: (T,) the plasma input ``C_p``.
    - `free`: (T, *shape) free tracer per tissue volume.
    - `bound`: (T, n, *shape) bound species per tissue volume (order of `bound_names`).
    - `total`: (T, *shape) PET concentration ``(1 - vb)(free + sum bound) + vb C_p``.
    - `influx`, `efflux`: (T, *shape) cumulative exchange with plasma per tissue volume
      (decay-corrected), or None unless `track_exchange` was set.

    Concentrations are decay-corrected unless the model has a `half_life_h`.
    """

    times_h: Float[Array, " T"]
    plasma: Float[Array, " T"]
    free: Float[Array, " T *shape"]
    bound: Float[Array, " T n *shape"]
    total: Float[Array, " T *shape"]
    influx: Float[Array, " T *shape"] | None = None
    efflux: Float[Array, " T *shape"] | None = None


def _simulate(model: _Kinetics, params: TracerParams, y0: TracerState, ts, kw: dict):
    method = kw["method"]
    args = (model, model.rates(params), params.diffusivity_scale)
    if method == "imex":
        ys = solve_pde(_exchange, y0, ts, t0_h=0.0, stiff=_diffusion, args=args, **kw)
    else:
        ys = solve_pde(_full, y0, ts, t0_h=0.0, args=args, **kw)
    tsj = jnp.asarray(ts)
    cp = jax.vmap(model.plasma_input)(tsj)
    tissue = ys.free + ys.bound.sum(axis=1)
    ndim = model.vb.ndim
    total = (1.0 - model.vb) * tissue + model.vb * cp.reshape((-1,) + (1,) * ndim)
    decay = _decay(model, tsj)
    dm = decay.reshape((-1,) + (1,) * ndim)
    return TracerActivity(
        tsj, cp * decay, ys.free * dm, ys.bound * dm[:, None], total * dm, ys.influx, ys.efflux
    )


def simulate_tracer(
    model: TracerPDE,
    params: TracerParams | None,
    times_h,
    *,
    method: str = "adaptive",
    initial_free=None,
    initial_bound=None,
    track_exchange: bool = False,
    dt_h: float | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    jump_times_h=(),
    max_steps: int = 100_000,
    throw: bool = True,
    adjoint: str = "reverse",
) -> TracerActivity:
    """Per-cell activity maps of a tracer model at `times_h` after the injection at t = 0.

    **Arguments:**
    - `model`: a [`TracerPDE`][twinjax.pde.TracerPDE] (e.g. from `fdg_model`, `fmiso_model`,
      `flod_model`, `flt_model`).
    - `params`: [`TracerParams`][twinjax.pde.TracerParams] (scales of the maps); None for all 1.
    - `times_h`: sorted output times (h), >= 0, 1-D, concrete.
    - `method`: ``"adaptive"`` (default, Tsit5: cheapest while diffusion is not stiff, as on
      PET-voxel grids: ``2 ndim D / h^2`` is a few per hour for mm cells), ``"imex"``
      (diffusion implicit, exchange and reactions explicit: for fine, e.g. histology-scale,
      grids), ``"implicit"`` or ``"explicit"`` (Heun, fixed step `dt_h`, checked against the
      stability bound when `params` are concrete; needs concrete `times_h`, so not inside
      `jit`). See [`solve_pde`][twinjax.pde.solve_pde].
    - `initial_free`, `initial_bound`: optional initial maps at t = 0 (a bolus placed in the
      tissue, e.g. an intratumoural injection); `initial_bound` shaped (n, *shape) or, for one
      bound species, the grid's shape. Default zero.
    - `track_exchange`: also return the cumulative influx/efflux maps.
    - `rtol`, `atol`: local error tolerances (atol in concentration units).
    - `jump_times_h`: further input discontinuities (h), beyond the input's own kinks.
    - `max_steps`, `throw`: step budget; on failure raise `SolverError` when `throw`.
    - `adjoint`: ``"reverse"`` (default; `jax.grad`) or ``"forward"`` (`jax.jvp`/`jacfwd`
      only: cheaper for the few scalar parameters of a calibration), see `solve_pde`.

    **Returns:** a [`TracerActivity`][twinjax.pde.TracerActivity].

    **Raises:** `InputError` for bad times, initial maps or an unstable explicit step;
    `SolverError` when the solve fails.
    """
    if not isinstance(model, TracerPDE):
        raise InputError(f"model is a {type(model).__name__}; allowed: a twinjax.pde.TracerPDE")
    params = TracerParams() if params is None else params
    if not isinstance(params, TracerParams):
        raise InputError(f"params is a {type(params).__name__}; allowed: TracerParams or None")
    ts = np.asarray(times_h, dtype=float)
    if ts.ndim != 1 or ts.size < 1 or not np.all(np.isfinite(ts)):
        raise InputError(f"times_h = {ts}; allowed: a 1-D array of >= 1 finite times (h)")
    if ts[0] < 0 or np.any(np.diff(ts) < 0):
        raise InputError(f"times_h = {ts}; allowed: sorted times >= 0 h (injection at 0)")
    inp = model.plasma_input
    if isinstance(inp, SampledInput) and ts[-1] > float(inp.times_h[-1]):
        raise InputError(
            f"times_h reaches {ts[-1]} h, after the last plasma sample at "
            f"{float(inp.times_h[-1])} h; allowed: times within the sampled input"
        )
    g = model.grid
    n = len(model.bound_names)
    free0 = jnp.zeros(g.shape) if initial_free is None else jnp.asarray(
        g.check_field("initial_free", initial_free, nonnegative=True))  # fmt: skip
    if initial_bound is None:
        bound0 = jnp.zeros((n,) + g.shape)
    else:
        b = np.asarray(initial_bound, dtype=float)
        b = b[None] if b.shape == g.shape else b
        if b.shape != (n,) + g.shape:
            raise InputError(
                f"initial_bound has shape {np.shape(initial_bound)}; allowed: {(n,) + g.shape}"
                + (f" or {g.shape}" if n == 1 else "")
            )
        bound0 = jnp.asarray(np.stack([g.check_field(f"initial_bound[{j}]", b[j],
                                                     nonnegative=True) for j in range(n)]))  # fmt: skip
    zero = jnp.zeros(g.shape)
    y0 = TracerState(free0, bound0, *((zero, zero) if track_exchange else (None, None)))
    if method == "explicit" and dt_h is not None:
        try:
            rate = model.stability_rate_per_h(params)
        except (jax.errors.ConcretizationTypeError, TypeError):
            rate = None  # traced parameters: the caller owns the step size
        if rate is not None and rate > 0 and dt_h * rate > 1.0 + 1e-12:
            raise InputError(
                f"dt_h = {dt_h} h exceeds the explicit stability limit {1.0 / rate:.6g} h of "
                f"this model (diffusion, exchange and trapping rates); allowed: dt_h <= "
                f"{1.0 / rate:.6g} h, or method 'adaptive' / 'imex'"
            )
    extra = tuple(float(x) for x in np.asarray(jump_times_h, dtype=float).reshape(-1))
    jumps = tuple(sorted(set(model.kink_times_h + extra)))
    jumps = tuple(x for x in jumps if 0.0 < x < ts[-1])
    kw = dict(method=method, dt_h=dt_h, rtol=rtol, atol=atol, jump_times_h=jumps,
              max_steps=max_steps, throw=throw)  # fmt: skip
    if adjoint != "reverse":  # the default is solve_pde's own
        kw["adjoint"] = adjoint
    return _simulate(model.kinetics, params, y0, ts, kw)


def tacs(activity, labels) -> dict[int, Float[Array, " T"]]:
    """Mean time-activity curve of every tissue class.

    **Arguments:**
    - `activity`: (T, *shape) maps (e.g. `TracerActivity.total`), or a `TracerActivity` (its
      `total` is used).
    - `labels`: integer label map of the grid's shape (*shape); every distinct value is a class.

    **Returns:** ``{label: (T,) mean over the class's cells}`` (cells have equal volumes).
    """
    maps = activity.total if isinstance(activity, TracerActivity) else jnp.asarray(activity)
    lab = np.asarray(labels)
    if maps.ndim < 2 or tuple(maps.shape[1:]) != lab.shape:
        raise InputError(
            f"labels has shape {lab.shape}; allowed: the maps' cell shape {tuple(maps.shape[1:])}"
        )
    if not np.issubdtype(lab.dtype, np.integer):
        if not (np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab))):
            raise InputError(f"labels has dtype {lab.dtype}; allowed: integer class labels")
        lab = lab.astype(np.int64)
    flat = maps.reshape(maps.shape[0], -1)
    out = {}
    for v in np.unique(lab):
        w = jnp.asarray((lab.ravel() == v).astype(float))
        out[int(v)] = flat @ w / float(w.sum())
    return out

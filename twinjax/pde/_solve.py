"""Method of lines for reaction-diffusion systems on grids, and steady states.

`solve_pde` integrates ``dy/dt = f(t, y)`` (y any PyTree of fields) with Diffrax and returns the
state at the requested times. Methods:

- ``"explicit"``: Heun's method (second order, strong-stability preserving) with a fixed step
  `dt_h`. Cheapest per step; the step must satisfy the diffusion stability bound ``dt <= 1 /
  max_rate`` (checked before the solve when `stability_rate_per_h` is given, e.g.
  `Diffusion.max_rate_per_h`).
- ``"adaptive"``: Tsitouras 5(4) with PID step-size control, for mild problems.
- ``"implicit"``: Kvaerno 5(4), an L-stable ESDIRK; its Newton iterations solve with GMRES on the
  Jacobian-vector product (matrix-free, `lineax`), so fine grids never build a matrix. For stiff
  diffusion.
- ``"imex"``: Kennedy-Carpenter 4(3) additive Runge-Kutta: `f` explicit (reactions, exchange)
  and `stiff` implicit (diffusion), again matrix-free.

Administration times and other discontinuities of the inputs go in `jump_times_h`: the step
controller restarts there (the fixed-step method steps onto them).

`steady_state` finds ``f(y) = 0`` by Newton's method with GMRES (Optimistix/Lineax), e.g. the
oxygen field of a vessel map.

Units: time h.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx

from .._errors import InputError, SolverError

__all__ = ["solve_pde", "steady_state"]

_METHODS = ("explicit", "adaptive", "implicit", "imex")


def _gmres(rtol: float, atol: float) -> lx.GMRES:
    return lx.GMRES(rtol=rtol, atol=atol, restart=50, stagnation_iters=50, max_steps=20_000)


def solve_pde(
    f: Callable,
    y0,
    times_h,
    *,
    method: str = "implicit",
    stiff: Callable | None = None,
    args=None,
    t0_h: float | None = None,
    dt_h: float | None = None,
    stability_rate_per_h: float | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    jump_times_h=(),
    max_steps: int = 100_000,
    throw: bool = True,
    adjoint: str = "reverse",
):
    """Integrate ``dy/dt = f(t, y, args) [+ stiff(t, y, args)]`` from `t0_h` (default the first
    of `times_h`) and return y at `times_h` (leading axis T) (module docs).

    **Arguments:**
    - `f`: the right-hand side (the explicit part for ``"imex"``); y is any PyTree of arrays.
    - `y0`: the state at `t0_h`.
    - `times_h`: sorted output times (h), >= `t0_h`.
    - `method`: ``"explicit"`` (fixed step `dt_h`), ``"adaptive"``, ``"implicit"`` or
      ``"imex"`` (needs `stiff`, the part integrated implicitly).
    - `stability_rate_per_h`: the largest diffusion rate of the problem
      (`Diffusion.max_rate_per_h`); with ``"explicit"``, a `dt_h` above ``1 / rate`` is refused.
    - `rtol`, `atol`: local error tolerances (adaptive methods; also Newton/GMRES tolerances).
    - `jump_times_h`: times where the inputs jump (administrations).
    - `max_steps`: step budget; exceeding it raises `SolverError` (outside `jit`) when `throw`.
    - `adjoint`: how the solve is differentiated: ``"reverse"`` (default; Diffrax's recursive
      checkpointing, memory O(log steps), for many parameters or whole maps) or ``"forward"``
      (`diffrax.ForwardMode`: `jax.jvp`/`jacfwd` only, cheapest for a handful of scalar
      parameters, e.g. NUTS over a tissue twin's rates with ``forward_mode_differentiation``).
    """
    adjoints = {"reverse": dfx.RecursiveCheckpointAdjoint(), "forward": dfx.ForwardMode()}
    if adjoint not in adjoints:
        raise InputError(f"adjoint = {adjoint!r}; allowed: 'reverse' or 'forward'")
    if method not in _METHODS:
        raise InputError(f"method = {method!r}; allowed: {', '.join(_METHODS)}")
    # Concrete times (numpy, lists) stay concrete under an outer `jit`: the explicit method's
    # step grid is built from them. Traced times are accepted by the adaptive methods.
    try:
        tsn = np.asarray(times_h, dtype=float)
    except jax.errors.TracerArrayConversionError:
        tsn = None
    ts = jnp.asarray(times_h, dtype=float)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise InputError(f"times_h has shape {ts.shape}; allowed: a 1-D array of >= 1 times (h)")
    if tsn is not None and not (np.all(np.isfinite(tsn)) and np.all(np.diff(tsn) >= 0)):
        raise InputError(f"times_h = {tsn}; allowed: finite and sorted (h)")
    t0 = ts[0] if t0_h is None else jnp.asarray(t0_h, dtype=float)
    if tsn is not None and t0_h is not None and tsn[0] < t0_h:
        raise InputError(f"times_h starts at {tsn[0]} h, before t0_h = {t0_h} h; allowed: >= t0_h")
    t1 = ts[-1]
    jumps = jnp.asarray(jump_times_h, dtype=float).reshape(-1)
    if method == "imex" and stiff is None:
        raise InputError("method = 'imex' needs stiff (the part integrated implicitly)")
    if method == "explicit":
        if dt_h is None or not (np.isfinite(dt_h) and dt_h > 0):
            raise InputError(f"dt_h = {dt_h!r}; allowed: a step > 0 (h) for method 'explicit'")
        if stability_rate_per_h is not None and dt_h * stability_rate_per_h > 1.0 + 1e-12:
            raise InputError(
                f"dt_h = {dt_h} h exceeds the explicit stability limit 1 / max_rate = "
                f"{1.0 / stability_rate_per_h:.6g} h of this grid and diffusivity; allowed: "
                f"dt_h <= {1.0 / stability_rate_per_h:.6g} h, or method 'implicit' / 'imex'"
            )
        if tsn is None:
            raise InputError("method 'explicit' needs concrete times_h (the step grid is static)")
        t_start = float(tsn[0] if t0_h is None else t0_h)
        grid = np.arange(t_start, float(tsn[-1]), dt_h)
        extra = np.asarray(jump_times_h, dtype=float).reshape(-1)
        steps = np.unique(np.concatenate([grid, tsn, extra[(extra > t_start) & (extra < tsn[-1])],
                                          [tsn[-1]]]))  # fmt: skip
        controller = dfx.StepTo(jnp.asarray(steps))
        solver, terms, dt0 = dfx.Heun(), dfx.ODETerm(f), None
    else:
        pid = dict(rtol=rtol, atol=atol, jump_ts=jumps if jumps.size else None)
        controller = dfx.PIDController(**pid)
        dt0 = None
        if method == "adaptive":
            solver, terms = dfx.Tsit5(), dfx.ODETerm(f)
        else:
            # Newton with GMRES on Jacobian-vector products: no matrix is ever formed.
            newton = optx.Newton(rtol=rtol, atol=atol, linear_solver=_gmres(rtol * 1e-2, atol))
            if method == "implicit":
                solver, terms = dfx.Kvaerno5(root_finder=newton), dfx.ODETerm(f)
            else:
                solver = dfx.KenCarp4(root_finder=newton)
                terms = dfx.MultiTerm(dfx.ODETerm(f), dfx.ODETerm(stiff))
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        adjoint=adjoints[adjoint],
    )
    if throw:
        msg = f"the PDE solve ({method}) failed (max_steps={max_steps}, rtol={rtol}, atol={atol})"
        return _checked(sol.ys, sol.result != dfx.RESULTS.successful, msg)
    return sol.ys


def steady_state(
    f: Callable,
    y0,
    *,
    args=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 100,
    throw: bool = True,
):
    """The root of ``f(y, args) = 0`` near `y0` by Newton's method with matrix-free GMRES
    (module docs): an inexact Newton method, each linear solve to a relative residual of
    1e-8. Scale the residual's rows to similar magnitudes (e.g. divide diffusion rows by
    `Diffusion.max_rate_per_h`): GMRES is unpreconditioned. Raises `SolverError` (outside
    `jit`) if Newton does not converge within `max_steps` iterations and `throw`."""
    solver = optx.Newton(rtol=rtol, atol=atol, linear_solver=_gmres(1e-8, atol * 1e-2))
    sol = optx.root_find(f, solver, y0, args, max_steps=max_steps, throw=False)
    if throw:
        msg = f"the steady-state Newton solve did not converge in {max_steps} steps"
        return _checked(sol.value, sol.result != optx.RESULTS.successful, msg)
    return sol.value


def _checked(value, failed, msg: str):
    """`value`, or `SolverError(msg)` where `failed` (raised here outside `jit`; inside it,
    Equinox's runtime error carries the same message)."""
    try:
        return eqx.error_if(value, failed, msg)
    except (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError) as err:
        if not isinstance(err, eqx.EquinoxRuntimeError) and "EquinoxRuntimeError" not in str(err):
            raise
        raise SolverError(msg) from None

"""BED straight from a compartmental/PBPK model: the repair integrals ride along with the model's
ODE, so G is exact for the model's own dose-rate curve, over any schedule (cycles with incomplete
repair between them included).

For every region r with self-dose S-value ``S_r`` (Gy/(MBq h)) the dose rate is ``R_r(t) = S_r
A_r(t) + sum_s S_rs A_s(t)``, with ``A_r`` the region's activity and ``S_rs`` optional cross-dose
S-values from other regions. Three states per region are appended to the model's
``[hot, cold, cumulated]`` state and integrated by the same solver, restarted at every
administration as `simulate` does: ``D' = R``, ``q' = R - mu q`` (dose whose damage is not yet
repaired) and ``J' = R q``, so that ``G D^2 = 2 J``. The solve runs `tail_half_lives` physical
half-lives past the last event; after that, the region's activity is closed analytically as the
model's linear system frozen at its final occupancy for D (as `simulate` closes the TIA), and as
one exponential of the same system's current clearance rate for J (its remaining contribution is
of order the square of the remaining activity).

`response_from_model` appends the tumour-response states of `_response` the same way, driven
by the lesion's dose rate: lesion volume and marker without sampling the dose-rate curve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError, SolverError
from ..models._simulate import _adjoint, _check_inputs, _ode_pieces
from ..models.compartmental import CompartmentalModel
from ..schedule import Schedule
from ._lq import LN2, _check_concrete
from ._response import TumourResponse, _kinetics, _trajectory
from ._tissues import Tissue

__all__ = ["bed_from_model", "response_from_model"]


def bed_from_model(
    model: CompartmentalModel,
    params: Mapping[str, Array | float],
    schedule: Schedule,
    s_values_Gy_per_MBqh: Mapping[str, float | Array],
    tissues: Mapping[str, Tissue | tuple[float, float]],
    *,
    rbe=1.0,
    groups: Mapping[str, Sequence[str]] | None = None,
    cross_s_values: Mapping[str, Mapping[str, float | Array]] | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    solver=None,
    adjoint="forward",
    max_steps: int = 16384,
    tail_half_lives: float = 10.0,
) -> dict[str, dict[str, Float[Array, ""]]]:
    """Absorbed dose, protraction factor and BED of regions of a model under a schedule.

    **Arguments:**
    - `model`, `params`, `schedule`: as [`twinjax.simulate`][].
    - `s_values_Gy_per_MBqh`: region (an organ/group of the model) -> self-dose S-value (e.g.
      ``sphere_s_value(nuclide, mass_kg)``).
    - `tissues`: region -> a [`Tissue`][] or ``(alpha_beta_Gy, repair_half_time_h)``.
    - `rbe`: applied to the physical dose (e.g. 5 for alpha emitters).
    - `groups`: region -> model groups whose activities sum to it (e.g. a template's
      ``roi(region)``); by default each region is the model group of its name.
    - `cross_s_values`: ``{target: {source: S (Gy/(MBq h))}}`` between regions (e.g.
      `twinjax.dosimetry.photon_cross_s_value` of their distance): the target's dose rate
      becomes ``S_t A_t + sum_s S_ts A_s``, so the cross-dose's own time course enters G.
    - `rtol`, `atol`, `solver`, `adjoint`, `max_steps`: of the ODE solve (as `simulate`).
    - `tail_half_lives`: physical half-lives integrated past the last administration.

    **Returns:** region -> ``{"dose_Gy", "g", "bed_Gy", "eqd2_Gy", "tia_MBqh"}`` (the dose
    includes the cross-dose; the TIA is the region's own). Differentiable in the parameters,
    activities and S-values (forward mode by default, as `simulate`).
    """
    params = _check_inputs(model, params, schedule)
    regions = list(s_values_Gy_per_MBqh)
    if not regions:
        raise InputError("s_values_Gy_per_MBqh is empty; allowed: region -> S (Gy/(MBq h))")
    missing = [r for r in regions if r not in tissues]
    if missing:
        raise InputError(
            f"tissues has no entry for regions {missing}; allowed: a Tissue or (alpha_beta_Gy, "
            "repair_half_time_h) per region"
        )
    c = _membership(model, regions, groups)
    ab, mu = [], []
    for r in regions:
        t = tissues[r]
        a, trep = (t.alpha_beta_Gy, t.repair_half_time_h) if isinstance(t, Tissue) else t
        _check_concrete(f"tissues[{r!r}] alpha_beta_Gy", a, "> 0 (Gy)", lambda v: np.all(v > 0))
        _check_concrete(f"tissues[{r!r}] repair_half_time_h", trep, "> 0 (h)",
                        lambda v: np.all(v > 0))  # fmt: skip
        ab.append(jnp.asarray(a, dtype=float))
        mu.append(LN2 / jnp.asarray(trep, dtype=float))
    s = jnp.stack([jnp.asarray(s_values_Gy_per_MBqh[r], dtype=float) for r in regions])
    _check_concrete("s_values_Gy_per_MBqh", s, "finite and > 0 (Gy/(MBq h))",
                    lambda v: np.all(np.isfinite(v) & (v > 0)))  # fmt: skip
    _check_concrete("rbe", rbe, "> 0", lambda v: np.all(v > 0))
    ab, mu = jnp.stack(ab), jnp.stack(mu)
    n, k = model.n_compartments, len(regions)
    # Dose rates R = MBq/nmol * S_matrix @ C @ hot: self-dose on the diagonal, cross-dose off it.
    s_matrix = jnp.diag(s)
    for target, sources in (cross_s_values or {}).items():
        for source, value in sources.items():
            if target not in regions or source not in regions or source == target:
                raise InputError(
                    f"cross_s_values[{target!r}][{source!r}]: allowed: two different regions of "
                    f"s_values_Gy_per_MBqh, {regions}"
                )
            _check_concrete(f"cross_s_values[{target!r}][{source!r}]", value,
                            "finite and >= 0 (Gy/(MBq h))",
                            lambda v: np.all(np.isfinite(v) & (v >= 0)))  # fmt: skip
            i, j = regions.index(target), regions.index(source)
            s_matrix = s_matrix.at[i, j].set(jnp.asarray(value, dtype=float))
    w = schedule.mbq_per_nmol * (s_matrix @ c)  # (k, n): Gy/h per nmol in each compartment

    def f_extra(hot, z):
        q = z[k : 2 * k]
        r = w @ hot
        return jnp.concatenate([r, r - mu * q, r * q])

    lam = schedule.decay_constant_per_h
    times = jnp.asarray([schedule.time_h[-1]])
    try:
        _, y, _, a_end = _ode_pieces(
            model, params, schedule, times, lam, rtol, atol, solver, _adjoint(adjoint),
            max_steps, tail_half_lives, True, extra=(3 * k, f_extra),
        )  # fmt: skip
    except eqx.EquinoxRuntimeError as err:  # raised when called outside jit
        raise _solver_error(model, "repair integrals", err, max_steps, rtol, atol) from None
    hot = y[:n]
    dose, q, j = y[3 * n : 3 * n + k], y[3 * n + k : 3 * n + 2 * k], y[3 * n + 2 * k :]
    m = a_end - lam * jnp.eye(n)
    r_end = w @ hot
    # D tail: the frozen linear system, exactly; J tail: one exponential at its clearance rate.
    tail = -jnp.linalg.solve(m, hot)
    dose = dose + w @ tail
    tia = schedule.mbq_per_nmol * (c @ (y[2 * n : 3 * n] + tail))
    safe = jnp.where(r_end > 0, r_end, 1.0)
    k_eff = jnp.where(r_end > 0, -(w @ (m @ hot)) / safe, lam)
    k_eff = jnp.maximum(k_eff, lam)
    j = j + r_end * q / (k_eff + mu) + r_end**2 / (2.0 * k_eff * (k_eff + mu))
    gd2 = 2.0 * j
    rbe = jnp.asarray(rbe, dtype=float)
    bed = rbe * dose + rbe**2 * gd2 / ab
    out = {}
    for i, r in enumerate(regions):
        out[r] = {
            "dose_Gy": dose[i],
            "g": gd2[i] / dose[i] ** 2,
            "bed_Gy": bed[i],
            "eqd2_Gy": bed[i] / (1.0 + 2.0 / ab[i]),
            "tia_MBqh": tia[i],
        }
    return out


def _membership(model, regions, groups) -> Array:
    """Region membership as a ``(regions, compartments)`` 0/1 matrix C, so that a region's
    activity is ``MBq/nmol * (C @ hot)``."""
    c = np.zeros((len(regions), model.n_compartments))
    for i, r in enumerate(regions):
        try:
            members = (groups or {}).get(r, (r,))
            c[i, np.concatenate([np.asarray(model.group(g)) for g in members])] = 1.0
        except Exception as err:
            raise InputError(f"region {r!r}: {err}") from None
    return jnp.asarray(c)


def _solver_error(model, what, err, max_steps, rtol, atol) -> SolverError:
    return SolverError(
        f"the ODE solve of model {model.name!r} with {what} failed: "
        f"{str(err).splitlines()[0]} (max_steps={max_steps}, rtol={rtol}, atol={atol})"
    )


def response_from_model(
    model: CompartmentalModel,
    params: Mapping[str, Array | float],
    schedule: Schedule,
    s_value_Gy_per_MBqh: float | Array,
    times_h,
    *,
    tissue: Tissue,
    volume_mL,
    doubling_time_h,
    growth: str = "gompertz",
    carrying_capacity_mL=None,
    clearance_half_time_h=72.0,
    marker_half_life_h=60.0,
    region: str | Sequence[str] = "tumour",
    rbe=1.0,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    solver=None,
    adjoint="forward",
    max_steps: int = 16384,
) -> TumourResponse:
    """Lesion volume, viable fraction and marker of a model's lesion under a schedule: the
    response ODE of [`tumour_response`][] (module docs of `_response`) rides along with the
    model's own ODE, driven by the lesion's dose rate ``rbe * S * A(t)``; no dose-rate curve is
    sampled or fitted.

    **Arguments:**
    - `model`, `params`, `schedule`: as [`twinjax.simulate`][]; the lesion is at baseline at the
      first administration (output times before it return the baseline).
    - `s_value_Gy_per_MBqh`: the lesion's self-dose S-value (Gy/(MBq h)).
    - `times_h`: sorted output times (h, clock of the schedule).
    - `tissue`: the tumour's [`Tissue`][] (its `alpha_per_Gy` must be known).
    - `volume_mL`, `doubling_time_h`, `growth`, `carrying_capacity_mL`,
      `clearance_half_time_h`, `marker_half_life_h`: as [`tumour_response`][].
    - `region`: the model group(s) whose activities sum to the lesion's (e.g. a template's
      ``roi("tumour")``).
    - `rbe`: applied to the dose rate (e.g. 5 for alpha emitters).
    - `rtol`, `atol`, `solver`, `adjoint`, `max_steps`: of the ODE solve (as `simulate`).

    **Returns:** a [`TumourResponse`][]; differentiable in the parameters and activities.
    """
    params = _check_inputs(model, params, schedule)
    if not isinstance(tissue, Tissue) or tissue.alpha_per_Gy is None:
        raise InputError(
            f"tissue = {tissue!r}; allowed: a Tissue with alpha_per_Gy (e.g. "
            "twinjax.radiobiology.tissue('prostate_cancer'))"
        )
    t_out = jnp.asarray(times_h, dtype=float)
    _check_concrete("times_h", t_out, "finite and sorted (h), at least one time",
                    lambda x: x.size > 0 and np.all(np.isfinite(x)) and np.all(np.diff(x) >= 0))  # fmt: skip
    _check_concrete("s_value_Gy_per_MBqh", s_value_Gy_per_MBqh, "finite and > 0 (Gy/(MBq h))",
                    lambda v: np.all(np.isfinite(v) & (v > 0)))  # fmt: skip
    _check_concrete("rbe", rbe, "> 0", lambda v: np.all(v > 0))
    kinetics = _kinetics(
        volume_mL, tissue.alpha_per_Gy, tissue.alpha_beta_Gy, tissue.repair_half_time_h,
        doubling_time_h, growth, carrying_capacity_mL, clearance_half_time_h, marker_half_life_h,
    )  # fmt: skip
    members = (region,) if isinstance(region, str) else tuple(region)
    c = _membership(model, ["lesion"], {"lesion": members})[0]
    per_nmol = (
        jnp.asarray(rbe, dtype=float)
        * jnp.asarray(s_value_Gy_per_MBqh, dtype=float)
        * schedule.mbq_per_nmol
    )

    def f_extra(hot, z):
        return kinetics(per_nmol * (c @ hot), z)

    lam = schedule.decay_constant_per_h
    n = model.n_compartments
    try:
        states, *_ = _ode_pieces(
            model, params, schedule, t_out, lam, rtol, atol, solver, _adjoint(adjoint),
            max_steps, 0.0, True, extra=(4, f_extra),
        )  # fmt: skip
    except eqx.EquinoxRuntimeError as err:  # raised when called outside jit
        raise _solver_error(model, "the tumour response", err, max_steps, rtol, atol) from None
    return _trajectory(t_out, states[:, 3 * n :], volume_mL)

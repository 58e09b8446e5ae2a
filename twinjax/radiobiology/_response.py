"""Tumour response to a continuously delivered dose: lesion volume and a PSA-like burden marker
over time, time to progression and progression-free survival.

Viable clonogens N grow (exponentially, or Gompertz towards a carrying capacity) and are killed
at the instantaneous LQ rate of continuous irradiation: the LQ effect ``E(t) = alpha D(t) + beta
G D^2`` (see `_lq`) grows at ``dE/dt = alpha R + 2 beta R q`` with q the unrepaired dose
(``q' = R - mu q``), so without growth ``N(inf) / N0 = exp(-alpha BED)`` exactly. Killed cells
are cleared with a half-time (lethally hit cells linger: the lesion shrinks after the dose).
The lesion volume counts viable and dying cells at the baseline cell volume, and the marker
``M' = p V_viable - c M`` is secreted by viable cells (PSA-like, in units of its baseline value).

    dlnN/dt = g(N) - alpha R - 2 beta R q        g = rho (exponential) or rho ln(K / N) (Gompertz)
    dN_dying/dt = (alpha R + 2 beta R q) N - k_clear N_dying
    V = v_cell (N + N_dying),   M' = c (N / N0) - c M  (M = 1 at baseline, steady state)

Progression: the first time after the volume's nadir at which it regrows past its baseline
(RECIST-like "regrowth past baseline"); progression-free survival at t is the fraction of
posterior draws not yet progressed.

Units: time h, dose rate Gy/h, alpha 1/Gy, beta 1/Gy^2, volume mL, rates 1/h.
"""

from __future__ import annotations

import dataclasses

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ._lq import LN2, DoseRate, _as_curves, _check_concrete

__all__ = [
    "TumourResponse",
    "progression_free_survival",
    "time_to_progression",
    "tumour_response",
]


@dataclasses.dataclass(frozen=True)
class TumourResponse:
    """Lesion trajectory at `times_h`: `volume_mL` (viable + dying cells), `viable_fraction`
    (N / N0), `marker` (burden marker relative to baseline). Arrays ``(T,)`` (or batched)."""

    times_h: Float[Array, " T"]
    volume_mL: Float[Array, " T"]
    viable_fraction: Float[Array, " T"]
    marker: Float[Array, " T"]


def tumour_response(
    curve: DoseRate | list[DoseRate],
    times_h,
    *,
    volume_mL,
    alpha_per_Gy,
    alpha_beta_Gy,
    repair_half_time_h,
    doubling_time_h,
    growth: str = "gompertz",
    carrying_capacity_mL=None,
    clearance_half_time_h=72.0,
    marker_half_life_h=60.0,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 16384,
) -> TumourResponse:
    """Lesion volume, viable fraction and marker under the dose-rate `curve` (module docs).

    **Arguments:**
    - `curve`: a [`DoseRate`][] (Gy/h) or a list of them (cycles), e.g. the lesion's
      ``ExponentialFit.dose_rate(S)`` or ``ExponentialDoseRate`` of a forecast.
    - `times_h`: sorted output times (h, clock of the curve; the lesion is at baseline at 0).
    - `volume_mL`: baseline lesion volume (mL).
    - `alpha_per_Gy`, `alpha_beta_Gy`, `repair_half_time_h`: LQ parameters of the tumour.
    - `doubling_time_h`: untreated volume doubling time at baseline (h).
    - `growth`: ``"gompertz"`` (needs `carrying_capacity_mL` > `volume_mL`) or
      ``"exponential"``.
    - `clearance_half_time_h`: half-time of the removal of lethally hit cells (h).
    - `marker_half_life_h`: serum half-life of the burden marker (PSA about 2-3 days).
    - `rtol`, `atol`, `max_steps`: Diffrax tolerances.

    **Returns:** a [`TumourResponse`][]. Differentiable in every parameter and in the curve.
    """
    curves = _as_curves(curve)
    t_out = jnp.asarray(times_h, dtype=float)
    _check_concrete("times_h", t_out, "finite, >= 0 and sorted (h)",
                    lambda x: np.all(np.isfinite(x) & (x >= 0)) and np.all(np.diff(x) >= 0))  # fmt: skip
    kinetics = _kinetics(
        volume_mL, alpha_per_Gy, alpha_beta_Gy, repair_half_time_h, doubling_time_h, growth,
        carrying_capacity_mL, clearance_half_time_h, marker_half_life_h,
    )  # fmt: skip

    def rhs(t, y, at):
        return kinetics(sum(c.rate(t, at) for c in curves), y)

    breaks = jnp.sort(jnp.concatenate([c.breaks_h for c in curves]))
    edges = jnp.concatenate([jnp.zeros(1), breaks, t_out[-1:]])
    edges = jnp.sort(jnp.clip(edges, 0.0, t_out[-1]))
    y = jnp.zeros(4)
    out = jnp.zeros((t_out.shape[0], 4))
    term = dfx.ODETerm(rhs)
    for i in range(edges.shape[0] - 1):
        t0, t1 = edges[i], jnp.maximum(edges[i + 1], edges[i])
        ts = jnp.clip(t_out, t0, t1)
        sol = dfx.diffeqsolve(
            term,
            dfx.Tsit5(),
            t0,
            t1,
            jnp.maximum((t1 - t0) * 1e-3, 1e-9),
            y,
            0.5 * (t0 + t1),
            saveat=dfx.SaveAt(ts=ts),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
            throw=False,
        )
        failed = (t1 > t0) & (sol.result != dfx.RESULTS.successful)
        ys = eqx.error_if(
            sol.ys, failed, f"the tumour-response ODE did not finish within max_steps = {max_steps}"
        )
        inside = (t_out >= t0) & (t_out <= t1) & (t1 > t0)
        out = jnp.where(inside[:, None], ys, out)
        y = jnp.where(t1 > t0, ys[-1], y)
    # Output times at 0 (before any piece) keep the baseline.
    out = jnp.where((t_out <= 0.0)[:, None], 0.0, out)
    return _trajectory(t_out, out, volume_mL)


def _trajectory(times_h, states, volume_mL) -> TumourResponse:
    """The [`TumourResponse`][] of response states ``(..., T, 4)`` (see `_kinetics`)."""
    viable = jnp.exp(states[..., 0])
    return TumourResponse(
        times_h=times_h,
        volume_mL=jnp.asarray(volume_mL, dtype=float) * (viable + states[..., 1]),
        viable_fraction=viable,
        marker=1.0 + states[..., 3],
    )


def _kinetics(
    volume_mL,
    alpha_per_Gy,
    alpha_beta_Gy,
    repair_half_time_h,
    doubling_time_h,
    growth,
    carrying_capacity_mL,
    clearance_half_time_h,
    marker_half_life_h,
):
    """Validate the response parameters and return ``f(R, y) -> dy/dt``, the response ODE
    driven by the dose rate R (Gy/h). State ``y = [ln(N/N0), N_dying/N0, q (Gy), M - 1]``, all
    zero at baseline, so it can ride along with a model's ODE (`response_from_model`)."""
    for field, v in (
        ("volume_mL", volume_mL),
        ("alpha_per_Gy", alpha_per_Gy),
        ("alpha_beta_Gy", alpha_beta_Gy),
        ("repair_half_time_h", repair_half_time_h),
        ("doubling_time_h", doubling_time_h),
        ("clearance_half_time_h", clearance_half_time_h),
        ("marker_half_life_h", marker_half_life_h),
    ):
        _check_concrete(field, v, "finite and > 0", lambda x: np.all(np.isfinite(x) & (x > 0)))
    if growth not in ("gompertz", "exponential"):
        raise InputError(f"growth = {growth!r}; allowed: 'gompertz' or 'exponential'")
    if growth == "gompertz":
        if carrying_capacity_mL is None:
            raise InputError("growth = 'gompertz' needs carrying_capacity_mL (mL)")
        _check_concrete(
            "carrying_capacity_mL",
            (carrying_capacity_mL, volume_mL),
            f"> volume_mL = {volume_mL!r}",
            lambda x: np.all(x[0] > x[1]),
        )
    alpha = jnp.asarray(alpha_per_Gy, dtype=float)
    beta = alpha / jnp.asarray(alpha_beta_Gy, dtype=float)
    mu = LN2 / jnp.asarray(repair_half_time_h, dtype=float)
    v0 = jnp.asarray(volume_mL, dtype=float)
    k_clear = LN2 / jnp.asarray(clearance_half_time_h, dtype=float)
    c_marker = LN2 / jnp.asarray(marker_half_life_h, dtype=float)
    td = jnp.asarray(doubling_time_h, dtype=float)
    if growth == "gompertz":
        # rho such that the initial volume doubling time is `doubling_time_h`:
        # dlnV/dt at V0 = rho ln(K/V0) = ln 2 / Td.
        log_k_rel = jnp.log(jnp.asarray(carrying_capacity_mL, dtype=float) / v0)
        rho = LN2 / td / log_k_rel

        def rate(log_n):
            return rho * (log_k_rel - log_n)
    else:
        rho = LN2 / td

        def rate(log_n):
            return rho + 0.0 * log_n

    def f(r, y):
        kill = alpha * r + 2.0 * beta * r * y[2]
        n = jnp.exp(y[0])
        return jnp.stack(
            [
                rate(y[0]) - kill,
                kill * n - k_clear * y[1],
                r - mu * y[2],
                c_marker * (n - 1.0) - c_marker * y[3],
            ]
        )

    return f


def time_to_progression(times_h, volume_mL) -> Float[Array, ...]:
    """First time (h) after the nadir at which the volume regrows past its baseline (the value
    at the first time); ``inf`` if it does not within `times_h`. Batched over leading axes."""
    t = jnp.asarray(times_h, dtype=float)
    v = jnp.asarray(volume_mL, dtype=float)
    nadir = jnp.argmin(v, axis=-1)
    after = jnp.arange(t.shape[0]) > nadir[..., None]
    progressed = after & (v > v[..., :1])
    first = jnp.argmax(progressed, axis=-1)
    return jnp.where(jnp.any(progressed, axis=-1), t[first], jnp.inf)


def progression_free_survival(ttp_h, times_h) -> np.ndarray:
    """Fraction of draws (first axis of `ttp_h`) not progressed at each of `times_h`."""
    ttp = np.asarray(ttp_h, dtype=float).reshape(-1)
    if ttp.size == 0 or np.any(np.isnan(ttp)):
        raise InputError("ttp_h must be a non-empty array of times (h) or inf, without NaN")
    t = np.asarray(times_h, dtype=float)
    return (ttp[None, :] > t[:, None]).mean(axis=1)

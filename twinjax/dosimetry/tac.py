"""Time-integrated activity from a measured time-activity curve (TAC) the conventional way, so that
model-based (twin) dosimetry can be compared with what clinics do (EANM/MIRD practice, e.g.
Sjögreen Gleisner et al. 2022, Eur J Nucl Med Mol Imaging 49:1778):

- `tia_trapezoid`: trapezoids between the scans, a chosen shape before the first scan, and an
  exponential tail after the last one (physical decay, or the effective rate of the last scans).
- `fit_exponential`: sums of exponentials fitted to the scans by Levenberg-Marquardt on the
  logarithm of the activity (multiplicative errors): ``"mono"`` ``A e^{-k t}``, ``"bi"``
  ``a1 e^{-k1 t} + a2 e^{-k2 t}``, ``"uptake"`` ``A (e^{-k1 t} - e^{-k2 t})``, ``"tri"``
  ``a1 e^{-k1 t} + a2 e^{-k2 t} - (a1 + a2) e^{-k3 t}`` (uptake then two clearance phases).
  Every clearance rate is at least the physical decay constant (activity cannot vanish more
  slowly than the nuclide decays); the fit's TIA is ``sum a_i / k_i``, and
  `ExponentialFit.dose_rate` turns it into a [`twinjax.radiobiology.ExponentialDoseRate`][] for
  BED with the exact Lea-Catcheside factor.

Units: time h (after the administration), activity MBq, TIA MBq h, rates 1/h.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from .._errors import InputError
from ..nuclides import nuclide
from ..radiobiology import ExponentialDoseRate

__all__ = ["ExponentialFit", "fit_exponential", "tia_trapezoid"]

_N_PARAMS = {"mono": 2, "bi": 4, "uptake": 3, "tri": 5}


def _check_tac(time_h, activity_MBq) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time_h, dtype=float)
    a = np.asarray(activity_MBq, dtype=float)
    if t.ndim != 1 or t.shape != a.shape or t.size == 0:
        raise InputError(
            f"time_h has shape {t.shape} and activity_MBq {a.shape}; allowed: two 1-D arrays of "
            "one length >= 1"
        )
    if not np.all(np.isfinite(t)) or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise InputError(
            f"time_h = {t.tolist()!r}; allowed: finite, > 0 (h after the administration) and "
            "strictly increasing"
        )
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError(f"activity_MBq = {a.tolist()!r}; allowed: finite and > 0 (MBq)")
    return t, a


def tia_trapezoid(
    time_h,
    activity_MBq,
    nuclide_name: str,
    *,
    before_first: Literal["zero", "constant"] = "zero",
    tail: Literal["physical", "last_scans"] = "physical",
) -> float:
    """Time-integrated activity (MBq h) by the trapezoid rule with an exponential tail.

    **Arguments:**
    - `time_h`, `activity_MBq`: the scans (h after the administration, MBq).
    - `nuclide_name`: the nuclide (its physical decay constant bounds the tail).
    - `before_first`: ``"zero"`` (linear uptake from 0 at the administration) or
      ``"constant"`` (the first scan's activity back to the administration).
    - `tail`: after the last scan, ``"physical"`` decay only (an upper bound), or
      ``"last_scans"``: the effective rate of the last two scans (at least the physical one).

    **Returns:** TIA (MBq h) from the administration to infinity.
    """
    t, a = _check_tac(time_h, activity_MBq)
    lam = nuclide(nuclide_name).decay_constant_per_h
    if before_first not in ("zero", "constant"):
        raise InputError(f"before_first = {before_first!r}; allowed: 'zero' or 'constant'")
    if tail not in ("physical", "last_scans"):
        raise InputError(f"tail = {tail!r}; allowed: 'physical' or 'last_scans'")
    head = 0.5 * a[0] * t[0] if before_first == "zero" else a[0] * t[0]
    body = float(np.sum(0.5 * (a[1:] + a[:-1]) * np.diff(t)))
    k = lam
    if tail == "last_scans":
        if t.size < 2:
            raise InputError("tail = 'last_scans' needs at least two scans")
        k = max(lam, math.log(a[-2] / a[-1]) / (t[-1] - t[-2]))
    return head + body + float(a[-1] / k)


@dataclasses.dataclass(frozen=True)
class ExponentialFit:
    """A sum of exponentials fitted to a TAC: ``A(t) = sum_i amplitudes_MBq[i] exp(-rates_per_h[i]
    t)`` (an uptake term has a negative amplitude).

    **Fields:** `model`, `amplitudes_MBq`, `rates_per_h`, `tia_MBqh` (``sum a / k``),
    `residuals` (log(data / fit) at the scans), `converged` (the solver met its tolerances),
    `at_bound` (a rate ran to its bound: the physical decay constant, or a neighbouring rate; the
    solver then stops by its step limit, so `converged` is False, and the fit is the constrained
    optimum).
    """

    model: str
    amplitudes_MBq: np.ndarray
    rates_per_h: np.ndarray
    tia_MBqh: float
    residuals: np.ndarray
    converged: bool
    at_bound: bool = False

    def activity(self, time_h) -> Float[Array, ...]:
        """Fitted activity (MBq) at `time_h`."""
        t = jnp.asarray(time_h, dtype=float)[..., None]
        return jnp.sum(self.amplitudes_MBq * jnp.exp(-self.rates_per_h * t), -1)

    def dose_rate(self, s_value_Gy_per_MBqh, start_h: float = 0.0) -> ExponentialDoseRate:
        """The dose-rate curve (Gy/h) of this TAC in a region of self-dose S-value
        `s_value_Gy_per_MBqh` (e.g. from `sphere_s_value`), for `twinjax.radiobiology.bed`."""
        s = jnp.asarray(s_value_Gy_per_MBqh, dtype=float)
        return ExponentialDoseRate(s * self.amplitudes_MBq, self.rates_per_h, start_h)


def _curve(model: str, p, lam):
    """(amplitudes, rates) from unconstrained parameters `p` (positivity and ordering by exp)."""
    e = jnp.exp
    if model == "mono":
        return jnp.stack([e(p[0])]), jnp.stack([lam + e(p[1])])
    if model == "uptake":
        k1 = lam + e(p[1])
        k2 = k1 + e(p[2])
        return jnp.stack([e(p[0]), -e(p[0])]), jnp.stack([k1, k2])
    if model == "bi":
        k1 = lam + e(p[2])
        k2 = k1 + e(p[3])
        return jnp.stack([e(p[0]), e(p[1])]), jnp.stack([k1, k2])
    # tri: uptake at k3 (fastest), clearance k1 < k2
    k1 = lam + e(p[2])
    k2 = k1 + e(p[3])
    k3 = k2 + e(p[4])
    a1, a2 = e(p[0]), e(p[1])
    return jnp.stack([a1, a2, -(a1 + a2)]), jnp.stack([k1, k2, k3])


def _initial(model: str, t: np.ndarray, a: np.ndarray, lam: float) -> np.ndarray:
    """Starting values: the late scans give the slow clearance, the early ones the rest."""
    n_late = max(2, t.size // 2)
    slope, icpt = np.polyfit(t[-n_late:], np.log(a[-n_late:]), 1)
    k_slow = max(-slope, lam * 1.05)
    a_slow = math.exp(icpt)
    gap = math.log(max(k_slow - lam, 1e-3 * lam))
    fast = math.log(max(5.0 / max(t[0], 1e-3), 2.0 * k_slow))
    if model == "mono":
        return np.array([math.log(a_slow), gap])
    if model == "uptake":
        return np.array([math.log(a_slow), gap, fast])
    if model == "bi":
        return np.array([math.log(a_slow), math.log(max(a[0] - a_slow, 0.1 * a_slow)), gap, fast])
    return np.array([math.log(a_slow), math.log(0.3 * a_slow), gap, fast, fast + 1.0])


def fit_exponential(
    time_h,
    activity_MBq,
    nuclide_name: str,
    *,
    model: Literal["mono", "bi", "uptake", "tri"] = "mono",
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 2000,
) -> ExponentialFit:
    """Fit a sum of exponentials to a TAC (module docs) and integrate it to infinity.

    **Arguments:**
    - `time_h`, `activity_MBq`: at least as many scans as the model has parameters (mono 2,
      uptake 3, bi 4, tri 5).
    - `nuclide_name`: bounds every clearance rate below by its physical decay constant.
    - `model`: ``"mono"``, ``"bi"``, ``"uptake"`` or ``"tri"``.
    - `rtol`, `atol`, `max_steps`: of the Levenberg-Marquardt solve (Optimistix).

    **Returns:** an [`ExponentialFit`][].
    """
    if model not in _N_PARAMS:
        raise InputError(f"model = {model!r}; allowed: {sorted(_N_PARAMS)}")
    t, a = _check_tac(time_h, activity_MBq)
    if t.size < _N_PARAMS[model]:
        raise InputError(
            f"model = {model!r} has {_N_PARAMS[model]} parameters but the TAC has {t.size} "
            f"scans; allowed: at least {_N_PARAMS[model]} scans (or a simpler model)"
        )
    lam = nuclide(nuclide_name).decay_constant_per_h
    tj, log_a = jnp.asarray(t), jnp.asarray(np.log(a))

    def residual(p, _):
        amp, k = _curve(model, p, lam)
        fit = jnp.sum(amp * jnp.exp(-k * tj[:, None]), -1)
        return jnp.log(jnp.maximum(fit, 1e-300)) - log_a

    p0 = _initial(model, t, a, lam)
    if model == "tri":
        # Start from the two clearance phases of the scans after the peak (a bi-exponential
        # fit), with the uptake faster than both.
        peak = int(np.argmax(a))
        late = slice(peak, None) if t.size - peak >= 4 else slice(t.size - 4, None)
        bi = fit_exponential(t[late], a[late], nuclide_name, model="bi", rtol=rtol, atol=atol)
        k1, k2 = bi.rates_per_h
        k3 = max(2.0 * k2, 3.0 / t[max(peak, 1) - 1])
        p0 = np.log(np.maximum([*bi.amplitudes_MBq, k1 - lam, k2 - k1, k3 - k2], 1e-12))
    solver = optx.LevenbergMarquardt(rtol=rtol, atol=atol)
    sol = optx.least_squares(residual, solver, jnp.asarray(p0), max_steps=max_steps, throw=False)
    amp, k = _curve(model, sol.value, lam)
    res = residual(sol.value, None)
    converged = bool(sol.result == optx.RESULTS.successful) and bool(jnp.all(jnp.isfinite(res)))
    amp, k = np.asarray(amp), np.asarray(k)
    gaps = np.diff(np.concatenate([[lam], np.sort(k)]))
    at_bound = bool(np.any(gaps < 1e-6 * lam))
    return ExponentialFit(
        model=model,
        amplitudes_MBq=amp,
        rates_per_h=k,
        tia_MBqh=float(np.sum(amp / k)),
        residuals=-np.asarray(res),
        converged=converged,
        at_bound=at_bound,
    )

"""Linear-quadratic (LQ) effect of a continuously delivered dose: the Lea-Catcheside protraction
factor G, biologically effective dose (BED) and EQD2, for any dose-rate curve and any number of
cycles.

A dose-rate curve R(t) (Gy/h) delivers ``D = int R dt``. With sublethal damage repaired
mono-exponentially at rate ``mu = ln 2 / T_rep``, the LQ log cell kill is ``E = alpha D + beta G
D^2`` with the Lea-Catcheside factor

    G D^2 = 2 int_0^inf R(t) q(t) dt,    q(t) = int_0^t R(w) exp(-mu (t - w)) dw,

where q is the dose whose sublethal damage is still unrepaired at t. Then ``BED = E / alpha = D (1 +
G D / (alpha/beta))`` and ``EQD2 = BED / (1 + 2 / (alpha/beta))`` (Dale 1985, Br J Radiol 58:515;
Fowler 1989, Br J Radiol 62:679). ``G = 1`` for an acute dose and ``G -> 0`` for a very
protracted one.

Two exact evaluations, which the tests compare with each other:

- **Sums of exponentials** (`ExponentialDoseRate`: mono-exponential, uptake then clearance,
  tri-exponential fits), closed form for any number of terms and cycles. For two unit terms
  ``exp(-k (t - t_c))`` from ``t_c`` and ``exp(-m (t - t_d))`` from ``t_d >= t_c``, with
  ``delta = t_d - t_c``, the contribution to ``int int R(t) R(w) exp(-mu |t - w|)`` is

      K = P(k, mu, delta) / (m + mu) + exp(-k delta) [1 / ((m + k)(m + mu)) + 1 / ((k + mu)(m + k))]

  with the divided difference ``P = (exp(-k delta) - exp(-mu delta)) / (mu - k)``, evaluated as
  ``exp(-min(k, mu) delta) delta h(|mu - k| delta)``, ``h(x) = (1 - exp(-x)) / x`` (no
  cancellation at k = mu, no overflow for long intervals). For one cycle this is ``G D^2 = 2
  sum_ij a_i a_j / ((k_i + k_j)(k_j + mu))``; for one term it is Dale's ``G = lambda / (lambda +
  mu)``. Several cycles sum K over all pairs of terms, so repair between cycles is incomplete
  (the damage of one cycle still unrepaired when the next starts interacts with it).
- **ODE** (any curve, e.g. `SampledDoseRate` from measured dose rates): the repair integral is
  carried as two extra states, ``q' = R - mu q`` and ``J' = R q`` (with ``D' = R``), so ``G D^2 =
  2 J(inf)``. Diffrax integrates them piecewise between the curve's breakpoints (no step
  straddles a kink) and the tail after the last breakpoint, where every curve is a sum of
  exponentials, is closed analytically from the state (q, J) reached there.

Units: time h, dose Gy, dose rate Gy/h, alpha/beta Gy, repair half-time h.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError, SolverError

__all__ = [
    "DoseRate",
    "ExponentialDoseRate",
    "SampledDoseRate",
    "absorbed_dose",
    "bed",
    "bed_acute",
    "bed_monoexponential",
    "eqd2",
    "eqd2_from_bed",
    "protraction_factor",
]

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Dose-rate curves


class DoseRate(eqx.Module):
    """A dose-rate curve R(t) >= 0 (Gy/h), zero before its start.

    Concrete curves define `rate(t_h, at_h=None)`, `breaks_h` (sorted times where the curve may
    have a kink or jump; the first is the start) and `tail_terms()`: after the last breakpoint
    the curve is ``sum_i a_i exp(-k_i (t - t_last))``, returned as ``(a (Gy/h), k (1/h))``.

    `rate(t_h, at_h)` evaluates at `t_h` the smooth piece of the curve that contains `at_h`
    (default: `t_h` itself, right-continuous at jumps). The ODE path passes the midpoint of the
    piece it integrates, so a solver stage on a breakpoint never sees the other side of a jump.
    """

    def rate(self, t_h, at_h=None):
        raise NotImplementedError

    @property
    def breaks_h(self) -> Float[Array, " B"]:
        raise NotImplementedError

    def tail_terms(self) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        raise NotImplementedError


class ExponentialDoseRate(DoseRate):
    """``R(t) = sum_i a_i exp(-k_i (t - start_h))`` for ``t >= start_h``, zero before.

    **Fields:** `amplitudes_Gy_per_h` ``(m,)`` (signed: an uptake phase is a negative term),
    `rates_per_h` ``(m,)`` (> 0; effective clearance rates including physical decay), `start_h`.

    Constructors: [`ExponentialDoseRate.monoexponential`][],
    [`ExponentialDoseRate.uptake_clearance`][]. Arrays may carry leading batch dimensions when
    used under `jax.vmap`.
    """

    amplitudes_Gy_per_h: Float[Array, " m"]
    rates_per_h: Float[Array, " m"]
    start_h: Float[Array, ""]

    def __init__(self, amplitudes_Gy_per_h, rates_per_h, start_h=0.0):
        a = jnp.atleast_1d(jnp.asarray(amplitudes_Gy_per_h, dtype=float))
        k = jnp.atleast_1d(jnp.asarray(rates_per_h, dtype=float))
        if a.shape != k.shape:
            raise InputError(
                f"amplitudes_Gy_per_h has shape {a.shape} and rates_per_h {k.shape}; allowed: "
                "one rate per amplitude"
            )
        _check_concrete("rates_per_h", k, "> 0 (1/h; a term that never clears has infinite dose)",
                        lambda v: np.all(v > 0))  # fmt: skip
        _check_concrete("amplitudes_Gy_per_h", a, "finite (Gy/h)", lambda v: np.all(np.isfinite(v)))
        _check_concrete("start_h", start_h, "a finite time (h)", lambda v: np.all(np.isfinite(v)))
        self.amplitudes_Gy_per_h = a
        self.rates_per_h = k
        self.start_h = jnp.asarray(start_h, dtype=float)

    @classmethod
    def monoexponential(cls, dose_Gy, effective_half_life_h, start_h=0.0) -> ExponentialDoseRate:
        """Instant uptake, then clearance with `effective_half_life_h` (h): total `dose_Gy`."""
        lam = LN2 / jnp.asarray(effective_half_life_h, dtype=float)
        return cls(jnp.asarray(dose_Gy, dtype=float) * lam, lam, start_h)

    @classmethod
    def uptake_clearance(
        cls, dose_Gy, uptake_half_life_h, effective_half_life_h, start_h=0.0
    ) -> ExponentialDoseRate:
        """Uptake then clearance, ``R = A (exp(-lambda_c t) - exp(-lambda_u t))`` with
        ``lambda_u = ln 2 / uptake_half_life_h`` > ``lambda_c = ln 2 / effective_half_life_h``,
        scaled to deliver `dose_Gy` in total."""
        lu = LN2 / jnp.asarray(uptake_half_life_h, dtype=float)
        lc = LN2 / jnp.asarray(effective_half_life_h, dtype=float)
        _check_concrete(
            "uptake_half_life_h",
            (lu, lc),
            f"shorter than effective_half_life_h = {effective_half_life_h!r} h",
            lambda v: np.all(v[0] > v[1]),
        )
        amp = jnp.asarray(dose_Gy, dtype=float) / (1.0 / lc - 1.0 / lu)
        return cls(jnp.stack([amp, -amp]), jnp.stack([lc, lu]), start_h)

    def rate(self, t_h, at_h=None):
        t = jnp.asarray(t_h, dtype=float)
        at = t if at_h is None else jnp.asarray(at_h, dtype=float)
        s = jnp.maximum(t - self.start_h, 0.0)[..., None]
        r = jnp.sum(self.amplitudes_Gy_per_h * jnp.exp(-self.rates_per_h * s), -1)
        return jnp.where(at >= self.start_h, r, 0.0)

    @property
    def breaks_h(self):
        return self.start_h[None]

    def tail_terms(self):
        return self.amplitudes_Gy_per_h, self.rates_per_h

    def dose(self):
        """Absorbed dose (Gy), ``sum_i a_i / k_i``."""
        return jnp.sum(self.amplitudes_Gy_per_h / self.rates_per_h)


class SampledDoseRate(DoseRate):
    """A dose-rate curve from samples: linear between `times_h`, zero before the first sample,
    ``R(t_last) exp(-tail_rate_per_h (t - t_last))`` after the last.

    **Fields:** `times_h` ``(N,)`` non-decreasing (a repeated time is a jump, e.g. the start of an
    infusion), `dose_rate_Gy_per_h` ``(N,)`` >= 0, `tail_rate_per_h` > 0 (e.g. the physical decay
    constant, or a fitted effective clearance rate).
    """

    times_h: Float[Array, " N"]
    dose_rate_Gy_per_h: Float[Array, " N"]
    tail_rate_per_h: Float[Array, ""]

    def __init__(self, times_h, dose_rate_Gy_per_h, tail_rate_per_h):
        t = jnp.asarray(times_h, dtype=float)
        r = jnp.asarray(dose_rate_Gy_per_h, dtype=float)
        if t.ndim != 1 or t.shape != r.shape or t.shape[0] < 2:
            raise InputError(
                f"times_h has shape {t.shape} and dose_rate_Gy_per_h {r.shape}; allowed: two "
                "1-D arrays of one length >= 2"
            )
        _check_concrete("times_h", t, "finite and non-decreasing (h)",
                        lambda v: np.all(np.isfinite(v)) and np.all(np.diff(v) >= 0))  # fmt: skip
        _check_concrete("dose_rate_Gy_per_h", r, "finite and >= 0 (Gy/h)",
                        lambda v: np.all(np.isfinite(v) & (v >= 0)))  # fmt: skip
        _check_concrete("tail_rate_per_h", tail_rate_per_h, "> 0 (1/h)", lambda v: np.all(v > 0))
        self.times_h = t
        self.dose_rate_Gy_per_h = r
        self.tail_rate_per_h = jnp.asarray(tail_rate_per_h, dtype=float)

    def rate(self, t_h, at_h=None):
        t = jnp.asarray(t_h, dtype=float)
        at = t if at_h is None else jnp.asarray(at_h, dtype=float)
        tk, rk = self.times_h, self.dose_rate_Gy_per_h
        # Segment [t_i, t_i+1) containing `at`; side="right" skips zero-length (jump) segments.
        i = jnp.clip(jnp.searchsorted(tk, at, side="right") - 1, 0, tk.shape[0] - 2)
        width = tk[i + 1] - tk[i]
        frac = (t - tk[i]) / jnp.where(width > 0, width, 1.0)
        inside = rk[i] + (rk[i + 1] - rk[i]) * frac
        tail = rk[-1] * jnp.exp(-self.tail_rate_per_h * jnp.maximum(t - tk[-1], 0.0))
        return jnp.where(at < tk[0], 0.0, jnp.where(at >= tk[-1], tail, inside))

    @property
    def breaks_h(self):
        return self.times_h

    def tail_terms(self):
        return self.dose_rate_Gy_per_h[-1:], self.tail_rate_per_h[None]


def _check_concrete(field, value, allowed, ok) -> None:
    """Validate `value` if it is concrete (not a tracer): bad input fails before any solve."""
    leaves = jax.tree.leaves(value)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return
    v = np.asarray(value, dtype=float) if not isinstance(value, tuple) else np.asarray(value)
    if not ok(v):
        raise InputError(f"{field} = {np.asarray(value).tolist()!r}; allowed: {allowed}")


# --------------------------------------------------------------------------------------------
# Closed forms for sums of exponentials


def _h(x):
    """(1 - exp(-x)) / x for x >= 0, smooth at 0 (safe-where keeps its gradient finite)."""
    small = x < 1e-6
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 - x / 2.0 + x * x / 6.0, -jnp.expm1(-xs) / xs)


def _pair(k, m, delta, mu):
    """K for a unit term of rate k starting `delta` >= 0 before a unit term of rate m (module docs)."""
    ek = jnp.exp(-k * delta)
    p = jnp.exp(-jnp.minimum(k, mu) * delta) * delta * _h(jnp.abs(mu - k) * delta)
    return p / (m + mu) + ek * (1.0 / ((m + k) * (m + mu)) + 1.0 / ((k + mu) * (m + k)))


def _exponential_gd2(curves: Sequence[ExponentialDoseRate], mu):
    """G D^2 (Gy^2) of the sum of `curves` (each a sum of exponentials with its own start)."""
    a = jnp.concatenate([c.amplitudes_Gy_per_h for c in curves])
    k = jnp.concatenate([c.rates_per_h for c in curves])
    t0 = jnp.concatenate([jnp.broadcast_to(c.start_h, c.rates_per_h.shape) for c in curves])
    ki, kj = k[:, None], k[None, :]
    delta = t0[None, :] - t0[:, None]  # start of j minus start of i
    # Term i starts first where delta >= 0; otherwise swap the roles (K is symmetric in them).
    later = delta >= 0
    kk = jnp.where(
        later,
        _pair(ki, kj, jnp.maximum(delta, 0.0), mu),
        _pair(kj, ki, jnp.maximum(-delta, 0.0), mu),
    )
    return jnp.sum(a[:, None] * a[None, :] * kk)


# --------------------------------------------------------------------------------------------
# The ODE path


def _ode_integrals(curves: Sequence[DoseRate], mu, t_end_h, rtol, atol, max_steps):
    """(D, G D^2) of the sum of `curves` by integrating (D, q, J) between breakpoints, then the
    analytic tail (module docs)."""
    breaks = jnp.sort(jnp.concatenate([c.breaks_h for c in curves]))
    if t_end_h is not None:
        breaks = jnp.concatenate(
            [breaks, jnp.maximum(jnp.asarray(t_end_h, float), breaks[-1])[None]]
        )

    def rhs(t, y, at):
        r = sum(c.rate(t, at) for c in curves)
        return jnp.stack([r, r - mu * y[1], r * y[1]])

    term = dfx.ODETerm(rhs)
    solver = dfx.Dopri8()
    y = jnp.zeros(3)
    ok = jnp.asarray(True)
    for i in range(breaks.shape[0] - 1):
        t0, t1 = breaks[i], breaks[i + 1]
        # Zero-length pieces (jumps, coincident starts) are skipped by a zero-length solve.
        t1 = jnp.maximum(t1, t0)
        sol = dfx.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            jnp.maximum((t1 - t0) * 1e-3, 1e-9),
            y,
            0.5 * (t0 + t1),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
            saveat=dfx.SaveAt(t1=True),
            max_steps=max_steps,
            throw=False,
        )
        y = jnp.where(t1 > t0, sol.ys[-1], y)
        ok = ok & ((t1 <= t0) | (sol.result == dfx.RESULTS.successful))
    # Tail: R = sum_c sum_i a_ci exp(-k_ci s) from the last breakpoint T. Curves whose own last
    # breakpoint is earlier than T are shifted there (their terms decay meanwhile).
    t_last = breaks[-1]
    amps, rates = [], []
    for c in curves:
        a, k = c.tail_terms()
        amps.append(a * jnp.exp(-k * (t_last - c.breaks_h[-1])))
        rates.append(k)
    a, k = jnp.concatenate(amps), jnp.concatenate(rates)
    dose, q, j = y
    dose_tail = jnp.sum(a / k)
    # int R q over the tail: the decaying damage q(T) exp(-mu s) meets each term, plus the tail's
    # own double integral (half the one-cycle closed form).
    j_tail = q * jnp.sum(a / (k + mu)) + 0.5 * jnp.sum(
        a[:, None] * a[None, :] * _pair(k[:, None], k[None, :], 0.0, mu)
    )
    return dose + dose_tail, 2.0 * (j + j_tail), ok


# --------------------------------------------------------------------------------------------
# Public functions


def _as_curves(curve) -> tuple[DoseRate, ...]:
    curves = (curve,) if isinstance(curve, DoseRate) else tuple(curve)
    if not curves or not all(isinstance(c, DoseRate) for c in curves):
        raise InputError(
            f"curve = {curve!r}; allowed: a DoseRate (ExponentialDoseRate, SampledDoseRate) or a "
            "non-empty sequence of them (one per cycle)"
        )
    return curves


def _mu(repair_half_time_h):
    _check_concrete("repair_half_time_h", repair_half_time_h, "> 0 (h)", lambda v: np.all(v > 0))
    return LN2 / jnp.asarray(repair_half_time_h, dtype=float)


def _dose_gd2(curve, repair_half_time_h, method, t_end_h, rtol, atol, max_steps):
    curves = _as_curves(curve)
    mu = _mu(repair_half_time_h)
    if method not in ("auto", "closed", "ode"):
        raise InputError(f"method = {method!r}; allowed: 'auto', 'closed' or 'ode'")
    closed_ok = all(isinstance(c, ExponentialDoseRate) for c in curves)
    if method == "closed" and not closed_ok:
        raise InputError(
            "method = 'closed' needs ExponentialDoseRate curves; use method='ode' (or 'auto') for "
            f"{sorted({type(c).__name__ for c in curves})}"
        )
    if closed_ok and method != "ode":
        dose = sum(c.dose() for c in curves)
        return dose, _exponential_gd2(curves, mu)
    dose, gd2, ok = _ode_integrals(curves, mu, t_end_h, rtol, atol, max_steps)
    msg = (
        f"the repair-integral ODE did not finish within max_steps = {max_steps} per piece; "
        "raise max_steps or loosen rtol"
    )
    if not isinstance(ok, jax.core.Tracer):
        if not bool(ok):
            raise SolverError(msg)
        return dose, gd2
    # Under jit a failed solve is a runtime error, never a silently wrong number.
    return dose, eqx.error_if(gd2, jnp.logical_not(ok), msg)


def absorbed_dose(curve) -> Float[Array, ""]:
    """Absorbed dose (Gy) of a dose-rate curve or of a sequence of cycles (summed).

    Closed form for [`ExponentialDoseRate`][]s; for other curves, the ODE of
    [`protraction_factor`][] with its defaults."""
    curves = _as_curves(curve)
    if all(isinstance(c, ExponentialDoseRate) for c in curves):
        return sum(c.dose() for c in curves)
    return _ode_integrals(curves, jnp.asarray(1.0), None, 1e-10, 1e-14, 4096)[0]


def protraction_factor(
    curve: DoseRate | Sequence[DoseRate],
    repair_half_time_h,
    *,
    method: Literal["auto", "closed", "ode"] = "auto",
    t_end_h=None,
    rtol: float = 1e-10,
    atol: float = 1e-14,
    max_steps: int = 4096,
) -> Float[Array, ""]:
    """The Lea-Catcheside dose-protraction factor G (dimensionless, 0 < G <= 1).

    **Arguments:**
    - `curve`: a [`DoseRate`][], or a sequence of them (cycles, each with its own start; repair
      between them is incomplete, see module docs).
    - `repair_half_time_h`: mono-exponential repair half-time T_rep (h).
    - `method`: ``"closed"`` (sums of exponentials only), ``"ode"`` (any curve) or ``"auto"``
      (closed form when every curve is an [`ExponentialDoseRate`][]).
    - `t_end_h`: for the ODE path, integrate numerically at least to this time before closing
      the tail analytically (by default, to the last breakpoint).
    - `rtol`, `atol` (Gy, Gy^2), `max_steps`: Diffrax tolerances of the ODE path.

    **Returns:** G, so that the LQ effect is ``alpha D + beta G D^2``.
    """
    dose, gd2 = _dose_gd2(curve, repair_half_time_h, method, t_end_h, rtol, atol, max_steps)
    return gd2 / dose**2


def bed(
    curve: DoseRate | Sequence[DoseRate],
    alpha_beta_Gy,
    repair_half_time_h,
    *,
    rbe=1.0,
    method: Literal["auto", "closed", "ode"] = "auto",
    t_end_h=None,
    rtol: float = 1e-10,
    atol: float = 1e-14,
    max_steps: int = 4096,
) -> Float[Array, ""]:
    """Biologically effective dose (Gy), ``BED = RBE D (1 + RBE G D / (alpha/beta))``.

    **Arguments:**
    - `curve`: a [`DoseRate`][] or a sequence of cycles (incomplete repair between them; for
      complete repair between cycles sum `bed` over the cycles instead).
    - `alpha_beta_Gy`: alpha/beta of the tissue (Gy), > 0.
    - `repair_half_time_h`: T_rep (h), > 0.
    - `rbe`: relative biological effectiveness applied to the physical dose (e.g. 5 for alpha
      particles); 1 for beta emitters.
    - `method`, `t_end_h`, `rtol`, `atol`, `max_steps`: as [`protraction_factor`][].

    **Returns:** BED (Gy). Differentiable in every argument (e.g. in a curve's amplitudes, hence
    in the administered activity).
    """
    _check_concrete("alpha_beta_Gy", alpha_beta_Gy, "> 0 (Gy)", lambda v: np.all(v > 0))
    _check_concrete("rbe", rbe, "> 0", lambda v: np.all(v > 0))
    dose, gd2 = _dose_gd2(curve, repair_half_time_h, method, t_end_h, rtol, atol, max_steps)
    rbe = jnp.asarray(rbe, dtype=float)
    return rbe * dose + rbe**2 * gd2 / jnp.asarray(alpha_beta_Gy, dtype=float)


def bed_monoexponential(
    dose_Gy, effective_half_life_h, alpha_beta_Gy, repair_half_time_h, *, rbe=1.0
) -> Float[Array, ""]:
    """Dale's closed form for instant uptake and mono-exponential clearance:
    ``BED = D (1 + D lambda / ((mu + lambda) alpha/beta))`` with ``lambda = ln 2 /
    effective_half_life_h``, ``mu = ln 2 / repair_half_time_h`` (Dale 1985, Br J Radiol
    58:515). Units: Gy, h, h."""
    curve = ExponentialDoseRate.monoexponential(dose_Gy, effective_half_life_h)
    return bed(curve, alpha_beta_Gy, repair_half_time_h, rbe=rbe, method="closed")


def bed_acute(dose_Gy, alpha_beta_Gy, *, n_fractions=1) -> Float[Array, ""]:
    """BED (Gy) of `dose_Gy` given as `n_fractions` equal acute fractions with full repair
    between them: ``D (1 + (D / n) / (alpha/beta))``."""
    _check_concrete("alpha_beta_Gy", alpha_beta_Gy, "> 0 (Gy)", lambda v: np.all(v > 0))
    d = jnp.asarray(dose_Gy, dtype=float)
    return d * (1.0 + d / n_fractions / jnp.asarray(alpha_beta_Gy, dtype=float))


def eqd2_from_bed(bed_Gy, alpha_beta_Gy) -> Float[Array, ""]:
    """Equieffective dose in 2-Gy fractions (Gy): ``BED / (1 + 2 / (alpha/beta))``."""
    _check_concrete("alpha_beta_Gy", alpha_beta_Gy, "> 0 (Gy)", lambda v: np.all(v > 0))
    return jnp.asarray(bed_Gy, dtype=float) / (1.0 + 2.0 / jnp.asarray(alpha_beta_Gy, dtype=float))


def eqd2(curve, alpha_beta_Gy, repair_half_time_h, **kwargs) -> Float[Array, ""]:
    """EQD2 (Gy) of a dose-rate curve (arguments as [`bed`][])."""
    return eqd2_from_bed(bed(curve, alpha_beta_Gy, repair_half_time_h, **kwargs), alpha_beta_Gy)

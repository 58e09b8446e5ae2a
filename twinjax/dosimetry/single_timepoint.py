"""Single-time-point (STP) estimates of the time-integrated activity from one quantitative scan.

Two standard methods turn one activity measurement ``A(t)`` of a region into its time-integrated
activity (TIA, MBq h, from administration to infinity). Both assume that the region clears
mono-exponentially, ``A(s) = A0 exp(-lambda s)``, whose TIA is ``A0 / lambda``, with ``lambda``
the effective decay constant (biological clearance plus physical decay; ``T = ln 2 / lambda``
the effective half-life).

- [`hanscheid_tia`][]: ``TIA = A(t) 2 t / ln 2`` (Hänscheid H, Lapa C, Buck AK, Lassmann M,
  Werner RA. Dose mapping after endoradiotherapy with 177Lu-DOTATATE/DOTATOC by a single
  measurement after 4 days. J Nucl Med 2018;59:75-81). No population information: the formula
  reads the effective half-life as equal to the scan time (it is exact for a mono-exponential
  scanned at one or two effective half-lives; the authors recommend a scan at about 96 h). For a mono-exponential its ratio to the truth is
  ``2 x 2^-x`` with ``x = t / T`` ([`hanscheid_relative_error`][]): exact at ``t = T`` and at
  ``t = 2 T``, at most +6.15 % (``2 / (e ln 2)``, at ``t = T / ln 2 = 1.443 T``), within 10 %
  for ``0.764 T <= t <= 2.437 T`` and an underestimate outside ``[T, 2 T]`` (-29.3 % at
  ``t = T/2``, -25 % at ``t = 3 T``).
- [`madsen_tia`][]: ``TIA = A(t) exp(lambda t) / lambda`` with a population effective decay
  constant (Madsen MT, Menda Y, O'Dorisio TM, O'Dorisio MS. Technical note: single time point
  dose estimate for exponential clearance. Med Phys 2018;45:2318-2324): back-extrapolate the
  measurement along the population curve and integrate it. Exact when the patient's effective
  half-life equals the population's; otherwise the ratio to the truth is
  ``(lambda / lambda_pop) exp((lambda_pop - lambda) t)`` ([`madsen_relative_error`][]). Its
  derivative in ``lambda_pop`` vanishes at ``lambda_pop t = 1``: a scan at
  ``t = T_pop / ln 2`` (1.44 effective half-lives) makes the estimate insensitive, to first
  order, to the patient's deviation from the population half-life.

[`effective_half_life_h`][] fits ``ln A = ln A0 - lambda t`` by least squares to sampled activities:
how a population effective half-life is obtained from a reference cohort with full dosimetry.

All functions are pure JAX (jit, vmap and grad apply) and broadcast their arguments. Concrete
(non-traced) arguments are validated first; bad values raise [`InputError`][] naming the field.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError

__all__ = [
    "effective_half_life_h",
    "hanscheid_relative_error",
    "hanscheid_tia",
    "madsen_relative_error",
    "madsen_tia",
]

_LN2 = math.log(2.0)


def hanscheid_tia(activity_MBq, time_h):
    """TIA (MBq h) from one activity by Hänscheid's formula ``A(t) 2 t / ln 2`` (see module docs).

    **Arguments:**
    - `activity_MBq`: measured activity of the region at `time_h` (MBq, >= 0).
    - `time_h`: time of the scan after administration (h, > 0).

    **Returns:** the TIA estimate (MBq h), broadcast over the arguments.
    """
    a, t = _floats(activity_MBq=activity_MBq, time_h=time_h)
    _check(a, "activity_MBq", "finite activities >= 0 MBq", lambda v: v >= 0)
    _check(t, "time_h", "finite times > 0 h after administration", lambda v: v > 0)
    return a * (2.0 / _LN2) * t


def madsen_tia(activity_MBq, time_h, effective_half_life_h):
    """TIA (MBq h) from one activity and a population effective half-life (Madsen; see module
    docs): ``A(t) exp(lambda t) / lambda`` with ``lambda = ln 2 / effective_half_life_h``.

    **Arguments:**
    - `activity_MBq`: measured activity of the region at `time_h` (MBq, >= 0).
    - `time_h`: time of the scan after administration (h, > 0).
    - `effective_half_life_h`: population effective half-life of the region (h, > 0; physical
      decay included).

    **Returns:** the TIA estimate (MBq h), broadcast over the arguments.
    """
    a, t, half = _floats(
        activity_MBq=activity_MBq, time_h=time_h, effective_half_life_h=effective_half_life_h
    )
    _check(a, "activity_MBq", "finite activities >= 0 MBq", lambda v: v >= 0)
    _check(t, "time_h", "finite times > 0 h after administration", lambda v: v > 0)
    _check(half, "effective_half_life_h", "finite half-lives > 0 h", lambda v: v > 0)
    lam = _LN2 / half
    return a * jnp.exp(lam * t) / lam


def hanscheid_relative_error(time_h, effective_half_life_h):
    """Relative error (estimate / truth - 1) of [`hanscheid_tia`][] for a mono-exponential region
    with effective half-life `effective_half_life_h` scanned at `time_h`: ``2 x 2^-x - 1`` with
    ``x = time_h / effective_half_life_h``. Noise-free; both arguments in h, > 0."""
    t, half = _floats(time_h=time_h, effective_half_life_h=effective_half_life_h)
    _check(t, "time_h", "finite times > 0 h after administration", lambda v: v > 0)
    _check(half, "effective_half_life_h", "finite half-lives > 0 h", lambda v: v > 0)
    x = t / half
    return 2.0 * x * jnp.exp2(-x) - 1.0


def madsen_relative_error(time_h, effective_half_life_h, population_half_life_h):
    """Relative error (estimate / truth - 1) of [`madsen_tia`][] for a mono-exponential region with
    effective half-life `effective_half_life_h`, estimated with `population_half_life_h`, scanned
    at `time_h`: ``(lambda / lambda_pop) exp((lambda_pop - lambda) t) - 1``. Noise-free; h, > 0."""
    t, half, pop = _floats(
        time_h=time_h,
        effective_half_life_h=effective_half_life_h,
        population_half_life_h=population_half_life_h,
    )
    _check(t, "time_h", "finite times > 0 h after administration", lambda v: v > 0)
    _check(half, "effective_half_life_h", "finite half-lives > 0 h", lambda v: v > 0)
    _check(pop, "population_half_life_h", "finite half-lives > 0 h", lambda v: v > 0)
    lam, lam_pop = _LN2 / half, _LN2 / pop
    return (lam / lam_pop) * jnp.exp((lam_pop - lam) * t) - 1.0


def effective_half_life_h(time_h, activity_MBq):
    """Effective half-life (h) of a mono-exponential fitted to sampled activities.

    Ordinary least squares of ``ln A`` on ``t`` (equal weights on the log scale, i.e. the same
    relative error at every time point); the half-life is ``ln 2 / lambda`` with ``-lambda`` the
    slope. Activities that do not decrease (``lambda <= 0``) have no finite half-life: ``inf``.

    **Arguments:**
    - `time_h`: sample times (h), shape ``(T,)``, at least two distinct values.
    - `activity_MBq`: activities (MBq, > 0), shape ``(..., T)``: leading axes are regions or
      patients, fitted independently.

    **Returns:** half-lives (h), shape ``(...)``.
    """
    t, a = _floats(time_h=time_h, activity_MBq=activity_MBq)
    if t.ndim != 1 or a.shape[-1:] != t.shape:
        raise InputError(
            f"time_h has shape {t.shape} and activity_MBq {a.shape}; allowed: time_h (T,) and "
            "activity_MBq (..., T)"
        )
    _check(t, "time_h", "finite times >= 0 h", lambda v: v >= 0)
    _check(a, "activity_MBq", "finite activities > 0 MBq (logarithms are fitted)", lambda v: v > 0)
    if not isinstance(t, jax.core.Tracer) and np.unique(np.asarray(t)).size < 2:
        raise InputError(
            f"time_h = {np.asarray(t).tolist()}; allowed: at least two distinct sample times"
        )
    dt = t - jnp.mean(t)
    y = jnp.log(a)
    slope = jnp.sum(dt * (y - jnp.mean(y, axis=-1, keepdims=True)), axis=-1) / jnp.sum(dt * dt)
    lam = -slope
    return jnp.where(lam > 0, _LN2 / jnp.where(lam > 0, lam, 1.0), jnp.inf)


def _floats(**arrays):
    """The arguments as JAX float arrays of one common float dtype (the widest given; integers
    become the default float), so that float64 inputs stay float64 under any promotion mode."""
    out = {}
    for name, x in arrays.items():
        try:
            v = jnp.asarray(x)
        except TypeError:  # strings, objects: not numbers at all
            raise InputError(f"{name} = {x!r}; allowed: real numbers") from None
        if not jnp.issubdtype(v.dtype, jnp.floating):
            if not jnp.issubdtype(v.dtype, jnp.integer):  # booleans are not amounts
                raise InputError(f"{name} has dtype {v.dtype}; allowed: real numbers")
            v = v.astype(jnp.result_type(float))
        out[name] = v
    dtype = np.result_type(*[np.dtype(v.dtype) for v in out.values()])
    return tuple(v.astype(dtype) for v in out.values())


def _check(x, field: str, allowed: str, ok) -> None:
    """Raise `InputError` at the first non-finite or disallowed element of a concrete `x`
    (traced values, inside jit/vmap/grad, cannot be inspected and are not checked)."""
    if isinstance(x, jax.core.Tracer):
        return
    v = np.asarray(x)
    bad = ~np.isfinite(v) | ~ok(np.where(np.isfinite(v), v, 0.0))
    if bad.any():
        where = "" if v.ndim == 0 else f"[{', '.join(map(str, np.argwhere(bad)[0]))}]"
        raise InputError(f"{field}{where} = {v[bad].flat[0].item()!r}; allowed: {allowed}")

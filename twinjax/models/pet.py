r"""Classical PET tracer kinetics: Feng input function, 1-/2-tissue compartment models, Patlak.

Everything here is pure JAX in float64 and can be ``jit``-ed, ``vmap``-ed and differentiated
(``grad``/``jacfwd``) in every rate constant, the blood volume fraction and the input-function
parameters. Times are in **hours** and rate constants in **1/h** (the canonical units of twinjax,
see `twinjax.units`); multiply per-minute literature values by 60 (``1 / MIN_TO_H``).

**Concentrations.** The unit of concentration is whatever the input function's amplitudes carry
(e.g. kBq/mL or uCi/mL); the tissue curves come out in the same unit (per mL of tissue, the usual
assumption of unit tissue density). All kinetics here are for **decay-corrected** activity: no
physical decay appears in the equations, as in the usual analysis of dynamic PET data. Multiply by
``exp(-lambda_phys t)`` to obtain the uncorrected activity that a scanner sees.

**Input function** (Feng, Huang and Wang 1993, Int J Biomed Comput 32:95-110, "model 2"), with
``s = t - tau``:

$$C_p(t) = (A_1 s - A_2 - A_3)\,e^{\lambda_1 s} + A_2 e^{\lambda_2 s} + A_3 e^{\lambda_3 s},
\qquad s \ge 0,$$

and ``C_p = 0`` before the delay ``tau``; the ``lambda_i`` are negative. Writing it as
``A1 s e^{l1 s} + sum_i B_i e^{l_i s}`` with ``B = (-(A2 + A3), A2, A3)``, its integral from 0 is

$$\int_0^t C_p = A_1 s^2 g(\lambda_1 s) + \sum_i B_i\, s\, \varphi_1(\lambda_i s),$$

with ``phi1(x) = (e^x - 1)/x`` and ``g(x) = (x e^x - e^x + 1)/x^2``.

**Tissue models, solved exactly.** A linear compartment model driven by ``C_p`` has the tissue
response ``C(t) = (h * C_p)(t)``, where the impulse response ``h`` is a sum of exponentials
``sum_j a_j e^{-b_j t}`` (``b_j >= 0``). Every term of the convolution is one of two closed forms
(``d = lambda + b``):

$$\int_0^s e^{-b(s-u)} e^{\lambda u}\,du = \frac{e^{\lambda s} - e^{-b s}}{d}
  = e^{m s}\, s\, \varphi_1(-|d| s),$$

$$\int_0^s e^{-b(s-u)}\, u\, e^{\lambda u}\,du = \frac{e^{-bs}\,[e^{ds}(ds - 1) + 1]}{d^2}
  = \begin{cases} e^{\lambda s} s^2 \varphi_2(-d s), & d > 0 \\
                  e^{-b s} s^2 g(d s), & d \le 0 \end{cases}$$

with ``m = max(lambda, -b)``, ``phi2(x) = (e^x - 1 - x)/x^2``. Only ``phi1``, ``phi2`` and ``g``
at non-positive arguments are ever evaluated: they are bounded (``(0, 1]``, ``(0, 1/2]``,
``(0, 1/2]``), never overflow, and near 0 (where the closed forms cancel) they are evaluated by
their Taylor series, so the forms stay exact and smooth through ``d = 0`` (a tissue rate equal to
an input-function rate), ``b = 0`` (trapping) and ``s = 0``.

- 1TCM, ``dC/dt = K1 Cp - k2 C``: ``h(t) = K1 e^{-k2 t}``.
- 2TCM, ``dC1/dt = K1 Cp - (k2 + k3) C1 + k4 C2``, ``dC2/dt = k3 C1 - k4 C2``: with the
  eigenvalues ``b_{1,2} = (S +- sqrt(S^2 - 4 k2 k4))/2``, ``S = k2 + k3 + k4`` (``b2`` computed as
  ``2 k2 k4 / (S + sqrt(.))``, so it is exactly 0 at ``k4 = 0``),

  $$h_1(t) = \frac{K_1}{b_1 - b_2}\left[(k_4 - b_2) e^{-b_2 t} + (b_1 - k_4) e^{-b_1 t}\right],
    \quad h_2(t) = \frac{K_1 k_3}{b_1 - b_2}\left[e^{-b_2 t} - e^{-b_1 t}\right].$$

  ``k4 = 0`` is the irreversible (FDG) model: ``b2 = 0``, and ``C2`` accumulates
  ``K1 k3/(k2 + k3) * integral(C_p)`` minus a transient (metabolic trapping).

The PET (total voxel) concentration is ``(1 - vb) C_T + vb C_b`` with ``C_T = C1 + C2``; here the
whole-blood concentration ``C_b`` is taken equal to the plasma input ``C_p`` (no separate
blood/plasma ratio or metabolite correction).

**Patlak.** For an irreversible tracer, ``C_T(t)/C_p(t) = Ki * int_0^t C_p / C_p(t) + V0`` once
the reversible compartment has equilibrated with plasma (``t >= t*``); [`patlak`][] fits this line
by ordinary least squares. For the 2TCM with ``k4 = 0``, ``Ki = K1 k3 / (k2 + k3)``
([`patlak_ki_2tcm`][]).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError
from ..units import MIN_TO_H

__all__ = [
    "FengInput",
    "feng_input",
    "one_tissue",
    "patlak",
    "patlak_ki_2tcm",
    "two_tissue",
    "two_tissue_components",
]

# Below this |x| the phi-functions use their Taylor series (closed forms lose ~eps/|x|).
_SERIES_BELOW = 0.05
_N_SERIES = 12


# ---------------------------------------------------------------------------- validation
def _concrete(x) -> np.ndarray | None:
    """`x` as a float numpy array, or None when it is traced (validation is then skipped)."""
    try:
        return np.asarray(x, dtype=float)
    except Exception:  # a jax tracer under jit/vmap/grad
        return None


def _fmt(v: np.ndarray) -> str:
    return repr(float(v)) if v.ndim == 0 else np.array2string(v.ravel()[:3], precision=6)


def _check(name: str, x, allowed: str, ok) -> None:
    """Raise InputError naming `name` if any concrete element of `x` is non-finite or fails `ok`."""
    v = _concrete(x)
    if v is None:
        return
    bad = ~np.isfinite(v)
    finite = np.where(bad, 0.0, v)
    bad = bad | ~ok(finite)
    if np.any(bad):
        shown = v if v.ndim == 0 else v[bad]
        raise InputError(f"{name} = {_fmt(shown)}; allowed: {allowed}")


def _check_rate(name: str, x) -> None:
    _check(name, x, "a finite rate constant >= 0 (1/h)", lambda v: v >= 0.0)


def _check_vb(vb) -> None:
    _check("vb", vb, "a blood volume fraction in [0, 1)", lambda v: (v >= 0.0) & (v < 1.0))


def _check_times(name: str, t) -> None:
    v = _concrete(t)
    if v is None:
        return
    if v.ndim > 1:
        raise InputError(f"{name} has shape {v.shape}; allowed: a scalar or a 1-D array of times")
    if not np.all(np.isfinite(v)):
        raise InputError(
            f"{name} contains non-finite values {_fmt(v[~np.isfinite(v)])}; "
            "allowed: finite times >= 0 h"
        )
    if np.any(v < 0):
        raise InputError(f"{name} contains negative times {_fmt(v[v < 0])} h; allowed: >= 0 h")
    if v.ndim == 1 and np.any(np.diff(v) < 0):
        i = int(np.argmax(np.diff(v) < 0))
        raise InputError(
            f"{name} is not sorted: {name}[{i + 1}] = {v[i + 1]} h < {name}[{i}] = {v[i]} h; "
            "allowed: ascending times"
        )


def _check_aif(aif) -> None:
    if not isinstance(aif, FengInput):
        raise InputError(f"aif is a {type(aif).__name__}; allowed: a twinjax.models.pet.FengInput")


def _check_feng(A1, A2, A3, lambda1, lambda2, lambda3, tau_h) -> None:
    for name, a in (("A1", A1), ("A2", A2), ("A3", A3)):
        _check(name, a, "a finite amplitude", lambda v: np.ones_like(v, dtype=bool))
    for name, lam in (("lambda1", lambda1), ("lambda2", lambda2), ("lambda3", lambda3)):
        _check(name, lam, "a finite rate < 0 (1/h)", lambda v: v < 0.0)
    _check("tau_h", tau_h, "a finite delay >= 0 h", lambda v: v >= 0.0)


# ---------------------------------------------------------------------------- phi-functions
def _series(x, coef):
    """Horner evaluation of sum_n coef[n] x^n."""
    out = jnp.zeros_like(x) + coef[-1]
    for c in coef[-2::-1]:
        out = out * x + c
    return out


_PHI1 = [1.0 / math.factorial(n + 1) for n in range(_N_SERIES)]
_PHI2 = [1.0 / math.factorial(n + 2) for n in range(_N_SERIES)]
_G = [1.0 / (math.factorial(n) * (n + 2)) for n in range(_N_SERIES)]


def _phi1(x):
    """(e^x - 1)/x = int_0^1 e^{xv} dv, for x <= 0."""
    small = jnp.abs(x) < _SERIES_BELOW
    xs = jnp.where(small, -1.0, x)
    return jnp.where(small, _series(x, _PHI1), jnp.expm1(xs) / xs)


def _phi2(x):
    """(e^x - 1 - x)/x^2 = int_0^1 (1 - v) e^{xv} dv, for x <= 0."""
    small = jnp.abs(x) < _SERIES_BELOW
    xs = jnp.where(small, -1.0, x)
    return jnp.where(small, _series(x, _PHI2), (jnp.expm1(xs) - xs) / (xs * xs))


def _g(x):
    """(x e^x - e^x + 1)/x^2 = int_0^1 v e^{xv} dv, for x <= 0."""
    small = jnp.abs(x) < _SERIES_BELOW
    xs = jnp.where(small, -1.0, x)
    return jnp.where(small, _series(x, _G), (xs * jnp.exp(xs) - jnp.expm1(xs)) / (xs * xs))


def _conv_exp_exp(b, lam, s):
    """int_0^s e^{-b(s-u)} e^{lam u} du for s >= 0, b >= 0, lam < 0."""
    d = lam + b
    pos = d > 0
    # where(), not abs(): keeps the derivative right at d = 0, where the function is smooth.
    x = jnp.where(pos, -d, d) * s  # always <= 0
    return jnp.exp(jnp.where(pos, lam, -b) * s) * s * _phi1(x)


def _conv_exp_texp(b, lam, s):
    """int_0^s e^{-b(s-u)} u e^{lam u} du for s >= 0, b >= 0, lam < 0."""
    d = lam + b
    pos = d > 0
    x = jnp.where(pos, -d, d) * s  # always <= 0
    return jnp.where(pos, jnp.exp(lam * s) * _phi2(x), jnp.exp(-b * s) * _g(x)) * s * s


# ---------------------------------------------------------------------------- input function
def _feng_eval(t, A1, A2, A3, l1, l2, l3, tau):
    s = t - tau
    sp = jnp.maximum(s, 0.0)
    cp = (A1 * sp - A2 - A3) * jnp.exp(l1 * sp) + A2 * jnp.exp(l2 * sp) + A3 * jnp.exp(l3 * sp)
    return jnp.where(s >= 0, cp, 0.0)


def feng_input(
    t_h: ArrayLike,
    A1: ArrayLike,
    A2: ArrayLike,
    A3: ArrayLike,
    lambda1: ArrayLike,
    lambda2: ArrayLike,
    lambda3: ArrayLike,
    tau_h: ArrayLike,
) -> Float[Array, " ..."]:
    r"""Feng et al. (1993) parametric arterial plasma input function ("model 2").

    ``Cp(t) = (A1 (t - tau) - A2 - A3) e^{lambda1 (t - tau)} + A2 e^{lambda2 (t - tau)}
    + A3 e^{lambda3 (t - tau)}`` for ``t >= tau`` and 0 before; it is continuous (0 at ``tau``).

    **Arguments:**
    - `t_h`: time(s) since injection (h), >= 0; a scalar or a sorted 1-D array.
    - `A1`: amplitude of the rising term (concentration/h, e.g. kBq/mL/h).
    - `A2`, `A3`: amplitudes of the two slower exponentials (concentration, e.g. kBq/mL).
    - `lambda1`, `lambda2`, `lambda3`: exponents (1/h), < 0.
    - `tau_h`: delay of the bolus arrival (h), >= 0.

    **Returns:** ``Cp`` at `t_h` (the unit of `A2`), float64, shape of `t_h`.

    **Raises:** [`InputError`][twinjax.InputError] for non-finite values, lambdas >= 0, a negative
    delay, negative or unsorted times.
    """
    _check_times("t_h", t_h)
    _check_feng(A1, A2, A3, lambda1, lambda2, lambda3, tau_h)
    args = [
        jnp.asarray(a, dtype=float) for a in (t_h, A1, A2, A3, lambda1, lambda2, lambda3, tau_h)
    ]
    return _feng_eval(*args)


class FengInput(eqx.Module):
    r"""Frozen parameters of a Feng (1993) input function; a pytree with array leaves.

    Differentiable and ``vmap``-able in every parameter (batch by ``jax.vmap`` over a FengInput
    whose leaves carry a leading batch axis; the functions here expect scalar leaves).

    **Arguments:**
    - `A1`: concentration/h. `A2`, `A3`: concentration (same unit as the output, e.g. kBq/mL).
    - `lambda1`, `lambda2`, `lambda3`: exponents (1/h), < 0.
    - `tau_h`: delay (h), >= 0.

    See [`feng_input`][] for the formula; `__call__(t_h)` evaluates it and `integral(t_h)` gives
    the exact ``int_0^t Cp``.
    """

    A1: Float[Array, ""]
    A2: Float[Array, ""]
    A3: Float[Array, ""]
    lambda1: Float[Array, ""]
    lambda2: Float[Array, ""]
    lambda3: Float[Array, ""]
    tau_h: Float[Array, ""]

    def __init__(self, A1, A2, A3, lambda1, lambda2, lambda3, tau_h=0.0):
        _check_feng(A1, A2, A3, lambda1, lambda2, lambda3, tau_h)
        self.A1 = jnp.asarray(A1, dtype=float)
        self.A2 = jnp.asarray(A2, dtype=float)
        self.A3 = jnp.asarray(A3, dtype=float)
        self.lambda1 = jnp.asarray(lambda1, dtype=float)
        self.lambda2 = jnp.asarray(lambda2, dtype=float)
        self.lambda3 = jnp.asarray(lambda3, dtype=float)
        self.tau_h = jnp.asarray(tau_h, dtype=float)

    @classmethod
    def fdg_reference(cls, concentration_scale: float = 1.0) -> FengInput:
        """The [18F]FDG plasma input of Feng, Huang and Wang (1993), converted to hours.

        Published in minutes and uCi/mL; the values used, as widely quoted from Feng 1993
        (model 2), are ``A1 = 851.1225 uCi/mL/min``, ``A2 = 21.8798 uCi/mL``, ``A3 = 20.8113
        uCi/mL``, ``lambda1 = -4.1339 /min``, ``lambda2 = -0.1191 /min``, ``lambda3 = -0.0104
        /min``, ``tau = 0.7371 min``. Amplitudes, exponents and the A2-lambda2 / A3-lambda3
        pairing agree with the defaults of public implementations (e.g. ``fengInput.m``: ``a =
        [851.1 21.88 20.81]``, ``lambda = [-4.134 -0.1191 -0.01043]``), which however use a delay
        of 0.735 min; the delay 0.7371 min has not been checked against the paper's table.

        **Arguments:** `concentration_scale` — multiplies `A1`, `A2`, `A3`: 1.0 keeps uCi/mL,
        ``37.0`` gives kBq/mL.

        **Returns:** a `FengInput` in hours (``A1`` in uCi/mL/h x scale, lambdas in 1/h).
        """
        per_min = 1.0 / MIN_TO_H  # 1/min -> 1/h
        c = concentration_scale
        return cls(
            A1=851.1225 * per_min * c,
            A2=21.8798 * c,
            A3=20.8113 * c,
            lambda1=-4.1339 * per_min,
            lambda2=-0.1191 * per_min,
            lambda3=-0.0104 * per_min,
            tau_h=0.7371 * MIN_TO_H,
        )

    def _terms(self):
        """(l_i, B_i): Cp(s) = A1 s e^{l1 s} + sum_i B_i e^{l_i s}."""
        lams = (self.lambda1, self.lambda2, self.lambda3)
        bs = (-(self.A2 + self.A3), self.A2, self.A3)
        return lams, bs

    def __call__(self, t_h: ArrayLike) -> Float[Array, " ..."]:
        """``Cp(t_h)`` (concentration); `t_h` in h, >= 0."""
        _check_times("t_h", t_h)
        t = jnp.asarray(t_h, dtype=float)
        return _feng_eval(
            t, self.A1, self.A2, self.A3, self.lambda1, self.lambda2, self.lambda3, self.tau_h
        )

    def integral(self, t_h: ArrayLike) -> Float[Array, " ..."]:
        """Exact ``int_0^t Cp(u) du`` (concentration x h) at `t_h` (h); 0 before the delay."""
        _check_times("t_h", t_h)
        t = jnp.asarray(t_h, dtype=float)
        return self._convolve(jnp.asarray(0.0), t)

    def _convolve(self, b, t):
        """int_0^t e^{-b (t-u)} Cp(u) du (b >= 0, 1/h): the response of e^{-b t} to Cp."""
        s = t - self.tau_h
        sp = jnp.maximum(s, 0.0)
        lams, bs = self._terms()
        out = self.A1 * _conv_exp_texp(b, self.lambda1, sp)
        for lam, coef in zip(lams, bs, strict=True):
            out = out + coef * _conv_exp_exp(b, lam, sp)
        return jnp.where(s > 0, out, 0.0)


# ---------------------------------------------------------------------------- tissue models
def _prepare(t_h, aif, rates: dict, vb=None):
    _check_aif(aif)
    _check_times("t_h", t_h)
    for name, r in rates.items():
        _check_rate(name, r)
    if vb is not None:
        _check_vb(vb)
    t = jnp.asarray(t_h, dtype=float)
    return t, [jnp.asarray(r, dtype=float) for r in rates.values()]


def one_tissue(
    t_h: ArrayLike,
    K1_per_h: ArrayLike,
    k2_per_h: ArrayLike,
    aif: FengInput,
    vb: ArrayLike = 0.0,
) -> Float[Array, " ..."]:
    """PET concentration of the one-tissue compartment model, exact for a Feng input.

    ``dC/dt = K1 Cp - k2 C``, ``C(0) = 0``; returns ``(1 - vb) C + vb Cp`` (whole blood taken as
    ``Cp``; decay-corrected units). See the module docs for the closed form.

    **Arguments:**
    - `t_h`: time(s) since injection (h), >= 0, sorted.
    - `K1_per_h`: plasma-to-tissue rate (1/h, i.e. mL plasma/mL tissue/h), >= 0.
    - `k2_per_h`: tissue-to-plasma rate (1/h), >= 0.
    - `aif`: the plasma input, a [`FengInput`][].
    - `vb`: blood volume fraction (-), in [0, 1).

    **Returns:** the voxel concentration at `t_h` (unit of the input's amplitudes), float64.
    """
    t, (K1, k2) = _prepare(t_h, aif, {"K1_per_h": K1_per_h, "k2_per_h": k2_per_h}, vb)
    vb = jnp.asarray(vb, dtype=float)
    ct = K1 * aif._convolve(k2, t)
    return (1.0 - vb) * ct + vb * _cp(aif, t)


def _cp(aif: FengInput, t):
    return _feng_eval(t, aif.A1, aif.A2, aif.A3, aif.lambda1, aif.lambda2, aif.lambda3, aif.tau_h)


def _two_tissue(t, K1, k2, k3, k4, aif):
    S = k2 + k3 + k4
    D = S * S - 4.0 * k2 * k4  # = (k2 - k4)^2 + k3^2 + 2 k3 (k2 + k4) >= 0
    pos = D > 0
    root = jnp.where(pos, jnp.sqrt(jnp.where(pos, D, 1.0)), 0.0)
    b1 = 0.5 * (S + root)
    # 2 k2 k4 / (S + root): exactly 0 at k4 = 0, no cancellation for k2 k4 << S^2.
    b2 = jnp.where(S > 0, 2.0 * k2 * k4 / jnp.where(S > 0, S + root, 1.0), 0.0)
    # D = 0 only for k3 = 0 and k2 = k4: then C1 = K1 e^{-k2 t} * Cp and C2 = 0.
    inv = jnp.where(pos, 1.0 / jnp.where(pos, b1 - b2, 1.0), 0.0)
    e_slow = aif._convolve(b2, t)
    e_fast = aif._convolve(b1, t)
    c1 = K1 * jnp.where(pos, inv * ((k4 - b2) * e_slow + (b1 - k4) * e_fast), e_slow)
    c2 = K1 * k3 * inv * (e_slow - e_fast)
    return c1, c2


def two_tissue_components(
    t_h: ArrayLike,
    K1_per_h: ArrayLike,
    k2_per_h: ArrayLike,
    k3_per_h: ArrayLike,
    k4_per_h: ArrayLike,
    aif: FengInput,
) -> tuple[Float[Array, " ..."], Float[Array, " ..."]]:
    """Free (``C1``) and bound/metabolised (``C2``) tissue concentrations of the 2TCM.

    ``dC1/dt = K1 Cp - (k2 + k3) C1 + k4 C2``, ``dC2/dt = k3 C1 - k4 C2``, zero initial state;
    exact for a Feng input (module docs). ``k4 = 0`` is the irreversible (trapping) model.

    **Arguments:** as [`two_tissue`][], without `vb`.

    **Returns:** ``(C1, C2)`` at `t_h`, concentrations per unit tissue volume (not scaled by
    ``1 - vb``), decay-corrected, float64.
    """
    rates = {"K1_per_h": K1_per_h, "k2_per_h": k2_per_h, "k3_per_h": k3_per_h, "k4_per_h": k4_per_h}
    t, (K1, k2, k3, k4) = _prepare(t_h, aif, rates)
    return _two_tissue(t, K1, k2, k3, k4, aif)


def two_tissue(
    t_h: ArrayLike,
    K1_per_h: ArrayLike,
    k2_per_h: ArrayLike,
    k3_per_h: ArrayLike,
    k4_per_h: ArrayLike,
    aif: FengInput,
    vb: ArrayLike = 0.0,
) -> Float[Array, " ..."]:
    """PET concentration of the two-tissue compartment model, exact for a Feng input.

    Returns ``(1 - vb) (C1 + C2) + vb Cp`` (whole blood taken as ``Cp``; decay-corrected units);
    see [`two_tissue_components`][] and the module docs.

    **Arguments:**
    - `t_h`: time(s) since injection (h), >= 0, sorted.
    - `K1_per_h`: plasma-to-tissue rate (1/h, mL plasma/mL tissue/h), >= 0.
    - `k2_per_h`: free tissue-to-plasma rate (1/h), >= 0.
    - `k3_per_h`: free-to-bound (e.g. FDG phosphorylation) rate (1/h), >= 0.
    - `k4_per_h`: bound-to-free rate (1/h), >= 0; 0 gives the irreversible model.
    - `aif`: the plasma input, a [`FengInput`][].
    - `vb`: blood volume fraction (-), in [0, 1).

    **Returns:** the voxel concentration at `t_h` (unit of the input's amplitudes), float64.
    """
    rates = {"K1_per_h": K1_per_h, "k2_per_h": k2_per_h, "k3_per_h": k3_per_h, "k4_per_h": k4_per_h}
    t, (K1, k2, k3, k4) = _prepare(t_h, aif, rates, vb)
    vb = jnp.asarray(vb, dtype=float)
    c1, c2 = _two_tissue(t, K1, k2, k3, k4, aif)
    return (1.0 - vb) * (c1 + c2) + vb * _cp(aif, t)


# ---------------------------------------------------------------------------- Patlak
def patlak_ki_2tcm(K1_per_h: ArrayLike, k2_per_h: ArrayLike, k3_per_h: ArrayLike) -> Array:
    """Net influx rate of the irreversible 2TCM, ``Ki = K1 k3 / (k2 + k3)`` (1/h).

    **Arguments:** `K1_per_h`, `k2_per_h`, `k3_per_h` (1/h), >= 0 with ``k2 + k3 > 0``.

    **Returns:** ``Ki`` (1/h, i.e. mL plasma/mL tissue/h), float64.
    """
    for name, r in (("K1_per_h", K1_per_h), ("k2_per_h", k2_per_h), ("k3_per_h", k3_per_h)):
        _check_rate(name, r)
    k2n, k3n = _concrete(k2_per_h), _concrete(k3_per_h)
    if k2n is not None and k3n is not None and np.any(k2n + k3n <= 0):
        raise InputError(f"k2_per_h + k3_per_h = {_fmt(k2n + k3n)}; allowed: > 0 (1/h)")
    K1, k2, k3 = (jnp.asarray(r, dtype=float) for r in (K1_per_h, k2_per_h, k3_per_h))
    return K1 * k3 / (k2 + k3)


def patlak(
    t_h: ArrayLike,
    c_tissue: ArrayLike,
    c_plasma: ArrayLike,
    *,
    t_star_h: ArrayLike,
    c_plasma_integral: ArrayLike | None = None,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    r"""Patlak graphical analysis: net influx rate ``Ki`` and intercept ``V0``.

    With ``x(t) = int_0^t Cp / Cp(t)`` and ``y(t) = C_T(t) / Cp(t)``, fits ``y = Ki x + V0`` by
    ordinary (unweighted) least squares over the samples with ``t >= t_star_h``.

    The integral of ``Cp`` is the cumulative trapezoid over the given samples, starting from
    ``Cp(0) = 0`` at ``t = 0`` (a zero sample is implied at ``t = 0`` when ``t_h[0] > 0``). The
    samples must therefore cover the bolus densely enough for the trapezoid rule (a Feng peak
    lasts ~1 min); pass `c_plasma_integral` (e.g. ``FengInput.integral(t_h)``) to use an exact
    integral instead. Jit-able: the selection ``t >= t_star_h`` is a weight mask.

    **Arguments:**
    - `t_h`: sorted sample times (h), >= 0, 1-D.
    - `c_tissue`: tissue (or PET voxel) concentrations at `t_h`.
    - `c_plasma`: plasma concentrations at `t_h`, > 0 at the fitted samples (same unit).
    - `t_star_h`: start of the linear phase (h), >= 0; at least 2 samples must lie at or after it.
    - `c_plasma_integral`: optional ``int_0^t Cp`` at `t_h` (concentration x h).

    **Returns:** ``(Ki, V0)``: slope (1/h) and intercept (-, a distribution volume), float64.
    For a voxel curve ``(1 - vb) C_T + vb Cp`` the slope is ``(1 - vb) Ki`` and ``vb`` adds to
    the intercept.
    """
    _check_times("t_h", t_h)
    t = jnp.asarray(t_h, dtype=float)
    ct = jnp.asarray(c_tissue, dtype=float)
    cp = jnp.asarray(c_plasma, dtype=float)
    if t.ndim != 1:
        raise InputError(f"t_h has shape {t.shape}; allowed: a 1-D array of sample times")
    for name, arr in (("c_tissue", ct), ("c_plasma", cp)):
        if arr.shape != t.shape:
            raise InputError(f"{name} has shape {arr.shape}; allowed: the shape of t_h, {t.shape}")
        _check(name, arr, "finite concentrations", lambda v: np.ones_like(v, dtype=bool))
    _check("t_star_h", t_star_h, "a finite time >= 0 h", lambda v: v >= 0.0)
    tn, tsn, cpn = _concrete(t_h), _concrete(t_star_h), _concrete(c_plasma)
    if tn is not None and tsn is not None:
        sel = tn >= tsn
        if int(np.sum(sel)) < 2:
            raise InputError(
                f"t_star_h = {float(tsn)!r} h leaves {int(np.sum(sel))} sample(s) at or after it "
                f"(last sample at {float(tn[-1])!r} h); allowed: a t_star_h with >= 2 samples "
                "at or after it"
            )
        if cpn is not None and np.any(cpn[sel] <= 0):
            raise InputError(
                f"c_plasma = {_fmt(cpn[sel][cpn[sel] <= 0])} at t >= t_star_h; allowed: > 0 "
                "at the fitted samples"
            )
    if c_plasma_integral is None:
        t0 = jnp.concatenate([jnp.zeros(1), t])
        c0 = jnp.concatenate([jnp.zeros(1), cp])
        icp = jnp.cumsum(0.5 * (c0[1:] + c0[:-1]) * jnp.diff(t0))
    else:
        icp = jnp.asarray(c_plasma_integral, dtype=float)
        if icp.shape != t.shape:
            raise InputError(
                f"c_plasma_integral has shape {icp.shape}; allowed: the shape of t_h, {t.shape}"
            )
    w = (t >= jnp.asarray(t_star_h, dtype=float)).astype(float)
    cps = jnp.where(w > 0, cp, 1.0)
    x = w * icp / cps
    y = w * ct / cps
    n = jnp.sum(w)
    xm = jnp.sum(x) / n
    ym = jnp.sum(y) / n
    dx = w * (x - xm)
    ki = jnp.sum(dx * (y - ym)) / jnp.sum(dx * dx)
    return ki, ym - ki * xm

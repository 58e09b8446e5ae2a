"""The uncertainty budget of an absorbed dose: how much of its variance comes from the kinetics
(the posterior of the time-integrated activity), the camera calibration, the segmented mass and
the S-value model.

In the spirit of the EANM guidance on uncertainty in molecular-radiotherapy dosimetry (Gear et
al. 2018, Eur J Nucl Med Mol Imaging 45:2456), which propagates independent sources to first
order (GUM), the budget works on the logarithm of the dose, ``ln D = ln TIA - ln c + ln S(m) +
ln e_S``:

- kinetics: the variance of ln TIA over the posterior draws (which already carries the scans'
  noise and per-scan calibration factors, if the fit modelled them);
- calibration: a systematic factor c of the camera (lognormal, `calibration_cv`);
- mass: the segmented mass m (lognormal, `mass_cv`), through the sensitivity ``d ln S / d ln m``
  of the sphere S-value, by automatic differentiation (about -1 for organs, where the energy is
  absorbed locally; closer to 0 for small lesions that lose electrons);
- S-value model: a lognormal factor e_S of the S-value itself (`s_value_cv`).

The shares are the variance fractions of ln D; `total_cv` combines them. A Monte Carlo draw of
all four sources (`monte_carlo_cv`) checks the first-order total.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from ._spheres import sphere_s_value

__all__ = ["dose_uncertainty_budget"]


def _sigma(cv: float) -> float:
    return math.sqrt(math.log1p(cv * cv))


def dose_uncertainty_budget(
    tia_draws_MBqh,
    nuclide_name: str,
    mass_kg: float,
    *,
    mass_cv: float = 0.1,
    calibration_cv: float = 0.05,
    s_value_cv: float = 0.05,
    density_kg_per_L: float = 1.0,
    n_monte_carlo: int = 20000,
    seed: int = 0,
) -> dict:
    """Variance budget of the absorbed dose of one region (module docs).

    **Arguments:**
    - `tia_draws_MBqh`: posterior draws of the region's TIA (MBq h), e.g.
      ``posterior.draws("tia_kidneys")``.
    - `nuclide_name`, `mass_kg`, `density_kg_per_L`: for the sphere S-value.
    - `mass_cv`, `calibration_cv`, `s_value_cv`: coefficients of variation of the segmented
      mass, the camera calibration and the S-value model (lognormal; 0 removes a source).
    - `n_monte_carlo`, `seed`: the Monte Carlo check.

    **Returns:** ``{"dose_Gy" (median), "total_cv", "monte_carlo_cv", "variance" (of ln D per
    source), "share" (fractions summing to 1), "mass_sensitivity" (d ln S / d ln m)}``.
    """
    tia = np.asarray(tia_draws_MBqh, dtype=float).reshape(-1)
    if tia.size < 2 or not np.all(np.isfinite(tia) & (tia > 0)):
        raise InputError(
            "tia_draws_MBqh must hold at least two finite, positive draws (MBq h); got "
            f"{tia.size} draws"
        )
    for field, v in (
        ("mass_cv", mass_cv),
        ("calibration_cv", calibration_cv),
        ("s_value_cv", s_value_cv),
    ):
        if not (isinstance(v, int | float) and math.isfinite(v) and 0 <= v < 10):
            raise InputError(f"{field} = {v!r}; allowed: a coefficient of variation in [0, 10)")
    if not (math.isfinite(mass_kg) and mass_kg > 0):
        raise InputError(f"mass_kg = {mass_kg!r}; allowed: finite and > 0 (kg)")

    def log_s(log_m):
        return jnp.log(
            sphere_s_value(nuclide_name, jnp.exp(log_m), density_kg_per_L=density_kg_per_L)
        )

    log_m = math.log(mass_kg)
    s0 = float(jnp.exp(log_s(log_m)))
    sens = float(jax.grad(log_s)(log_m))
    variance = {
        "kinetics": float(np.var(np.log(tia), ddof=1)),
        "calibration": _sigma(calibration_cv) ** 2,
        "mass": (sens * _sigma(mass_cv)) ** 2,
        "s_value": _sigma(s_value_cv) ** 2,
    }
    total = sum(variance.values())
    # Monte Carlo: resample the kinetics draws and draw the other sources independently.
    rng = np.random.default_rng(seed)
    t = rng.choice(tia, n_monte_carlo)
    m = mass_kg * np.exp(_sigma(mass_cv) * rng.standard_normal(n_monte_carlo))
    s = np.asarray(sphere_s_value(nuclide_name, m, density_kg_per_L=density_kg_per_L))
    c = np.exp(_sigma(calibration_cv) * rng.standard_normal(n_monte_carlo))
    e = np.exp(_sigma(s_value_cv) * rng.standard_normal(n_monte_carlo))
    mc = np.log(t / c * s * e)
    return {
        "dose_Gy": float(np.median(tia) * s0),
        "total_cv": math.sqrt(math.expm1(total)),
        "monte_carlo_cv": math.sqrt(math.expm1(float(np.var(mc, ddof=1)))),
        "variance": variance,
        "share": {k: v / total if total > 0 else 0.0 for k, v in variance.items()},
        "mass_sensitivity": sens,
    }

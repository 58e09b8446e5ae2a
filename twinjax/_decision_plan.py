"""A planned activity evaluated on posterior draws (private, for
[`twinjax.decision.optimise_activity`][]): the plan's schedule as a function of the
activity and interval, the smoothed exceedance probabilities, the compiled forward-mode
gradient through the model, and the exact response surface in the activity."""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .forecast import _NO_TIMES, _draw_outcomes, _effects
from .radiobiology import Tissue
from .schedule import Schedule


def _plan_schedule(plan: Mapping, a, interval) -> Schedule:
    """The skeleton schedule with its planned cycles at activity `a` (MBq) and times
    ``t_fixed + t_mult * interval``; traced or concrete `a` and `interval`."""
    sk = plan["skeleton"]
    hot_new = a / sk.mbq_per_nmol
    future = plan["future"] > 0
    time = plan["t_fixed"] + plan["t_mult"] * interval
    hot = jnp.where(future, hot_new, sk.hot_nmol)
    # Total ligand per planned cycle is fixed (`lig`; 0 = carrier-free): labelled replaces cold.
    cold = jnp.where(future, jnp.maximum(plan["lig"] - hot_new, 0.0), sk.cold_nmol)
    return eqx.tree_at(lambda s: (s.time_h, s.hot_nmol, s.cold_nmol), sk, (time, hot, cold))


def _smoothed(values, objective, cons_keys, thresholds, taus):
    """Utility and smoothed exceedance probabilities of a plan's draw values, as
    ``((utility, p_smooth), (utility, p_smooth, utility draws, constrained draws))``."""
    u = values[objective.region][objective.quantity]
    util = jnp.mean(u) if objective.statistic == "mean" else jnp.median(u)
    if cons_keys:
        x = jnp.stack([values[r][q] for r, q in cons_keys])
        # Smoothed indicator of exceedance: a logistic of width `taus`.
        p = jnp.mean(jax.nn.sigmoid((x - thresholds[:, None]) / taus[:, None]), axis=1)
    else:
        x, p = jnp.zeros((0, u.shape[0])), jnp.zeros(0)
    return (util, p), (util, p, u, x)


_PLAN_CACHE: dict = {}
_PLAN_CACHE_MAX = 8


def _plan_gradient(tpl, regions, masses, rtol, atol, objective, cons_keys, with_interval):
    """Jitted ``(a, interval, plan, theta, base, s_w, s_phys, cross, thresholds, taus) ->
    (jacobian, (U, P_smooth, utility draws, constrained draws))``: forward-mode derivatives of
    the utility and of the smoothed exceedance probabilities in the activity (and interval),
    cached by structure like the forecast's compiled function."""
    key = (id(tpl), tuple((r, s.tissue, s.kind, masses[r]) for r, s in regions.items()),
           float(rtol), float(atol), objective, cons_keys, with_interval)  # fmt: skip
    hit = _PLAN_CACHE.get(key)
    if hit is not None and hit[0] is tpl:
        return hit[1]
    one = _draw_outcomes(tpl, regions, masses, rtol, atol, response=False)
    per_draws = jax.vmap(one, in_axes=(0, None, None, None, None, None, None))

    def summaries(a, interval, plan, theta, base, s_w, s_phys, cross, thresholds, taus):
        values, _ = per_draws(theta, base, _plan_schedule(plan, a, interval), s_w, s_phys,
                              cross, jnp.asarray(_NO_TIMES))  # fmt: skip
        return _smoothed(values, objective, cons_keys, thresholds, taus)

    argnums = (0, 1) if with_interval else (0,)
    fn = jax.jit(jax.jacfwd(summaries, argnums=argnums, has_aux=True))
    if len(_PLAN_CACHE) >= _PLAN_CACHE_MAX:
        _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)))
    _PLAN_CACHE[key] = (tpl, fn)
    return fn


_SURFACE_QUANTITIES = ("tia_MBqh", "dose_Gy", "weighted_dose_Gy", "bed_Gy")


class _Surface:
    """Each draw's exact response surface in the planned activity (docs of
    `optimise_activity`): TIA and doses affine, BED quadratic, fitted through the model's
    values at the bounds and their midpoint; the effects follow as in `forecast`."""

    def __init__(self, model_values, lo, hi, interval, regions, masses, points=None,
                 alphas=None):  # fmt: skip
        self._model_values, self._interval = model_values, interval
        self.regions, self.masses = regions, masses
        # Per-draw radiosensitivity of regions whose outcomes were assimilated, else None.
        self.alphas = dict(alphas or {})
        known = sorted((points or {}).items())
        if len(known) >= 3:  # the lowest, a middle and the highest of the given plans
            chosen = [known[0], known[len(known) // 2], known[-1]]
            pts = np.array([float(a) for a, _ in chosen])
            vals = [v for _, v in chosen]
        else:
            pts = np.array([lo, 0.5 * (lo + hi), hi])
            vals = [model_values(float(a), interval) for a in pts]
        vander = np.vander(pts / hi, 3)  # columns (a/hi)^2, a/hi, 1: well conditioned
        self.hi = hi
        self.coef = {
            r: {q: jnp.asarray(np.linalg.solve(vander, np.stack([np.asarray(v[r][q])
                                                                for v in vals])))
                for q in _SURFACE_QUANTITIES}
            for r in regions
        }  # fmt: skip
        self.ab = {}
        for r, spec in regions.items():
            t = spec.tissue
            self.ab[r] = float(t.alpha_beta_Gy if isinstance(t, Tissue) else t[0])

    def values(self, a) -> dict:
        x = a / self.hi
        out = {}
        for r, spec in self.regions.items():
            res = {q: (c[0] * x + c[1]) * x + c[2] for q, c in self.coef[r].items()}
            res["eqd2_Gy"] = res["bed_Gy"] / (1.0 + 2.0 / self.ab[r])
            res["g"] = (
                (res["bed_Gy"] - res["weighted_dose_Gy"])
                * self.ab[r]
                / jnp.maximum(res["weighted_dose_Gy"] ** 2, 1e-300)
            )
            out[r] = _effects(res, spec, self.masses[r], alpha=self.alphas.get(r))
        return out  # fmt: skip

    def values_np(self, a, interval) -> dict:
        del interval  # fixed on the surface
        return self.values(jnp.asarray(float(a)))

    def gradient(self, objective, cons_keys):
        """Same signature and outputs as `_plan_gradient`'s function, on the surface."""

        def summaries(a, interval, plan, theta, base, s_w, s_phys, cross, thresholds, taus):
            return _smoothed(self.values(a), objective, cons_keys, thresholds, taus)

        return jax.jit(jax.jacfwd(summaries, argnums=(0,), has_aux=True))

    def deviation(self, a: float) -> float:
        """Largest relative deviation of the surface's dose and BED from the model at `a`."""
        model = self._model_values(float(a), self._interval)
        mine = self.values(jnp.asarray(float(a)))
        dev = 0.0
        for r in self.regions:
            for q in ("dose_Gy", "bed_Gy"):
                m, s = np.asarray(model[r][q]), np.asarray(mine[r][q])
                dev = max(dev, float(np.max(np.abs(s - m) / np.maximum(np.abs(m), 1e-300))))
        return dev

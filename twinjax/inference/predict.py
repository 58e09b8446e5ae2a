"""Posterior-predictive curves: what the twin says about unobserved times and regions.

[`predict_activity`][] pushes posterior draws through the model (one `vmap`-ed, jit-compiled
simulation) and returns activity curves per region; [`credible_band`][] summarises them. This is
the model-based imputation of what was not imaged: regions and times without scans get curves
with credible bands like the observed ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._compiled import CompiledCache
from ..models._simulate import simulate
from ..models.library import Template
from ..schedule import Schedule
from .model import ATOL, RTOL

__all__ = ["credible_band", "predict_activity"]


def predict_activity(
    posterior,
    template: Template,
    schedule: Schedule,
    times_h,
    rois: Sequence[str],
    *,
    max_draws: int = 200,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> dict[str, np.ndarray]:
    """Activity (MBq) of each region at `times_h` for (up to `max_draws`, evenly thinned)
    posterior draws: ``{roi: array (draws, times)}``. Without measurement noise: the twin's
    belief about the true activity."""
    names = posterior.names
    draws = {n: posterior.draws(n) for n in names}
    total = len(next(iter(draws.values())))
    idx = np.linspace(0, total - 1, min(max_draws, total)).round().astype(int)
    theta = {n: jnp.asarray(v[idx]) for n, v in draws.items()}
    base = {k: jnp.asarray(v, dtype=float) for k, v in posterior.prior.base.items()}
    times = jnp.asarray(times_h, dtype=float)
    run = _compiled(template, tuple(rois), float(rtol), float(atol))
    out = run(theta, base, schedule, times)
    return {r: np.asarray(v) for r, v in out.items()}


#: Compiled predictive simulators by (template identity, regions, tolerances): the draws,
#: typical parameters, schedule and times are traced, so later calls (another posterior of the
#: same template, the next cycle's figure) reuse the compilation while the schedule's
#: structure and the array shapes stay the same. The entry holds the template, so its id
#: cannot be reused while the entry lives (`twinjax._compiled`).
_COMPILED = CompiledCache(8)


def _compiled(template: Template, rois: tuple[str, ...], rtol: float, atol: float):
    groups = {r: template.roi(r) for r in rois}

    def one(th, base, schedule, times):
        params = template.derive({**base, **th})
        tr = simulate(template.model, params, schedule, times, rtol=rtol, atol=atol, throw=False)
        return {r: sum(tr.activity(g) for g in gs) for r, gs in groups.items()}

    def build():
        return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))

    return _COMPILED.get((id(template), rois, rtol, atol), template, build)


def credible_band(curves: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, ...]:
    """(lower, median, upper) of `curves` (draws, times) at the central `level` interval."""
    lo, hi = (1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0
    q = np.quantile(curves, [lo, 0.5, hi], axis=0)
    return q[0], q[1], q[2]

"""MCMC diagnostics the way Stan reports them, and a verdict stored with the result.

Split R-hat (rank-normalised), bulk and tail effective sample sizes (Vehtari et al. 2021,
Bayesian Analysis 16:667), divergent transitions, E-BFMI per chain (Betancourt 2016) and hits of
the maximum tree depth. The verdict is ``"warn"`` when any R-hat > 1.01, any ESS < 100 per chain,
any divergence, any E-BFMI < 0.3, any hit of the maximum tree depth or any ODE failure among
the draws; else ``"ok"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["Diagnostics", "diagnose"]


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    rhat: dict[str, float]
    ess_bulk: dict[str, float]
    ess_tail: dict[str, float]
    divergences: int
    ebfmi: tuple[float, ...]
    max_tree_depth_hits: int
    ode_failures: int
    verdict: str
    messages: tuple[str, ...]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _scalar_sites(samples: dict[str, np.ndarray], names: Sequence[str]):
    for n in names:
        x = np.asarray(samples[n])
        if x.ndim == 2:
            yield n, x


def diagnose(
    samples: dict[str, np.ndarray],
    stats: dict[str, np.ndarray],
    *,
    names: Sequence[str],
    max_tree_depth: int = 10,
) -> Diagnostics:
    """Diagnostics of MCMC `samples` (``(chains, draws)`` per site) and `stats` (``diverging``,
    ``energy``, ``tree_depth`` of shape ``(chains, draws)``)."""
    import arviz as az

    scalars = dict(_scalar_sites(samples, names))
    tia = {k: v for k, v in samples.items() if k.startswith("tia_") and np.ndim(v) == 2}
    scalars.update(tia)
    n_chains = next(iter(scalars.values())).shape[0]
    rhat, ess_b, ess_t = {}, {}, {}
    for n, x in scalars.items():
        rhat[n] = float(az.rhat(x, method="rank")) if n_chains > 1 else float("nan")
        ess_b[n] = float(az.ess(x, method="bulk"))
        ess_t[n] = float(az.ess(x, method="tail"))
    div = int(np.sum(stats.get("diverging", 0)))
    energy = np.asarray(stats["energy"]) if "energy" in stats else None
    ebfmi = tuple(float(v) for v in az.bfmi(energy)) if energy is not None else ()
    depth_hits = int(np.sum(np.asarray(stats.get("tree_depth", 0)) >= max_tree_depth))
    ode_fail = int(np.sum(~np.asarray(samples["ode_ok"], bool))) if "ode_ok" in samples else 0
    msgs = []
    bad_r = {n: r for n, r in rhat.items() if r > 1.01}
    if bad_r:
        msgs.append(f"R-hat > 1.01 for {', '.join(f'{n} ({r:.3f})' for n, r in bad_r.items())}")
    low = {n: e for n, e in ess_b.items() if e < 100 * n_chains}
    low.update({n: e for n, e in ess_t.items() if e < 100 * n_chains and n not in low})
    if low:
        msgs.append(
            f"ESS < 100 per chain for {', '.join(f'{n} ({e:.0f})' for n, e in low.items())}"
        )
    if div:
        msgs.append(f"{div} divergent transition(s)")
    if ebfmi and min(ebfmi) < 0.3:
        msgs.append(f"E-BFMI {min(ebfmi):.2f} < 0.3")
    if depth_hits:
        msgs.append(f"{depth_hits} transition(s) hit the maximum tree depth {max_tree_depth}")
    if ode_fail:
        msgs.append(f"{ode_fail} draw(s) with a failed ODE solve")
    return Diagnostics(
        rhat, ess_b, ess_t, div, ebfmi, depth_hits, ode_fail, "warn" if msgs else "ok", tuple(msgs)
    )

"""Outcome feedback: what the tumour did after treatment updates the twin.

Scans inform the kinetics (where the activity went); outcomes inform the lesion's own
biology, which scans cannot see: how radiosensitive it is and how fast it regrows. A
[`ResponseObservation`][] holds a PSA-like burden marker relative to its baseline (value /
value at the first administration) and/or the lesion's volume (mL, e.g. from CT), at hours on
the study clock. Its observation model is the response ODE of
[`twinjax.radiobiology.response_from_model`][], driven by the lesion's own dose rate from the
PBPK model, with lognormal measurement error (`marker_cv`, `volume_cv`).

**The update.** The joint posterior of kinetics ``theta`` and response parameters ``phi =
(alpha, doubling time)`` given scans and outcomes is ``p(theta | scans) p(phi)
p(outcomes | theta, phi)`` (outcomes and scans are conditionally independent given the
parameters, and ``phi`` does not enter the scans' likelihood). [`assimilate_outcomes`][]
draws ``K`` values of ``phi`` from its prior (lognormal around the region's tissue alpha and
growth doubling time) for each of ``N`` posterior draws of ``theta``, weights each pair by the
outcome likelihood, smooths the weights by Pareto-smoothed importance sampling (PSIS; Vehtari
et al., J Mach Learn Res 25(72), 2024) and resamples ``N K`` pairs. The Pareto ``k`` of the
weights says whether this is trustworthy: ``k < 0.7`` reliable (Vehtari et al.), above it the
outcomes are too informative for reweighting the prior draws (raise `per_draw`, or the update
is refused with ``strict``). The result is a [`twinjax.Posterior`][] whose draws carry
``<region>__alpha_per_Gy`` and ``<region>__doubling_time_h``; `twinjax.forecast` and
`twinjax.decision` then use each draw's own alpha (surviving fraction, individual TCP) and
doubling time (lesion volume and marker curves).

Units: time h (study clock: hours since the first administration), marker relative to
baseline (dimensionless), volume mL, alpha 1/Gy.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._compiled import CompiledCache
from ._errors import InputError
from .forecast import (
    RESPONSE_SEP,
    Region,
    _base,
    _region_masses,
    _s_values,
    _thinned_draws,
)
from .models.library import Template
from .radiobiology import Tissue, response_from_model
from .schedule import Schedule

__all__ = [
    "OutcomeUpdate",
    "OutcomeWarning",
    "ResponseObservation",
    "ResponsePrior",
    "assimilate_outcomes",
]

#: Pareto k above which importance weights are unreliable (Vehtari et al. 2024, Sec. 3).
PARETO_K_MAX = 0.7


class OutcomeWarning(UserWarning):
    """The outcome update's importance weights are unreliable (Pareto k above 0.7)."""


def _positive_array(field: str, value, *, allow_zero: bool = False) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{field} = {value!r}; allowed: numbers") from None
    bad = ~np.isfinite(a) | ((a < 0) if allow_zero else (a <= 0))
    if a.size == 0 or np.any(bad):
        shown = a[bad][:3].tolist() if a.size else []
        what = ">= 0" if allow_zero else "> 0"
        raise InputError(
            f"{field} = {shown if shown else value!r}; allowed: one or more finite values {what}"
        )
    return a


@dataclasses.dataclass(frozen=True)
class ResponseObservation:
    """Observed response of one lesion `region` at `time_h` (h, study clock, ascending):
    `marker` (burden marker relative to its value at the first administration, > 0; e.g.
    PSA / baseline PSA) and/or `volume_mL` (lesion volume, mL), each with its lognormal
    measurement CV (`marker_cv`, `volume_cv`, > 0)."""

    region: str
    time_h: np.ndarray
    marker: np.ndarray | None = None
    volume_mL: np.ndarray | None = None
    marker_cv: float = 0.2
    volume_cv: float = 0.15

    def __post_init__(self):
        if not (isinstance(self.region, str) and self.region):
            raise InputError(f"ResponseObservation.region = {self.region!r}; allowed: a name")
        where = f"ResponseObservation({self.region!r})"
        t = _positive_array(f"{where}.time_h", self.time_h, allow_zero=True)
        if np.any(np.diff(t) <= 0):
            raise InputError(f"{where}.time_h = {t.tolist()}; allowed: strictly ascending (h)")
        if self.marker is None and self.volume_mL is None:
            raise InputError(f"{where}: neither marker nor volume_mL given; allowed: one or both")
        object.__setattr__(self, "time_h", t)
        for name in ("marker", "volume_mL"):
            v = getattr(self, name)
            if v is not None:
                a = _positive_array(f"{where}.{name}", v)
                if a.shape != t.shape:
                    raise InputError(
                        f"{where}.{name} has {a.size} values for {t.size} times; allowed: one "
                        "per time"
                    )
                object.__setattr__(self, name, a)
        for name in ("marker_cv", "volume_cv"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 5:
                raise InputError(f"{where}.{name} = {v!r}; allowed: a CV in (0, 5)")


@dataclasses.dataclass(frozen=True)
class ResponsePrior:
    """Prior of a lesion's response parameters: lognormal around the region's tissue alpha
    with CV `alpha_cv` (default: the tissue's ``alpha_sd_per_Gy / alpha_per_Gy``, else 0.35)
    and around its growth doubling time with CV `doubling_time_cv`."""

    alpha_cv: float | None = None
    doubling_time_cv: float = 0.5

    def __post_init__(self):
        for name in ("alpha_cv", "doubling_time_cv"):
            v = getattr(self, name)
            if v is None and name == "alpha_cv":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 5:
                raise InputError(f"ResponsePrior.{name} = {v!r}; allowed: a CV in (0, 5)")


@dataclasses.dataclass
class OutcomeUpdate:
    """The result of [`assimilate_outcomes`][]: the updated `posterior` (resampled pairs of
    kinetics and response draws), the Pareto `pareto_k` of the smoothed weights, their
    effective sample size `ess` over `n_pairs` weighted pairs, the `verdict` (``"reliable"``
    or a sentence saying why not) and the prior and posterior medians and 90 % intervals of
    each response parameter (`summary`)."""

    posterior: object
    pareto_k: float
    ess: float
    n_pairs: int
    verdict: str
    summary: dict

    def to_dict(self) -> dict:
        return {"pareto_k": self.pareto_k, "ess": self.ess, "n_pairs": self.n_pairs,
                "verdict": self.verdict, "summary": self.summary}  # fmt: skip


def _sigma(cv: float) -> float:
    return math.sqrt(math.log1p(cv * cv))


#: Compiled response predictors by (template identity, regions, masses, tolerances).
_COMPILED = CompiledCache(8)


def _compiled(tpl: Template, specs: tuple, rtol: float, atol: float):
    """``f(theta, base, schedule, s_w, alpha, td, times) -> {region: {"marker", "volume_mL"}}``
    vmapped over pairs (theta, alpha, td) and jitted; `specs` holds each observed region's
    (name, tissue, growth, volume)."""

    def one(th, base, schedule, s_w, alpha, td, times):
        params = tpl.derive({**base, **th})
        out = {}
        for r, tissue, g, vol in specs:
            tr = response_from_model(
                tpl.model, params, schedule, s_w[r], times[r], tissue=tissue, volume_mL=vol,
                doubling_time_h=td[r], alpha_per_Gy=alpha[r], growth=g.growth,
                carrying_capacity_mL=g.carrying_capacity_mL,
                clearance_half_time_h=g.clearance_half_time_h,
                marker_half_life_h=g.marker_half_life_h, region=tpl.roi(r), rtol=rtol, atol=atol,
            )  # fmt: skip
            out[r] = {"marker": tr.marker, "volume_mL": tr.volume_mL}
        return out

    def build():
        return jax.jit(jax.vmap(one, in_axes=(0, None, None, None, 0, 0, None)))

    return _COMPILED.get((id(tpl), specs, rtol, atol), tpl, build)


def _lognormal_loglik(y: np.ndarray, median: np.ndarray, cv: float) -> np.ndarray:
    """Sum over observations of the lognormal log density of `y` (pairs, T) at `median`."""
    s = _sigma(cv)
    z = (np.log(y)[None, :] - np.log(np.maximum(median, 1e-300))) / s
    return np.sum(-0.5 * z * z - np.log(s * np.sqrt(2.0 * np.pi)) - np.log(y)[None, :], axis=1)


def assimilate_outcomes(
    posterior,
    template: Template,
    regions: Mapping[str, Region],
    schedule: Schedule,
    observations: Sequence[ResponseObservation],
    *,
    prior: ResponsePrior | Mapping[str, ResponsePrior] | None = None,
    max_draws: int = 200,
    per_draw: int = 8,
    rbe_alpha: float = 5.0,
    sex: str = "male",
    seed: int = 0,
    strict: bool = False,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> OutcomeUpdate:
    """Update a posterior with observed tumour response (module docs).

    **Arguments:**
    - `posterior`: a [`twinjax.Posterior`][] of `template` (from scans).
    - `template`: its template.
    - `regions`: region -> [`twinjax.forecast.Region`][]; each observed region must be a
      ``kind="tumour"`` region with a tissue alpha and a `growth` ([`TumourGrowth`][]).
    - `schedule`: the administrations given (h, MBq), as the twin holds them.
    - `observations`: [`ResponseObservation`][]s (several per region are concatenated).
    - `prior`: a [`ResponsePrior`][] for every region or region -> prior (default
      `ResponsePrior()`).
    - `max_draws`: posterior draws used (evenly thinned); `per_draw`: response draws per
      posterior draw (pairs = max_draws x per_draw).
    - `rbe_alpha`: RBE of alpha particles in the lesion's dose rate.
    - `sex`: for reference masses. `seed`: of the response draws and the resampling.
    - `strict`: refuse (``InputError``) an update whose Pareto k exceeds 0.7 instead of
      warning ([`OutcomeWarning`][]).
    - `rtol`, `atol`: ODE tolerances.

    **Returns:** an [`OutcomeUpdate`][].
    """
    obs = list(observations)
    if not obs or not all(isinstance(o, ResponseObservation) for o in obs):
        raise InputError(
            f"observations = {observations!r}; allowed: one or more ResponseObservation"
        )
    if not isinstance(schedule, Schedule):
        raise InputError(f"schedule must be a twinjax.Schedule, got {type(schedule).__name__}")
    for name, v, lo in (("max_draws", max_draws, 1), ("per_draw", per_draw, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"{name} = {v!r}; allowed: an integer >= {lo}")
    by_region: dict[str, list[ResponseObservation]] = {}
    for o in obs:
        by_region.setdefault(o.region, []).append(o)
    specs, priors = [], {}
    for r in by_region:
        spec = regions.get(r)
        if spec is None:
            raise InputError(
                f"ResponseObservation.region = {r!r}; allowed: a region of the twin, "
                f"{sorted(regions)}"
            )
        t = spec.tissue
        if spec.kind != "tumour" or not isinstance(t, Tissue) or t.alpha_per_Gy is None:
            raise InputError(
                f"region {r!r}: allowed: a kind='tumour' Region whose Tissue has alpha_per_Gy "
                "(the response model needs the lesion's radiosensitivity)"
            )
        if spec.growth is None:
            raise InputError(
                f"region {r!r} has no growth; allowed: Region(growth=TumourGrowth(...)) for "
                "outcome observations (the response model needs the untreated doubling time)"
            )
        p = prior.get(r) if isinstance(prior, Mapping) else prior
        p = p if p is not None else ResponsePrior()
        if not isinstance(p, ResponsePrior):
            raise InputError(f"prior for region {r!r} = {p!r}; allowed: a ResponsePrior")
        priors[r] = p
        specs.append(r)
    first = float(np.asarray(schedule.time_h)[0])
    for o in obs:
        if o.time_h[0] < first:
            raise InputError(
                f"ResponseObservation({o.region!r}).time_h = {o.time_h[0]!r} h is before the "
                f"first administration ({first:g} h); allowed: times on the study clock after it"
            )

    masses = _region_masses(posterior, template, {r: regions[r] for r in specs}, sex)
    s_w, _, _ = _s_values(schedule.nuclide, masses, rbe_alpha, {})
    idx, theta = _thinned_draws(posterior, max_draws)
    theta = {k: v for k, v in theta.items() if k in posterior.names}  # kinetics only
    n = len(idx)
    pairs = n * per_draw
    key = jax.random.key(seed)
    z = np.asarray(jax.random.normal(key, (pairs, len(specs), 2)))
    alpha, td, prior_summary = {}, {}, {}
    for j, r in enumerate(specs):
        t, g, p = regions[r].tissue, regions[r].growth, priors[r]
        cv_a = p.alpha_cv
        if cv_a is None:
            cv_a = (t.alpha_sd_per_Gy / t.alpha_per_Gy) if t.alpha_sd_per_Gy else 0.35
        alpha[r] = t.alpha_per_Gy * np.exp(_sigma(cv_a) * z[:, j, 0])
        td[r] = g.doubling_time_h * np.exp(_sigma(p.doubling_time_cv) * z[:, j, 1])
        prior_summary[r] = {"alpha_per_Gy": alpha[r], "doubling_time_h": td[r]}

    times, data = {}, {}
    for r, os_ in by_region.items():
        t_all = np.concatenate([o.time_h for o in os_])
        order = np.argsort(t_all, kind="stable")
        times[r] = t_all[order]
        data[r] = [(o, order) for o in os_]
    specs_key = tuple(
        (r, regions[r].tissue, regions[r].growth, float(masses[r] * 1e3)) for r in specs
    )
    run = _compiled(template, specs_key, float(rtol), float(atol))
    th_pairs = {k: jnp.repeat(v, per_draw, axis=0) for k, v in theta.items()}
    with jax.numpy_dtype_promotion("standard"):
        pred = run(
            th_pairs, _base(posterior), schedule, {r: float(s_w[r]) for r in specs},
            {r: jnp.asarray(alpha[r]) for r in specs}, {r: jnp.asarray(td[r]) for r in specs},
            {r: jnp.asarray(times[r]) for r in specs},
        )  # fmt: skip

    loglik = np.zeros(pairs)
    for r, os_ in by_region.items():
        t_sorted = times[r]
        for o in os_:
            cols = np.searchsorted(t_sorted, o.time_h)
            for name, cv in (("marker", o.marker_cv), ("volume_mL", o.volume_cv)):
                y = getattr(o, name)
                if y is not None:
                    m = np.asarray(pred[r][name])[:, cols]
                    loglik += _lognormal_loglik(y, m, cv)
    bad = ~np.isfinite(loglik)
    if np.all(bad):
        raise InputError(
            "assimilate_outcomes: the response model gave no finite likelihood for any draw; "
            "check the observations' units (marker relative to baseline, volume in mL)"
        )
    loglik = np.where(bad, -np.inf, loglik)

    import arviz as az

    lw, k_hat = az.psislw(loglik - np.max(loglik))
    lw, k_hat = np.asarray(lw, dtype=float), float(np.asarray(k_hat))
    w = np.exp(lw - np.max(lw))
    w /= w.sum()
    ess = float(1.0 / np.sum(w * w))
    if k_hat < PARETO_K_MAX:
        verdict = "reliable"
    else:
        verdict = (
            f"unreliable: Pareto k = {k_hat:.2f} >= {PARETO_K_MAX} (the outcomes are far more "
            f"informative than the prior draws; raise per_draw above {per_draw} or max_draws)"
        )
        if strict:
            raise InputError(f"assimilate_outcomes: {verdict}")
        warnings.warn(f"assimilate_outcomes: {verdict}", OutcomeWarning, stacklevel=2)

    # Systematic resampling of the pairs (low variance; Kitagawa 1996).
    rng = np.random.default_rng(seed)
    u = (rng.random() + np.arange(pairs)) / pairs
    pick = np.minimum(np.searchsorted(np.cumsum(w), u), pairs - 1)
    draw_of_pair = np.repeat(idx, per_draw)[pick]
    samples = {}
    for k in posterior.samples:
        if RESPONSE_SEP in k:
            continue  # response draws of an earlier update are replaced
        samples[k] = posterior.draws(k)[draw_of_pair][None]
    summary = {}
    for r in specs:
        samples[f"{r}{RESPONSE_SEP}alpha_per_Gy"] = alpha[r][pick][None]
        samples[f"{r}{RESPONSE_SEP}doubling_time_h"] = td[r][pick][None]
        summary[r] = {
            q: {
                "prior": _quantiles(prior_summary[r][q]),
                "posterior": _quantiles(samples[f"{r}{RESPONSE_SEP}{q}"][0]),
            }
            for q in ("alpha_per_Gy", "doubling_time_h")
        }
    provenance = dict(posterior.provenance)
    provenance["outcomes"] = {
        "n_observations": int(sum(o.time_h.size for o in obs)),
        "regions": specs,
        "seed": int(seed),
        "pareto_k": k_hat,
        "ess": ess,
    }
    updated = dataclasses.replace(
        posterior, samples=samples, sample_stats={}, provenance=provenance,
        method=f"{posterior.method}+outcomes",
    )  # fmt: skip
    return OutcomeUpdate(updated, k_hat, ess, pairs, verdict, summary)


def _quantiles(x: np.ndarray) -> dict:
    q5, q50, q95 = np.quantile(np.asarray(x, dtype=float), [0.05, 0.5, 0.95])
    return {"median": float(q50), "q5": float(q5), "q95": float(q95)}

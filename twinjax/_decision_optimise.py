"""The best activity of the next cycle(s) (private, re-exported by
[`twinjax.decision`][]): [`optimise_activity`][] (Adam on an augmented Lagrangian, then
an exact polish) and its [`ActivityPlan`][]."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._decision_library import (
    _administrations,
    _check_activity,
    _check_cycles,
    _check_history,
    _check_nuclide,
    _check_positive,
    _finite,
    _first_time,
    _with_plan,
)
from ._decision_plan import _plan_gradient, _plan_schedule, _Surface
from ._decision_rank import Constraint, Objective, _check_constraints, _json_float, _statistic
from ._errors import InputError
from .forecast import (
    _NO_TIMES,
    RESPONSE_SEP,
    Region,
    _band,
    _base,
    _compiled_outcomes,
    _region_masses,
    _region_quantities,
    _s_values,
    _thinned_draws,
)
from .models.library import Template
from .nuclides import nuclide as _lookup
from .schedule import Schedule

#: Adam steps between updates of the augmented Lagrangian's multipliers.
_DUAL_EVERY = 10


# ------------------------------------------------------------------------------ optimisation
@dataclasses.dataclass
class ActivityPlan:
    """The result of [`optimise_activity`][].

    `activity_MBq`: the activity of each planned cycle; `interval_h`: the interval (h) when it
    was optimised or spaces several planned cycles, else None; `utility`: the objective's
    statistic over all draws at that plan, `utility_interval` its central 90 % interval;
    `violation`: constraint label -> exact empirical P(violation) at that plan; `feasible`:
    all within their `max_probability`; `history`: the optimiser's trace (one dict per Adam
    step: activity, interval, utility, its derivative in the activity, smoothed and empirical
    P(violation), multipliers, loss); `polish`: the exact evaluations of the final bisection;
    `optimiser_activity_MBq` / `optimiser_interval_h`: the optimiser's answer before polishing;
    `next_time_h`: the first planned cycle (h); `schedule`: history + plan; `note`: how the
    answer was reached."""

    activity_MBq: float
    interval_h: float | None
    utility: float
    violation: dict[str, float]
    feasible: bool
    history: list[dict]
    utility_interval: tuple[float, float] = (math.nan, math.nan)
    optimiser_activity_MBq: float = math.nan
    optimiser_interval_h: float | None = None
    next_time_h: float = 0.0
    polish: list[dict] = dataclasses.field(default_factory=list)
    note: str = ""
    n_draws: int = 0
    schedule: Schedule | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready: every field, the schedule as a list of administrations."""
        out = {
            "activity_MBq": self.activity_MBq,
            "interval_h": self.interval_h,
            "next_time_h": self.next_time_h,
            "utility": _json_float(self.utility),
            "utility_interval": [_json_float(x) for x in self.utility_interval],
            "violation": dict(self.violation),
            "feasible": bool(self.feasible),
            "optimiser_activity_MBq": self.optimiser_activity_MBq,
            "optimiser_interval_h": self.optimiser_interval_h,
            "n_draws": self.n_draws,
            "note": self.note,
            "history": [dict(h) for h in self.history],
            "polish": [dict(p) for p in self.polish],
        }
        if self.schedule is not None:
            out["schedule"] = [dataclasses.asdict(a) for a in _administrations(self.schedule)]
        return out


def optimise_activity(
    posterior,
    template: Template,
    history: Schedule | None,
    regions: Mapping[str, Region],
    objective: Objective,
    constraints: Sequence[Constraint],
    *,
    next_time_h: float,
    ligand_nmol: float | None = None,
    n_future_cycles: int = 1,
    bounds_MBq: tuple[float, float] = (1000.0, 12000.0),
    optimise_interval: bool = False,
    interval_bounds_h: tuple[float, float] = (672.0, 2016.0),
    interval_h: float | None = None,
    steps: int = 100,
    learning_rate: float = 0.1,
    max_draws: int = 100,
    batch_draws: int | None = None,
    rbe_alpha: float = 5.0,
    sex: Literal["male", "female"] = "male",
    seed: int = 0,
    activity0_MBq: float | None = None,
    temperature: float = 0.25,
    penalty: float = 10.0,
    polish: bool = True,
    polish_rtol: float = 1e-4,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    method: Literal["auto", "surface", "gradient"] = "auto",
    points: Mapping[float, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
) -> ActivityPlan:
    """The activity of the next cycle(s) (and optionally the interval) that maximises the
    expected utility of history + plan under chance constraints.

    **Method.** The activity is ``lo + (hi - lo) sigmoid(z)`` within `bounds_MBq` (the interval
    likewise within `interval_bounds_h`); Adam (Optax, cosine-decayed `learning_rate`) follows
    forward-mode derivatives through the model's ODE for every draw (the same draws, masses
    and S-values as [`twinjax.forecast.forecast`][]). An empirical P(violation) is a step
    function of the activity, so its gradient is taken from a smoothed one: the mean over
    draws of ``sigmoid((x - threshold) / tau)``, `tau` = `temperature` x the draws' standard
    deviation of x at the current iterate, inside an augmented Lagrangian (multipliers updated
    every 10 steps, `penalty` rho). The best iterate feasible on the EXACT empirical
    probabilities is kept. Polishing then uses exact evaluations only: when the constrained
    quantities increase with the activity draw by draw and the utility does too (checked at
    the bounds and the optimiser's answer), the constrained optimum is the largest activity
    whose empirical P(violation) <= max_probability for every constraint, found by bisection
    to `polish_rtol`; when only the constraints are monotone, an infeasible answer is moved
    to the largest feasible activity below it. Every reported P(violation) is the exact
    fraction of draws.

    **Arguments:**
    - `posterior`, `template`, `regions`, `max_draws`, `rbe_alpha`, `sex`, `rtol`, `atol`: as
      `forecast` (`Region.growth` is ignored here).
    - `history`: the administrations already given (a `Schedule`, its label is the plan's), or
      None before the first cycle.
    - `objective`, `constraints`: an [`Objective`][] and [`Constraint`][]s; quantities as the
      forecast's (``bed_Gy``, ``dose_Gy``, ``eqd2_Gy``, ``ntcp``, ``tcp``, ...).
    - `next_time_h`: first planned cycle (h); with `optimise_interval` and a history, only the
      initial guess (the first planned cycle is then one interval after the last given one).
    - `ligand_nmol`: total ligand per planned cycle (nmol; labelled replaces unlabelled as the
      activity changes); default that of the history's last administration, carrier-free
      without history. Must hold the labelled amount at the upper activity bound.
    - `n_future_cycles`: planned cycles, all at the optimised activity.
    - `bounds_MBq`: activity range (MBq), ``0 < lo < hi <= MAX_ACTIVITY_MBQ[nuclide]``.
    - `optimise_interval`, `interval_bounds_h`: also optimise the interval (h) in that range.
    - `interval_h`: fixed spacing of planned cycles, or the initial interval when optimised
      (default ``next_time_h`` - the last given time, or 1008 h without history).
    - `steps`, `learning_rate`: Adam steps and initial learning rate on the logits.
    - `batch_draws`, `seed`: optional random mini-batches of draws per step (seeded), for
      large posteriors; exact evaluations always use all draws.
    - `activity0_MBq`: initial activity (default the last given one, clipped to the bounds,
      or the geometric mean of the bounds).
    - `temperature`, `penalty`: smoothing width (in draw standard deviations) and the
      augmented Lagrangian's rho.
    - `polish`, `polish_rtol`: the exact bisection and its relative tolerance.
    - `method`: ``"gradient"`` differentiates through the model's ODE at every step (any
      plan); ``"surface"`` uses each draw's exact response surface in the activity (below);
      ``"auto"`` (default) uses the surface where it is exact and the gradient elsewhere.
    - `points`: planned activity (MBq) -> model values ``{region: {quantity: (draws,)}}`` of
      this very plan already computed on the same draws (e.g. a scenario-library forecast of
      history + the same planned cycles: ``Forecast.values[name]``); three of them replace
      the surface's own model evaluations. The check at the answer still solves the model, so
      points from other draws or another plan are caught (and the gradient method is used).

    **Response surface.** With the total ligand of every planned cycle fixed (`ligand_nmol`
    given or taken from the history) and the interval fixed, the activity only decides which
    fraction of a fixed amount of ligand is labelled. Labelled and unlabelled molecules share
    every rate, so the total ligand's (nonlinear, saturable) kinetics do not depend on the
    activity and the labelled amount is a linear tracer of them: every draw's TIA and dose are
    exactly affine in the planned activity, and its BED (a quadratic form of the dose rate) is
    exactly quadratic. Three model evaluations (the bounds and their midpoint) give each
    draw's coefficients; the optimiser and the polish then run on these closed forms (EQD2,
    NTCP, TCP and surviving fraction follow from them as in `forecast`), and one more model
    evaluation at the answer checks the surface (largest relative deviation of dose and BED,
    reported in `note`; above 1e-6 the gradient method is used instead). Cost: four
    forecasts instead of one per optimiser step and bisection step.

    **Returns:** an [`ActivityPlan`][].
    """
    # ---- validation, before any computation
    if method not in ("auto", "surface", "gradient"):
        raise InputError(f"method = {method!r}; allowed: 'auto', 'surface', 'gradient'")
    if not isinstance(objective, Objective):
        raise InputError(f"objective = {objective!r}; allowed: an Objective")
    cons = _check_constraints(constraints)
    _check_history(history)
    if not isinstance(template, Template):
        raise InputError(f"template = {template!r}; allowed: a twinjax Template")
    if not regions:
        raise InputError("regions is empty; allowed: region name -> Region")
    for field, (r, q) in [("objective", (objective.region, objective.quantity))] + [
        (f"constraint {c.label!r}", (c.region, c.quantity)) for c in cons
    ]:
        if r not in regions:
            raise InputError(f"{field}: region {r!r} is not in regions {sorted(regions)}")
        known = _region_quantities(regions[r])
        if q not in known:
            raise InputError(f"{field}: quantity {q!r} of region {r!r}; allowed: {list(known)}")
    nuc = _check_nuclide("nuclide", history.nuclide if history is not None else template.nuclide)
    lo, hi = _bounds("bounds_MBq", bounds_MBq, "MBq")
    _check_activity("bounds_MBq[1]", hi, nuc)
    n_future = _check_cycles("n_future_cycles", n_future_cycles)
    for field, v in (("steps", steps), ("max_draws", max_draws)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if field == "steps" else 1):
            raise InputError(
                f"{field} = {v!r}; allowed: an integer >= {0 if field == 'steps' else 1}"
            )
    for field, v in (("learning_rate", learning_rate), ("temperature", temperature),
                     ("penalty", penalty), ("polish_rtol", polish_rtol)):  # fmt: skip
        _check_positive(field, v, "dimensionless")
    if not _finite(next_time_h):
        raise InputError(f"next_time_h = {next_time_h!r}; allowed: a finite time >= 0 (h)")
    first = _first_time(history, next_time_h, 0.0)
    t_last = None if history is None else float(np.asarray(history.time_h)[-1])
    if interval_h is None:
        interval_h = first - t_last if history is not None else 1008.0
    interval_h = _check_positive("interval_h", interval_h, "h")
    if optimise_interval:
        ilo, ihi = _bounds("interval_bounds_h", interval_bounds_h, "h")
        if history is None and n_future == 1:
            raise InputError(
                "optimise_interval with no history and n_future_cycles = 1: the interval has "
                "nothing to space; allowed: a history or n_future_cycles >= 2"
            )
        if history is not None and ilo <= float(np.asarray(history.duration_h)[-1]):
            raise InputError(
                f"interval_bounds_h[0] = {ilo!r} h is not longer than the last infusion; allowed: "
                "a longer lower bound"
            )
        interval_h = float(np.clip(interval_h, ilo, ihi))
    if ligand_nmol is None and history is not None:
        last = _administrations(history)[-1]
        ligand_nmol = last.ligand_nmol
    mbq = _lookup(nuc).mbq_per_nmol
    if ligand_nmol is not None:
        _check_positive("ligand_nmol", ligand_nmol, "nmol")
        if ligand_nmol < hi / mbq * (1.0 - 1e-9):
            raise InputError(
                f"ligand_nmol = {ligand_nmol!r} nmol is less than the {hi / mbq:.4g} nmol of "
                f"labelled ligand at the upper activity bound {hi:g} MBq; allowed: ligand_nmol >= "
                "that, or a lower bounds_MBq[1]"
            )
    if batch_draws is not None and (
        isinstance(batch_draws, bool) or not isinstance(batch_draws, int) or batch_draws < 2
    ):
        raise InputError(f"batch_draws = {batch_draws!r}; allowed: None or an integer >= 2")
    if activity0_MBq is None:
        last_given = None if history is None else _administrations(history)[-1].activity_MBq
        activity0_MBq = math.sqrt(lo * hi) if last_given is None else last_given
    a0 = float(np.clip(_check_positive("activity0_MBq", activity0_MBq, "MBq"), lo, hi))

    # ---- the shared pieces of `forecast`: draws, masses, S-values, compiled model
    plain = {r: dataclasses.replace(s, growth=None) for r, s in regions.items()}
    masses = _region_masses(posterior, template, plain, sex)
    _, theta = _thinned_draws(posterior, max_draws)
    n_draws = len(next(iter(theta.values())))
    base = _base(posterior)
    placed = {r: np.asarray(v.centroid_mm, float) for r, v in plain.items() if v.centroid_mm}
    s_w, s_phys, cross = _s_values(nuc, masses, rbe_alpha, placed)
    given = history.n_administrations if history is not None else 0
    k = np.arange(n_future, dtype=float)
    skeleton = _with_plan(history, nuc, first + interval_h * k, a0, ligand_nmol)
    if optimise_interval and history is not None:  # first planned = last given + interval
        t_fixed, t_mult = np.full(n_future, t_last), k + 1.0
    else:
        t_fixed, t_mult = np.full(n_future, first), k
    hist_t = np.asarray(skeleton.time_h)[:given]
    plan = {
        "skeleton": skeleton,
        "t_fixed": jnp.asarray(np.concatenate([hist_t, t_fixed])),
        "t_mult": jnp.asarray(np.concatenate([np.zeros(given), t_mult])),
        "future": jnp.asarray(np.concatenate([np.zeros(given), np.ones(n_future)])),
        "lig": jnp.asarray(0.0 if ligand_nmol is None else float(ligand_nmol)),
    }
    exact_fn = _compiled_outcomes(template, plain, masses, rtol, atol)
    cons_keys = tuple((c.region, c.quantity) for c in cons)
    thresholds = jnp.asarray([c.threshold for c in cons], dtype=float)
    p_max = np.asarray([c.max_probability for c in cons], dtype=float)
    lo_q, hi_q = _band(0.9)

    def model_values(a, interval) -> dict:
        values, _ = exact_fn(theta, base, _plan_schedule(plan, a, interval), s_w, s_phys,
                             cross, _NO_TIMES)  # fmt: skip
        return values

    values_of = model_values  # replaced by the response surface where it is exact

    def exact(a, interval) -> dict:
        """Utility, interval, empirical P(violation) and draws at a plan, on all draws."""
        values = values_of(a, interval)
        u = np.asarray(values[objective.region][objective.quantity])
        x = [np.asarray(values[r][q]) for r, q in cons_keys]
        p = {c.label: float(np.mean(xc > c.threshold)) for c, xc in zip(cons, x, strict=True)}
        return {
            "activity_MBq": float(a), "interval_h": float(interval),
            "utility": _statistic(u, objective.statistic),
            "utility_interval": tuple(float(v) for v in np.quantile(u, [lo_q, hi_q])),
            "violation": p,
            "feasible": all(p[c.label] <= c.max_probability + 1e-12 for c in cons),
            "x": x,
        }  # fmt: skip

    # ---- Adam on the logits, augmented Lagrangian on the smoothed probabilities
    def to_x(v, lo_, hi_):
        return math.log((v - lo_) / (hi_ - v)) if lo_ < v < hi_ else (8.0 if v >= hi_ else -8.0)

    z = [to_x(a0, lo, hi)] + ([to_x(interval_h, ilo, ihi)] if optimise_interval else [])
    z = jnp.asarray(z, dtype=float)
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.02))
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(z)
    exact_surface = not optimise_interval and ligand_nmol is not None
    if method == "surface" and not exact_surface:
        raise InputError(
            "method = 'surface' needs a fixed interval and a fixed total ligand per planned "
            "cycle (ligand_nmol, or a history to take it from); allowed here: 'gradient', 'auto'"
        )
    surface = None
    if method != "gradient" and exact_surface:
        alphas = {r: theta.get(f"{r}{RESPONSE_SEP}alpha_per_Gy") for r in plain}
        surface = _Surface(model_values, lo, hi, interval_h, plain, masses, points, alphas)
        values_of = surface.values_np
        grad_fn = surface.gradient(objective, cons_keys)
    else:
        grad_fn = _plan_gradient(template, plain, masses, rtol, atol, objective, cons_keys,
                                 bool(optimise_interval))  # fmt: skip
    rng = np.random.default_rng(seed)
    lam = np.zeros(len(cons))
    start = exact(a0, interval_h)
    u_scale = abs(start["utility"]) if start["utility"] != 0 else 1.0
    spread = np.array([np.std(xc) for xc in start["x"]])
    trace: list[dict] = []
    best = None
    for step in range(steps):
        s_a = 1.0 / (1.0 + math.exp(-float(z[0])))
        a = lo + (hi - lo) * s_a
        if optimise_interval:
            s_i = 1.0 / (1.0 + math.exp(-float(z[1])))
            interval = ilo + (ihi - ilo) * s_i
        else:
            interval = interval_h
        th = theta
        if batch_draws is not None and batch_draws < n_draws:
            sel = rng.choice(n_draws, batch_draws, replace=False)
            th = {n_: v[sel] for n_, v in theta.items()}
        floor = 1e-9 * np.maximum(np.abs(np.asarray(thresholds)), 1.0)
        taus = jnp.asarray(np.maximum(temperature * spread, floor))
        jac, (util, p_s, _, x) = grad_fn(
            jnp.asarray(a), jnp.asarray(interval), plan, th, base, s_w, s_phys, cross,
            thresholds, taus,
        )  # fmt: skip
        util, p_s, x = float(util), np.asarray(p_s), np.asarray(x)
        # jacfwd's layout: (dU, dP) per output, each a tuple over (activity[, interval]).
        du = np.array([float(v) for v in jac[0]])
        dp = np.stack([np.asarray(v, dtype=float) for v in jac[1]], axis=-1)  # (constraints, k)
        g = p_s - p_max
        weight = np.maximum(0.0, lam + penalty * g)
        loss = -util / u_scale + float(
            np.sum((np.maximum(0.0, lam + penalty * g) ** 2 - lam**2) / (2 * penalty))
        )
        grad_v = -du / u_scale + weight @ dp
        # chain rule to the logits: d(value)/dz = (hi - lo) s (1 - s)
        dz = [(hi - lo) * s_a * (1 - s_a)]
        if optimise_interval:
            dz.append((ihi - ilo) * s_i * (1 - s_i))
        grad_z = jnp.asarray(grad_v * np.asarray(dz))
        p_emp = {c.label: float(np.mean(x[i] > c.threshold)) for i, c in enumerate(cons)}
        feas = all(p_emp[c.label] <= c.max_probability + 1e-12 for c in cons)
        trace.append({
            "step": step, "activity_MBq": a, "interval_h": interval, "utility": util,
            "d_utility_d_activity": float(du[0]),
            "d_utility_d_interval": float(du[1]) if optimise_interval else None,
            "violation_smooth": {c.label: float(p_s[i]) for i, c in enumerate(cons)},
            "violation": p_emp, "feasible": feas,
            "multiplier": {c.label: float(lam[i]) for i, c in enumerate(cons)}, "loss": loss,
        })  # fmt: skip
        if feas and (best is None or util > best[0]):
            best = (util, a, interval)
        if len(cons):
            spread = np.std(x, axis=1)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int step counts and floats
            updates, state = opt.update(grad_z, state, z)
            z = optax.apply_updates(z, updates)
        if len(cons) and (step + 1) % _DUAL_EVERY == 0:
            lam = np.maximum(0.0, lam + penalty * g)
    if steps and best is None:  # no feasible iterate: the last one, for the polish to repair
        best = (trace[-1]["utility"], trace[-1]["activity_MBq"], trace[-1]["interval_h"])
    a_opt, i_opt = (best[1], best[2]) if best is not None else (a0, interval_h)
    at = exact(a_opt, i_opt)
    note = (
        "Adam on the smoothed augmented Lagrangian (best empirically feasible iterate)"
        if steps
        else "no optimiser steps (the initial activity)"
    )
    polished: list[dict] = []
    if polish:
        at, msg, polished = _polish(exact, at, lo, hi, i_opt, cons, polish_rtol)
        note += "; " + msg
    if surface is not None:
        dev = surface.deviation(at["activity_MBq"])
        if not dev <= 1e-6:  # not the exact surface this model was assumed to have
            return optimise_activity(
                posterior, template, history, regions, objective, constraints,
                next_time_h=next_time_h, ligand_nmol=ligand_nmol,
                n_future_cycles=n_future_cycles, bounds_MBq=bounds_MBq,
                optimise_interval=optimise_interval, interval_bounds_h=interval_bounds_h,
                interval_h=interval_h, steps=steps, learning_rate=learning_rate,
                max_draws=max_draws, batch_draws=batch_draws, rbe_alpha=rbe_alpha, sex=sex,
                seed=seed, activity0_MBq=activity0_MBq, temperature=temperature,
                penalty=penalty, polish=polish, polish_rtol=polish_rtol, rtol=rtol, atol=atol,
                # given points that do not fit: the surface from its own evaluations; an
                # own surface that does not fit: the model is not linear in the activity
                method="gradient" if points is None else method, points=None,
            )  # fmt: skip
        note += f"; exact response surface (deviation at the answer {dev:.1e})"
    interval_out = i_opt if optimise_interval else (interval_h if n_future > 1 else None)
    final = _plan_schedule(plan, at["activity_MBq"], i_opt)
    return ActivityPlan(
        activity_MBq=at["activity_MBq"], interval_h=interval_out, utility=at["utility"],
        violation=at["violation"], feasible=at["feasible"], history=trace,
        utility_interval=at["utility_interval"], optimiser_activity_MBq=float(a_opt),
        optimiser_interval_h=float(i_opt) if optimise_interval else None,
        next_time_h=float(np.asarray(final.time_h)[given]), polish=polished, note=note,
        n_draws=n_draws, schedule=final,
    )  # fmt: skip


def _bounds(field: str, bounds, unit: str) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise InputError(f"{field} = {bounds!r}; allowed: (lower, upper) in {unit}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise InputError(f"{field} = {bounds!r}; allowed: 0 < lower < upper, finite ({unit})")
    return lo, hi


def _polish(exact, at: dict, lo: float, hi: float, interval: float, cons, rtol: float):
    """Exact polish of the optimiser's answer `at` (module docs of `optimise_activity`):
    returns the new evaluation, a note and the evaluations made."""
    evals: list[dict] = []

    def ev(a):
        e = exact(a, interval)
        evals.append({k: v for k, v in e.items() if k != "x"})
        return e

    e_lo, e_hi = ev(lo), ev(hi)

    def ordered(x0, x1):
        return all(np.all(p <= q + 1e-9 * np.abs(q) + 1e-12) for p, q in zip(x0, x1, strict=True))

    mono_c = ordered(e_lo["x"], at["x"]) and ordered(at["x"], e_hi["x"])
    tol_u = 1e-9 * max(abs(at["utility"]), 1e-300)
    mono_u = e_lo["utility"] <= at["utility"] + tol_u and at["utility"] <= e_hi["utility"] + tol_u

    def largest_feasible(left, right):  # feasible(left), infeasible(right)
        while right - left > rtol * left:
            mid = 0.5 * (left + right)
            e = ev(mid)
            left, right = (mid, right) if e["feasible"] else (left, mid)
        return left

    if not mono_c:
        return at, "not polished: a constrained quantity is not increasing in the activity", evals
    if mono_u:
        if e_hi["feasible"]:
            return e_hi, "polished: the upper activity bound is feasible", evals
        if not e_lo["feasible"]:
            return e_lo, "infeasible even at the lower activity bound (the least violating)", evals
        left, right = (at["activity_MBq"], hi) if at["feasible"] else (lo, at["activity_MBq"])
        e = ev(largest_feasible(left, right)) if right - left > rtol * left else at
        if not e["feasible"]:
            e = ev(left)
        return e, "polished by bisection: the largest activity meeting every constraint", evals
    if at["feasible"]:
        return at, "kept: the utility is not increasing in the activity, constraints met", evals
    if not e_lo["feasible"]:
        return e_lo, "infeasible even at the lower activity bound (the least violating)", evals
    e = ev(largest_feasible(lo, at["activity_MBq"]))
    return e, "restored feasibility by bisection below the optimiser's activity", evals

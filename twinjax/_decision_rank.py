"""Ranking scenarios (private, re-exported by [`twinjax.decision`][]): what to decide (an
[`Objective`][], chance [`Constraint`][]s) and [`rank`][], which orders a forecast's
scenarios into a [`Ranking`][]."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ._decision_library import _check_name, _finite
from ._errors import InputError
from .forecast import Forecast, _band

_STATISTICS = ("mean", "median")


# ------------------------------------------------------------------------------ what to decide
@dataclasses.dataclass(frozen=True)
class Objective:
    """What to maximise: the `statistic` (``"mean"``: expected utility; ``"median"``) over the
    posterior draws of `quantity` (a `Forecast` quantity, e.g. ``"bed_Gy"``, ``"tcp"``) in
    `region`."""

    region: str = "tumour"
    quantity: str = "bed_Gy"
    statistic: Literal["mean", "median"] = "mean"

    def __post_init__(self):
        _check_name("Objective.region", self.region)
        _check_name("Objective.quantity", self.quantity)
        if self.statistic not in _STATISTICS:
            raise InputError(
                f"Objective.statistic = {self.statistic!r}; allowed: 'mean' or 'median'"
            )


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A chance constraint: ``P(quantity in region > threshold) <= max_probability`` over the
    posterior draws, e.g. ``Constraint("kidneys", "bed_Gy", 40.0, 0.05)``. The quantity is
    cumulative over the scenario's whole schedule, cycles already given included (scenarios
    carry history + plan). `threshold` in the quantity's unit (Gy for dose/BED/EQD2)."""

    region: str
    quantity: str
    threshold: float
    max_probability: float = 0.05

    def __post_init__(self):
        _check_name("Constraint.region", self.region)
        _check_name("Constraint.quantity", self.quantity)
        if not _finite(self.threshold):
            raise InputError(f"Constraint.threshold = {self.threshold!r}; allowed: a finite number")
        p = self.max_probability
        if not _finite(p) or not 0.0 <= p < 1.0:
            raise InputError(f"Constraint.max_probability = {p!r}; allowed: in [0, 1)")

    @property
    def label(self) -> str:
        """``"kidneys bed_Gy > 40"``: the key of this constraint in reports."""
        return f"{self.region} {self.quantity} > {self.threshold:g}"


def constraint_label(constraint: Constraint) -> str:
    """The key of `constraint` in `Ranking.violation` and `ActivityPlan.violation`, e.g.
    ``"kidneys bed_Gy > 40"``."""
    if not isinstance(constraint, Constraint):
        raise InputError(f"constraint = {constraint!r}; allowed: a Constraint")
    return constraint.label


def _check_constraints(constraints) -> tuple[Constraint, ...]:
    cons = tuple(constraints)
    for c in cons:
        if not isinstance(c, Constraint):
            raise InputError(f"constraints contains {c!r}; allowed: Constraint objects")
    labels = [c.label for c in cons]
    if len(set(labels)) != len(labels):
        raise InputError(f"constraints {labels} repeat; allowed: distinct constraints")
    return cons


# ------------------------------------------------------------------------------ ranking
@dataclasses.dataclass
class Ranking:
    """Scenarios ranked by expected utility under chance constraints (see [`rank`][]).

    `scenarios`: names in rank order (feasible ones first, each group by decreasing utility);
    `utility`: the objective's statistic over the draws; `utility_interval`: its central
    `level` credible interval; `violation`: scenario -> constraint label -> P(violation);
    `feasible`: every P(violation) <= its `max_probability`; `p_best`: fraction of draws in
    which the scenario has the highest utility among the feasible ones (ties shared); `best`:
    the feasible scenario of highest utility, None when none is feasible."""

    scenarios: list[str]
    utility: dict[str, float]
    utility_interval: dict[str, tuple[float, float]]
    violation: dict[str, dict[str, float]]
    feasible: dict[str, bool]
    p_best: dict[str, float]
    best: str | None
    objective: Objective
    constraints: tuple[Constraint, ...]
    level: float = 0.9
    n_draws: int = 0

    @property
    def least_violating(self) -> str:
        """The scenario whose worst constraint is least exceeded (P - max_probability), ties
        broken by utility: the one to discuss when none is feasible."""

        def excess(s):
            worst = max(
                (self.violation[s][c.label] - c.max_probability for c in self.constraints),
                default=0.0,
            )
            return (worst, -self.utility[s])

        return min(self.scenarios, key=excess)

    def table(self) -> list[dict]:
        """One row per scenario in rank order: ``rank``, ``scenario``, ``utility``, ``lower``,
        ``upper``, ``feasible``, ``p_best`` and ``P(<constraint label>)`` per constraint."""
        rows = []
        for i, s in enumerate(self.scenarios):
            lo, hi = self.utility_interval[s]
            row = {"rank": i + 1, "scenario": s, "utility": _json_float(self.utility[s]),
                   "lower": _json_float(lo), "upper": _json_float(hi),
                   "feasible": bool(self.feasible[s]), "p_best": float(self.p_best[s])}  # fmt: skip
            row.update({f"P({k})": float(v) for k, v in self.violation[s].items()})
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        """JSON-ready: every field (intervals as lists, non-finite numbers as None), the rows of
        `table` under ``"table"``, and when none is feasible the ``least_violating`` scenario
        with a ``note``."""
        out = {
            "objective": dataclasses.asdict(self.objective),
            "constraints": [{**dataclasses.asdict(c), "label": c.label} for c in self.constraints],
            "level": self.level,
            "n_draws": self.n_draws,
            "scenarios": list(self.scenarios),
            "utility": {s: _json_float(v) for s, v in self.utility.items()},
            "utility_interval": {
                s: [_json_float(a), _json_float(b)] for s, (a, b) in self.utility_interval.items()
            },
            "violation": {s: dict(v) for s, v in self.violation.items()},
            "feasible": {s: bool(v) for s, v in self.feasible.items()},
            "p_best": dict(self.p_best),
            "best": self.best,
            "table": self.table(),
        }
        if self.best is None:
            lv = self.least_violating
            out["least_violating"] = lv
            out["note"] = (
                "no scenario satisfies every chance constraint; the least violating is "
                f"{lv!r} with P(violation) {self.violation[lv]}"
            )
        return out


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _statistic(draws: np.ndarray, statistic: str) -> float:
    return float(np.mean(draws) if statistic == "mean" else np.median(draws))


def rank(
    forecast: Forecast,
    objective: Objective,
    constraints: Sequence[Constraint] = (),
    *,
    level: float = 0.9,
) -> Ranking:
    """Rank the scenarios of a forecast by expected utility under chance constraints.

    Per scenario: the utility (`objective.statistic` of `objective.quantity` in
    `objective.region` over the draws) and its central `level` interval; P(violation) of each
    constraint (fraction of draws above the threshold); feasible when every P(violation) <= its
    `max_probability`. Draws are shared across scenarios (the same draw index is the same
    plausible patient), so `p_best` compares scenarios draw by draw: the fraction of draws in
    which a feasible scenario has the highest utility value among the feasible ones (a tie
    shares the draw equally; infeasible scenarios get 0).

    **Arguments:**
    - `forecast`: a [`twinjax.forecast.Forecast`][] of the scenarios.
    - `objective`: an [`Objective`][] to maximise.
    - `constraints`: [`Constraint`][]s on organs at risk (default none).
    - `level`: credible level of `utility_interval`, in (0, 1).

    **Returns:** a [`Ranking`][]; `best` is None when no scenario is feasible (its `to_dict`
    then names the least-violating scenario).
    """
    if not isinstance(forecast, Forecast):
        raise InputError(f"forecast = {type(forecast).__name__}; allowed: a twinjax Forecast")
    if not isinstance(objective, Objective):
        raise InputError(f"objective = {objective!r}; allowed: an Objective")
    cons = _check_constraints(constraints)
    lo_q, hi_q = _band(level)
    names = list(forecast.values)
    u = {s: np.asarray(forecast._get(s, objective.region, objective.quantity)) for s in names}
    x = {s: {c.label: np.asarray(forecast._get(s, c.region, c.quantity)) for c in cons}
         for s in names}  # fmt: skip
    sizes = {a.shape for a in u.values()} | {a.shape for d in x.values() for a in d.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise InputError(
            f"forecast draws have shapes {sorted(sizes)}; allowed: one draw axis of the same "
            "length in every scenario (the same posterior draws)"
        )
    for s, v in u.items():
        if np.any(np.isnan(v)):
            raise InputError(f"scenario {s!r}: {objective.quantity} has NaN draws")
    utility = {s: _statistic(u[s], objective.statistic) for s in names}
    interval = {
        s: tuple(float(q) for q in np.quantile(u[s], [lo_q, hi_q], method="inverted_cdf"
                                               if not np.all(np.isfinite(u[s])) else "linear"))
        for s in names
    }  # fmt: skip
    violation = {s: {c.label: float(np.mean(x[s][c.label] > c.threshold)) for c in cons}
                 for s in names}  # fmt: skip
    # P is a fraction k/n: compare with a tolerance far below 1/n, so p = max_p is feasible.
    feasible = {
        s: all(violation[s][c.label] <= c.max_probability + 1e-12 for c in cons) for s in names
    }
    ok = [s for s in names if feasible[s]]
    p_best = dict.fromkeys(names, 0.0)
    if ok:
        stack = np.stack([u[s] for s in ok])  # (feasible, draws)
        top = stack == stack.max(axis=0, keepdims=True)
        share = top / top.sum(axis=0, keepdims=True)
        for i, s in enumerate(ok):
            p_best[s] = float(share[i].mean())
    best = max(ok, key=lambda s: utility[s]) if ok else None  # first of equal utilities
    order = sorted(names, key=lambda s: (not feasible[s], -utility[s]))
    return Ranking(
        scenarios=order, utility=utility, utility_interval=interval, violation=violation,
        feasible=feasible, p_best=p_best, best=best, objective=objective, constraints=cons,
        level=level, n_draws=int(next(iter(sizes))[0]),
    )  # fmt: skip

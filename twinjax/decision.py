"""Decisions under uncertainty: which treatment to give next, ranked by expected utility under
chance constraints on the organs at risk, and the best activity of the next cycle.

Every posterior draw is one plausible patient, and a [`twinjax.forecast.Forecast`][] evaluates
every scenario on the SAME draws, so scenarios are compared draw by draw:

- [`scenario_library`][] builds the options (activity per cycle x number of cycles x interval x
  radionuclide x ligand amount), each the administrations already given (`history`) plus the
  planned ones, and [`standard_of_care`][] the reference regimen (7.4 GBq x 6 every 6 weeks).
- [`rank`][] orders forecast scenarios by the expected (or median) value of an [`Objective`][]
  (e.g. tumour BED or TCP), marks as infeasible those that break a chance [`Constraint`][]
  (``P(quantity > threshold) <= max_probability``, e.g. P(cumulative kidney BED > 40 Gy) <= 5 %),
  and reports for each feasible scenario the probability that it is the best one.
- [`optimise_activity`][] maximises the expected utility over the activity of the next cycle
  (and optionally the interval) with Optax, forward-mode gradients through the model's ODE
  (`twinjax.radiobiology.bed_from_model`) and an augmented Lagrangian on a smoothed exceedance
  probability; the answer is then polished on the exact empirical probability (module docs of
  the function) and always reported with it.

**Tandem 177Lu + 225Ac**: ``"tandem"`` in `scenario_library`'s nuclides offers cycles of both
labels given together (activity pairs, `DEFAULT_ACTIVITIES_MBQ["tandem"]`), forecast as a
[`twinjax.Tandem`][]: both labels in one ODE, so they compete for the same receptors, and the
BED of the summed RBE-weighted dose rate carries the Lea-Catcheside cross term
``(2 / (alpha/beta)) int R_Lu(t) int_0^t R_Ac(s) exp(-mu (t - s)) ds dt`` (with its mirror).
Likewise a history in one label continued in another becomes one Tandem schedule (e.g. 177Lu
cycles then 225Ac cycles), with the repair between them exact. `optimise_activity` plans the
next single-label cycle only.

Units: activity MBq (names print GBq from 1000 MBq), time h, ligand nmol, dose and BED Gy,
probabilities in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._errors import InputError
from .forecast import (
    _NO_TIMES,
    Forecast,
    Region,
    Scenario,
    _band,
    _base,
    _compiled_outcomes,
    _draw_outcomes,
    _effects,
    _region_masses,
    _region_quantities,
    _s_values,
    _thinned_draws,
)
from .models.library import Template
from .nuclides import nuclide as _lookup
from .radiobiology import Tissue
from .schedule import Administration, Schedule
from .tandem import Tandem

__all__ = [
    "MAX_ACTIVITY_MBQ",
    "ActivityPlan",
    "Constraint",
    "Objective",
    "Ranking",
    "constraint_label",
    "optimise_activity",
    "rank",
    "scenario_library",
    "standard_of_care",
]

#: Largest activity per administration (MBq) that scenario builders and the optimiser accept,
#: per radionuclide they can forecast. A guard against unit slips (GBq or kBq typed as MBq), not
#: a clinical limit: several times the per-cycle activities in use (7.4 GBq of
#: [177Lu]Lu-PSMA-617 in VISION; about 100 kBq/kg, 7-10 MBq, of [225Ac]Ac-PSMA-617).
MAX_ACTIVITY_MBQ = {"Lu-177": 30000.0, "Ac-225": 50.0}

#: Per-cycle activities (MBq) of the default scenario library, per radionuclide; for
#: ``"tandem"``, (177Lu MBq, 225Ac MBq) pairs given together, in the range of the tandem
#: protocols of Khreish et al. (Eur J Nucl Med Mol Imaging 47:721, 2020).
DEFAULT_ACTIVITIES_MBQ = {
    "Lu-177": (6000.0, 7400.0, 9000.0),
    "Ac-225": (4.0, 6.0, 8.0),
    "tandem": ((6000.0, 4.0), (7400.0, 6.0)),
}

#: The labels of a ``"tandem"`` option, in the order of its activity pairs.
TANDEM_LABELS = ("Lu-177", "Ac-225")

#: About 100 ug of PSMA-617 (1042 g/mol): the psma617 templates' default administration (nmol).
DEFAULT_LIGAND_NMOL = 96.0

_STATISTICS = ("mean", "median")

#: Adam steps between updates of the augmented Lagrangian's multipliers.
_DUAL_EVERY = 10


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


def _check_name(field: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(f"{field} = {value!r}; allowed: a non-empty string")


def _finite(v) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(v)


def _check_constraints(constraints) -> tuple[Constraint, ...]:
    cons = tuple(constraints)
    for c in cons:
        if not isinstance(c, Constraint):
            raise InputError(f"constraints contains {c!r}; allowed: Constraint objects")
    labels = [c.label for c in cons]
    if len(set(labels)) != len(labels):
        raise InputError(f"constraints {labels} repeat; allowed: distinct constraints")
    return cons


# ------------------------------------------------------------------------------ scenarios
def _administrations(schedule: Schedule) -> list[Administration]:
    """The administrations of a concrete schedule (carrier-free where it has no cold ligand)."""
    t, hot, cold, dur = (
        np.asarray(x, dtype=float)
        for x in (schedule.time_h, schedule.hot_nmol, schedule.cold_nmol, schedule.duration_h)
    )
    mbq = schedule.mbq_per_nmol
    # fmt: off
    return [
        Administration(float(t[i]), float(hot[i] * mbq), schedule.nuclide,
                       float(hot[i] + cold[i]) if cold[i] > 0 else None, float(dur[i]))
        for i in range(t.size)
    ]
    # fmt: on


def _history_end(history: Schedule | None) -> float | None:
    """When the last administration given ends (h), or None without history."""
    if history is None:
        return None
    return float(np.asarray(history.time_h)[-1] + np.asarray(history.duration_h)[-1])


def _check_history(history) -> None:
    if history is not None and not isinstance(history, Schedule):
        raise InputError(
            f"history = {type(history).__name__}; allowed: a twinjax.Schedule of the "
            "administrations already given, or None"
        )


def _check_nuclide(field: str, name: str, *, tandem: bool = False) -> str:
    allowed = sorted(MAX_ACTIVITY_MBQ) + (["tandem"] if tandem else [])
    if isinstance(name, str) and name.strip().lower() == "tandem":
        if tandem:
            return "tandem"
        raise InputError(
            f"{field} = {name!r}; allowed: {allowed} (tandem options come from "
            "scenario_library(nuclides=[..., 'tandem']))"
        )
    try:
        canonical = _lookup(name).name
    except Exception:
        raise InputError(f"{field} = {name!r}; allowed: {allowed}") from None
    if canonical not in MAX_ACTIVITY_MBQ:
        raise InputError(f"{field} = {name!r}; allowed: {allowed}")
    return canonical


def _check_activity(field: str, value, nuc: str):
    if nuc == "tandem":
        pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
        if len(pair) != len(TANDEM_LABELS):
            raise InputError(
                f"{field} = {value!r} for tandem; allowed: ({TANDEM_LABELS[0]} MBq, "
                f"{TANDEM_LABELS[1]} MBq) pairs"
            )
        return tuple(
            _check_activity(f"{field} ({lab})", v, lab)
            for lab, v in zip(TANDEM_LABELS, pair, strict=True)
        )
    hi = MAX_ACTIVITY_MBQ[nuc]
    if not _finite(value) or not 0.0 < value <= hi:
        raise InputError(
            f"{field} = {value!r} MBq for {nuc}; allowed: > 0 and <= {hi:g} MBq "
            "(twinjax.decision.MAX_ACTIVITY_MBQ)"
        )
    return float(value)


def _check_positive(field: str, value, unit: str) -> float:
    if not _finite(value) or value <= 0:
        raise InputError(f"{field} = {value!r}; allowed: a finite number > 0 ({unit})")
    return float(value)


def _check_cycles(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{field} = {value!r}; allowed: an integer >= 1")
    return int(value)


def _with_plan(history, nuc, times, activity, ligand) -> Schedule | Tandem:
    """History + bolus administrations of `activity` MBq at `times`: one Schedule, or a Tandem
    when the plan is ``"tandem"`` (a (177Lu, 225Ac) pair per cycle; the 177Lu administration
    carries the ligand amount, the 225Ac one is carrier-free) or its label differs from the
    history's."""
    given = _administrations(history) if history is not None else []
    if nuc == "tandem":
        plan = [Administration(float(t), activity[0], TANDEM_LABELS[0], ligand) for t in times]
        plan += [Administration(float(t), activity[1], TANDEM_LABELS[1]) for t in times]
    else:
        plan = [Administration(float(t), activity, nuc, ligand) for t in times]
    admins = given + plan
    if len({a.nuclide for a in admins}) > 1:
        return Tandem.from_administrations(admins)
    return Schedule.from_administrations(admins)


def _first_time(history, next_time_h, interval_h) -> float:
    """The first planned administration: `next_time_h`, else one interval after the last given
    one, else 0; it must come after the history ends."""
    end = _history_end(history)
    if next_time_h is None:
        return 0.0 if end is None else float(np.asarray(history.time_h)[-1]) + interval_h
    if not _finite(next_time_h) or next_time_h < 0:
        raise InputError(f"next_time_h = {next_time_h!r}; allowed: a finite time >= 0 (h)")
    if end is not None and next_time_h <= end:
        raise InputError(
            f"next_time_h = {next_time_h!r} h is not after the history's last administration "
            f"(ends at {end:g} h); allowed: a later time"
        )
    return float(next_time_h)


def standard_of_care(
    *,
    nuclide: str = "Lu-177",
    activity_MBq: float = 7400.0,
    n_cycles: int = 6,
    interval_h: float = 1008.0,
    ligand_nmol: float | None = DEFAULT_LIGAND_NMOL,
    start_h: float | None = None,
    history: Schedule | None = None,
    template: Template | None = None,
) -> Scenario:
    """The fixed reference regimen, named ``"standard_of_care"``: `n_cycles` x `activity_MBq`
    every `interval_h` (default 7.4 GBq x 6 every 6 weeks, as in VISION).

    With a `history`, its administrations count towards the `n_cycles` and the remaining ones
    follow (none once the regimen is complete: the scenario is then the history alone).

    **Arguments:**
    - `nuclide`: the label (one of `MAX_ACTIVITY_MBQ`).
    - `activity_MBq`: activity per cycle (MBq).
    - `n_cycles`: cycles in the regimen, given ones included.
    - `interval_h`: time between cycles (h).
    - `ligand_nmol`: total ligand per cycle (nmol), None for carrier-free.
    - `start_h`: first planned cycle (h; default 0, or one interval after the last given cycle).
    - `history`: the administrations already given (a `Schedule`), or None.
    - `template`: the template of the label when it is not the posterior's (e.g. Ac-225).

    **Returns:** a [`twinjax.forecast.Scenario`][].
    """
    _check_history(history)
    nuc = _check_nuclide("nuclide", nuclide)
    a = _check_activity("activity_MBq", activity_MBq, nuc)
    n = _check_cycles("n_cycles", n_cycles)
    dt = _check_positive("interval_h", interval_h, "h")
    if ligand_nmol is not None:
        _check_positive("ligand_nmol", ligand_nmol, "nmol")
    start = _first_time(history, start_h, dt)
    remaining = n - (history.n_administrations if history is not None else 0)
    if remaining <= 0:
        if history.nuclide != nuc:
            raise InputError(f"nuclide {nuc!r} differs from the history's {history.nuclide!r}")
        return Scenario("standard_of_care", history, template)
    times = start + dt * np.arange(remaining)
    return Scenario("standard_of_care", _with_plan(history, nuc, times, a, ligand_nmol), template)


def _format_activity(a: float) -> str:
    if a >= 1000.0:
        g = a / 1000.0
        return f"{g:.1f} GBq" if abs(g * 10 - round(g * 10)) < 1e-9 else f"{g:g} GBq"
    return f"{a:g} MBq"


def _format_option(nuc: str, a) -> str:
    """``"Lu-177 6.0 GBq"``, or ``"tandem Lu-177 6.0 GBq + Ac-225 4 MBq"``."""
    if nuc == "tandem":
        parts = [f"{lab} {_format_activity(v)}" for lab, v in zip(TANDEM_LABELS, a, strict=True)]
        return "tandem " + " + ".join(parts)
    return f"{nuc} {_format_activity(a)}"


def _format_interval(h: float) -> str:
    for unit, size in (("w", 168.0), ("d", 24.0)):
        k = h / size
        if abs(k - round(k)) < 1e-9:
            return f"q{round(k)}{unit}"
    return f"q{h:g}h"


def _values(field: str, values) -> tuple:
    out = tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else None
    if not out:
        raise InputError(f"{field} = {values!r}; allowed: a non-empty sequence")
    if len(set(out)) != len(out):
        raise InputError(f"{field} = {values!r} repeats a value; allowed: distinct values")
    return out


def scenario_library(
    *,
    history: Schedule | None = None,
    next_time_h: float | None = None,
    activities_MBq: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    n_cycles: Sequence[int] = (2, 4, 6),
    intervals_h: Sequence[float] = (1008.0,),
    nuclides: Sequence[str] = ("Lu-177",),
    ligand_nmol: Sequence[float | None] = (DEFAULT_LIGAND_NMOL,),
    templates: Mapping[str, Template] | None = None,
    include_standard_of_care: bool = True,
    standard_of_care_options: Mapping | None = None,
) -> list[Scenario]:
    """Treatment options: every combination of activity per cycle, number of planned cycles,
    interval, radionuclide and ligand amount, each the administrations already given
    (`history`) plus the planned cycles from `next_time_h`.

    Names read ``"Lu-177 6.0 GBq x4 q6w"`` (the planned cycles; the ligand amount is appended
    when more than one is offered). With `include_standard_of_care`, [`standard_of_care`][]
    (continuing the history) comes first, and a library option with exactly its schedule is
    left out.

    **Arguments:**
    - `history`: the administrations already given (a `Schedule`), or None.
    - `next_time_h`: time of the first planned cycle (h; default one interval after the last
      given cycle, or 0 without history).
    - `activities_MBq`: activities per cycle (MBq), the same for every nuclide or a mapping
      nuclide -> activities (``"tandem"`` -> (177Lu MBq, 225Ac MBq) pairs); default
      `DEFAULT_ACTIVITIES_MBQ`. Each > 0 and at most `MAX_ACTIVITY_MBQ` of its nuclide.
    - `n_cycles`: numbers of planned cycles (>= 1).
    - `intervals_h`: intervals between cycles (h, > 0).
    - `nuclides`: labels (``"Lu-177"``, ``"Ac-225"``) and ``"tandem"`` (both labels each
      cycle, module docs). A label other than the history's continues it as a Tandem.
    - `ligand_nmol`: total ligand amounts per cycle (nmol; None: carrier-free).
    - `templates`: nuclide -> template of that label (e.g. ``{"Ac-225":
      load_template("psma617_ac225_pbpk")}``); others use the posterior's template.
    - `include_standard_of_care`: add the reference regimen.
    - `standard_of_care_options`: keywords of [`standard_of_care`][] other than `history` and
      `start_h` (e.g. ``{"n_cycles": 4, "ligand_nmol": 57.0}``); default its own defaults.

    **Returns:** a list of [`twinjax.forecast.Scenario`][] with distinct names.
    """
    _check_history(history)
    nucs = [_check_nuclide("nuclides", n, tandem=True) for n in _values("nuclides", nuclides)]
    if isinstance(activities_MBq, Mapping):
        acts = {
            _check_nuclide("activities_MBq", k, tandem=True): v for k, v in activities_MBq.items()
        }
    elif activities_MBq is None:
        acts = DEFAULT_ACTIVITIES_MBQ
    else:
        acts = dict.fromkeys(nucs, activities_MBq)
    per_nuc = {}
    for nuc in nucs:
        if nuc not in acts:
            raise InputError(f"activities_MBq has no activities for {nuc!r}; allowed: a mapping "
                             f"with every nuclide of {nucs}")  # fmt: skip
        per_nuc[nuc] = [
            _check_activity("activities_MBq", a, nuc) for a in _values("activities_MBq", acts[nuc])
        ]
    cycles = [_check_cycles("n_cycles", n) for n in _values("n_cycles", n_cycles)]
    intervals = [
        _check_positive("intervals_h", h, "h") for h in _values("intervals_h", intervals_h)
    ]
    ligands = _values("ligand_nmol", ligand_nmol)
    for lig in ligands:
        if lig is not None:
            _check_positive("ligand_nmol", lig, "nmol")
    templates = dict(templates or {})
    for k, t in templates.items():
        if not isinstance(t, Template):
            raise InputError(f"templates[{k!r}] = {t!r}; allowed: a twinjax Template")
    templates = {_check_nuclide("templates", k): t for k, t in templates.items()}

    out: list[Scenario] = []
    if include_standard_of_care:
        options = dict(standard_of_care_options or {})
        bad = sorted({"history", "start_h"} & set(options))
        if bad:
            raise InputError(
                f"standard_of_care_options sets {bad}; allowed: the other keywords of "
                "standard_of_care (history and start_h come from the library's own)"
            )
        soc_nuc = _check_nuclide(
            "standard_of_care_options.nuclide", options.get("nuclide", "Lu-177")
        )
        if history is not None and history.nuclide != soc_nuc:
            raise InputError(
                f"include_standard_of_care: the standard of care is {soc_nuc} but the history is "
                f"{history.nuclide}; allowed: include_standard_of_care=False, or "
                "standard_of_care_options with the history's nuclide and its activity"
            )
        options.setdefault("template", templates.get(soc_nuc))
        out.append(standard_of_care(history=history, start_h=next_time_h, **options))
    for nuc in nucs:
        for a in per_nuc[nuc]:
            for n in cycles:
                for dt in intervals:
                    start = _first_time(history, next_time_h, dt)
                    for lig in ligands:
                        name = f"{_format_option(nuc, a)} x{n} {_format_interval(dt)}"
                        if len(ligands) > 1:
                            name += " carrier-free" if lig is None else f" {lig:g} nmol"
                        times = start + dt * np.arange(n)
                        sched = _with_plan(history, nuc, times, a, lig)
                        if (
                            out
                            and out[0].name == "standard_of_care"
                            and _same(sched, out[0].schedule)
                        ):
                            continue
                        out.append(Scenario(name, sched, templates.get(nuc)))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise InputError(f"scenario names {names} repeat; allowed: distinct option values")
    return out


def _same(a: Schedule | Tandem, b: Schedule | Tandem) -> bool:
    """Two concrete schedules with the same administrations."""
    if isinstance(a, Tandem) or isinstance(b, Tandem):
        return (
            isinstance(a, Tandem)
            and isinstance(b, Tandem)
            and a.nuclides == b.nuclides
            and all(_same(x, y) for x, y in zip(a.schedules, b.schedules, strict=True))
        )
    if a.nuclide != b.nuclide or a.is_infusion != b.is_infusion:
        return False
    pairs = ((a.time_h, b.time_h), (a.hot_nmol, b.hot_nmol), (a.cold_nmol, b.cold_nmol),
             (a.duration_h, b.duration_h))  # fmt: skip
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-12) for x, y in pairs)


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
        surface = _Surface(model_values, lo, hi, interval_h, plain, masses, points)
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


_SURFACE_QUANTITIES = ("tia_MBqh", "dose_Gy", "weighted_dose_Gy", "bed_Gy")


class _Surface:
    """Each draw's exact response surface in the planned activity (docs of
    `optimise_activity`): TIA and doses affine, BED quadratic, fitted through the model's
    values at the bounds and their midpoint; the effects follow as in `forecast`."""

    def __init__(self, model_values, lo, hi, interval, regions, masses, points=None):
        self._model_values, self._interval = model_values, interval
        self.regions, self.masses = regions, masses
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
            out[r] = _effects(res, spec, self.masses[r])
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

"""Treatment options (private, re-exported by [`twinjax.decision`][], whose docs describe
them): the scenario library ([`scenario_library`][]), the reference regimen
([`standard_of_care`][]), the activity limits and defaults, and the checks of their
arguments."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._errors import InputError
from .forecast import Scenario
from .models.library import Template
from .nuclides import nuclide as _lookup
from .schedule import Administration, Schedule
from .tandem import Tandem

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


def _check_name(field: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(f"{field} = {value!r}; allowed: a non-empty string")


def _finite(v) -> bool:
    return isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(v)


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

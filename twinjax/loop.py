"""The main job: the digital-twin loop of one study, from scans to the next administration.

`twinjax run [STUDY.yaml]` (default: the embedded ``configs/studies/default_twin.yaml``) runs

    cycle 1 given -> its scans -> calibrate the twin -> forecast the scenario library for the
    remaining cycles -> rank under chance constraints and optimise the next activity ->
    recommend -> next cycle given at the recommended activity -> its scans -> update -> ...

for a SYNTHETIC patient: the true parameters are one seeded draw from the template's population
prior, and the scans are simulated from that truth (lognormal noise per region, a calibration
factor per scan). The twin never sees the truth; the summary reports it next to the forecasts, so
a reader can check how the forecasts close in on it as scans arrive.

A twin study YAML (schema ``twinjax.twin-study/1``) names the template, the synthetic patient
(covariates, truth seed), forecast regions (tissue from the radiobiology library, kind, mass),
the imaging design (regions, CVs, scan times after each administration), the treatment
(first activity, ligand, interval, course length, number of decisions), the scenario library,
the objective and chance constraints, and inference/forecast/optimiser settings. Everything is
validated before any computation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from ._config import _Strict, read_yaml, validate
from ._errors import InputError
from ._resources import configs_dir
from .decision import Constraint, Objective, standard_of_care
from .forecast import Region, Scenario, forecast
from .imaging.io import Patient
from .imaging.observe import LognormalError
from .inference.model import Observed
from .inference.priors import PopulationPrior
from .models._simulate import simulate
from .models.library import Template
from .radiobiology import known_tissues, tissue
from .schedule import Administration, Schedule
from .study import template_of_study
from .twin import DigitalTwin

__all__ = ["LoopResult", "TwinStudySpec", "default_twin_study_path", "load_twin_study", "run_loop"]


class _PatientSpec(_Strict):
    patient_id: str = "synthetic"
    covariates: dict[str, float] = Field(default_factory=dict)
    truth_seed: int = 0


class _RegionSpec(_Strict):
    tissue: str
    kind: Literal["organ", "tumour"] = "organ"
    mass_kg: float | None = Field(default=None, gt=0)


class _ImagingSpec(_Strict):
    rois: list[str]
    cv: dict[str, float]
    calibration_cv: float = 0.05
    scan_times_h: list[float] = Field(description="scan times after each administration (h)")
    noise_seed: int = 0


class _TreatmentSpec(_Strict):
    first_activity_MBq: float = Field(gt=0)
    ligand_nmol: float = Field(gt=0)
    interval_h: float = Field(gt=0)
    n_cycles: int = Field(ge=2)
    decisions: int = Field(ge=1)


class _LibrarySpec(_Strict):
    activities_MBq: list[float] = Field(min_length=1)


class _ObjectiveSpec(_Strict):
    region: str
    quantity: str = "bed_Gy"
    statistic: Literal["mean", "median"] = "mean"


class _ConstraintSpec(_Strict):
    region: str
    quantity: str
    threshold: float
    max_probability: float = Field(default=0.05, gt=0, lt=1)


class _InferenceSpec(_Strict):
    method: Literal["nuts", "svi", "map", "laplace"] = "nuts"
    num_chains: int = Field(default=2, ge=1)
    num_warmup: int = Field(default=200, ge=1)
    num_samples: int = Field(default=200, ge=1)
    seed: int = 0


class _ForecastSpec(_Strict):
    max_draws: int = Field(default=100, ge=2)


class _OptimiseSpec(_Strict):
    steps: int = Field(default=60, ge=1)
    bounds_MBq: tuple[float, float] = (1000.0, 12000.0)


class TwinStudySpec(_Strict):
    """What `twinjax run` runs (module docs)."""

    schema_: Literal["twinjax.twin-study/1"] = Field(alias="schema")
    name: str
    description: str | None = None
    template: str
    patient: _PatientSpec = _PatientSpec()
    regions: dict[str, _RegionSpec]
    imaging: _ImagingSpec
    treatment: _TreatmentSpec
    library: _LibrarySpec
    objective: _ObjectiveSpec
    constraints: list[_ConstraintSpec] = Field(default_factory=list)
    inference: _InferenceSpec = _InferenceSpec()
    forecast: _ForecastSpec = _ForecastSpec()
    optimise: _OptimiseSpec = _OptimiseSpec()


def default_twin_study_path() -> Path:
    return configs_dir() / "studies" / "default_twin.yaml"


@dataclasses.dataclass(frozen=True)
class _Study:
    spec: TwinStudySpec
    template: Template
    regions: dict[str, Region]
    noise: LognormalError
    objective: Objective
    constraints: tuple[Constraint, ...]
    source: Path
    sha256: str


def load_twin_study(path: str | Path | None = None) -> _Study:
    """Read and validate a twin study (default: the embedded one). Nothing is solved yet."""
    p = Path(path) if path is not None else default_twin_study_path()
    spec = validate(TwinStudySpec, read_yaml(p), p.name)
    tpl = template_of_study(spec.template, p)
    where = p.name

    def known_region(field: str, r: str, allowed) -> None:
        if r not in allowed:
            raise InputError(f"{where}: {field} = {r!r}; allowed: {sorted(allowed)}")

    def template_region(field: str, r: str) -> None:
        try:
            tpl.roi(r)  # an imaging region of the template, or one of its organs/groups
        except InputError as err:
            raise InputError(f"{where}: {field} = {r!r}: {err}") from None

    for r, reg in spec.regions.items():
        template_region("regions", r)
        known_region(f"regions.{r}.tissue", reg.tissue, known_tissues())
    for r in spec.imaging.rois:
        template_region("imaging.rois", r)
    missing = [r for r in spec.imaging.rois if r not in spec.imaging.cv]
    if missing:
        raise InputError(f"{where}: imaging.cv lacks {missing}; give a CV for every imaged region")
    t = np.asarray(spec.imaging.scan_times_h, dtype=float)
    tr = spec.treatment
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise InputError(
            f"{where}: imaging.scan_times_h = {t.tolist()}; allowed: increasing times > 0 h"
        )
    if t[-1] >= tr.interval_h:
        raise InputError(
            f"{where}: imaging.scan_times_h ends at {t[-1]:g} h, not before the next cycle "
            f"(treatment.interval_h = {tr.interval_h:g} h)"
        )
    if tr.decisions >= tr.n_cycles:
        raise InputError(
            f"{where}: treatment.decisions = {tr.decisions}; allowed: < n_cycles ({tr.n_cycles})"
        )
    known_region("objective.region", spec.objective.region, spec.regions)
    for i, c in enumerate(spec.constraints):
        known_region(f"constraints[{i}].region", c.region, spec.regions)
    lo, hi = spec.optimise.bounds_MBq
    if not 0 < lo < hi:
        raise InputError(f"{where}: optimise.bounds_MBq = {[lo, hi]}; allowed: 0 < low < high")
    noise = LognormalError(
        {r: spec.imaging.cv[r] for r in spec.imaging.rois},
        calibration_cv=spec.imaging.calibration_cv,
    )
    regions = {
        r: Region(tissue(reg.tissue), mass_kg=reg.mass_kg, kind=reg.kind)
        for r, reg in spec.regions.items()
    }
    objective = Objective(spec.objective.region, spec.objective.quantity, spec.objective.statistic)
    constraints = tuple(
        Constraint(c.region, c.quantity, c.threshold, c.max_probability) for c in spec.constraints
    )
    # The patient's covariates and the activities are checked here too (Patient/Administration).
    Patient.virtual(spec.patient.covariates, _first_schedule(spec, tpl))
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    return _Study(spec, tpl, regions, noise, objective, constraints, p, sha)


def _first_schedule(spec: TwinStudySpec, tpl: Template) -> Schedule:
    tr = spec.treatment
    return Schedule.from_administrations(
        [Administration(0.0, tr.first_activity_MBq, tpl.nuclide, tr.ligand_nmol)]
    )


class _Draws:
    """A fixed set of parameter draws that `forecast` accepts like a posterior (the truth as one
    draw, or prior draws)."""

    def __init__(self, names, values: dict[str, np.ndarray], prior: PopulationPrior,
                 covariates: dict[str, float]):  # fmt: skip
        self.names = tuple(names)
        self._values = {k: np.atleast_1d(np.asarray(v, float)) for k, v in values.items()}
        self.prior = prior  # `forecast` reads the typical values of the others: prior.base
        # ... and the patient's CT volumes (region masses) from the provenance, as for a fit.
        self.provenance = {"covariates": dict(covariates)}

    def draws(self, name: str) -> np.ndarray:
        return self._values[name]


@dataclasses.dataclass
class LoopResult:
    """What `run_loop` produced: the `twin` (final state), per-decision records
    (`decisions`), the synthetic `truth`, the forecast-narrowing table (`narrowing`) and
    the wall time (s)."""

    study: _Study
    twin: DigitalTwin
    truth: dict[str, float]
    decisions: list[dict]
    narrowing: list[dict]
    observed: list[Observed]
    wall_time_s: float
    posteriors: list = dataclasses.field(default_factory=list, repr=False)


def run_loop(
    path: str | Path | None = None,
    *,
    progress: Callable[[str], None] | None = None,
    overrides: dict | None = None,
) -> LoopResult:
    """Run the twin loop of a study (module docs). `progress(message)` is called at every step
    (the CLI shows it with progress bars); `overrides` replace sections of the study's
    inference/forecast/optimise settings (e.g. small sample counts in tests)."""
    study = load_twin_study(path)
    spec = study.spec
    if overrides:
        spec = spec.model_copy(
            update={k: getattr(spec, k).model_copy(update=v) for k, v in overrides.items()}
        )
        study = dataclasses.replace(study, spec=spec)
    say = progress or (lambda _m: None)
    t_start = time.perf_counter()
    tpl, tr = study.template, spec.treatment
    patient = Patient.virtual(
        spec.patient.covariates, _first_schedule(spec, tpl), patient_id=spec.patient.patient_id
    )
    prior = PopulationPrior.from_template(tpl, patient.covariates)
    z = jax.random.normal(jax.random.key(spec.patient.truth_seed), (prior.dim,))
    truth = {k: float(v) for k, v in prior.theta(z).items()}
    truth_params = tpl.derive({**prior.base, **{k: jnp.asarray(v) for k, v in truth.items()}})

    twin = DigitalTwin(
        tpl, patient, noise=study.noise, regions=study.regions,
        fit_options=spec.inference.model_dump(),
    )  # fmt: skip
    max_draws = spec.forecast.max_draws
    reference = _reference_course(spec, tpl)
    narrowing = [
        _narrow("prior", _prior_draws(prior, max_draws, patient.covariates), tpl, reference, study)
    ]
    narrowing[0]["truth"] = _narrow_values(
        _Draws(prior.names, truth, prior, patient.covariates), tpl, reference, study
    )
    decisions, observed, posteriors = [], [], []
    for k in range(1, tr.decisions + 1):
        t_admin = twin.administrations[-1].time_h
        say(f"cycle {k}: simulating the synthetic patient's scans")
        scans = _scans(study, truth_params, twin.patient.schedule, t_admin, seed_offset=k)
        observed.append(scans)
        say(f"cycle {k}: assimilating {len(scans.roi)} measurements ({spec.inference.method})")
        post = twin.assimilate(scans)
        posteriors.append(post)
        next_time = t_admin + tr.interval_h
        remaining = tr.n_cycles - len(twin.administrations)
        say(f"cycle {k}: forecasting the scenario library ({remaining} remaining cycles)")
        scenarios = twin.scenarios(
            next_time_h=next_time,
            activities_MBq=tuple(spec.library.activities_MBq),
            n_cycles=(remaining,),
            intervals_h=(tr.interval_h,),
            ligand_nmol=(tr.ligand_nmol,),
            standard_of_care_options={
                "n_cycles": tr.n_cycles, "interval_h": tr.interval_h, "ligand_nmol": tr.ligand_nmol,
            },
        )  # fmt: skip
        ranking, fc = twin.compare(
            scenarios, study.objective, study.constraints, max_draws=max_draws
        )
        say(f"cycle {k}: optimising the cycle-{k + 1} activity")
        # Library scenarios that plan the remaining cycles at one activity, on the same draws,
        # are points of each draw's response surface: the optimiser need not solve them again.
        given_n = len(twin.administrations)
        planned_t = next_time + tr.interval_h * np.arange(remaining)
        points = {}
        for sc in scenarios:
            acts, times = np.asarray(sc.schedule.activity_MBq), np.asarray(sc.schedule.time_h)
            if (
                acts.size == given_n + remaining
                and np.allclose(acts[given_n:], acts[given_n])
                and np.allclose(times[given_n:], planned_t)
            ):
                points[float(acts[given_n])] = fc.values[sc.name]
        plan = twin.optimise(
            study.objective, study.constraints, next_time_h=next_time,
            n_future_cycles=remaining, ligand_nmol=tr.ligand_nmol,
            bounds_MBq=tuple(spec.optimise.bounds_MBq), steps=spec.optimise.steps,
            max_draws=max_draws, seed=spec.inference.seed + k, points=points,
        )  # fmt: skip
        if plan.feasible:
            activity, basis = round(plan.activity_MBq, -1), "optimised (constraints met)"
        elif ranking.best is not None:
            best = next(s for s in scenarios if s.name == ranking.best)
            activity = float(np.asarray(best.schedule.activity_MBq)[len(twin.administrations)])
            basis = "best library scenario (the optimiser found no feasible activity)"
        else:
            activity, basis = (
                spec.optimise.bounds_MBq[0],
                "lowest allowed activity: nothing feasible",
            )
        plan_course = _course(twin.patient.schedule, next_time, activity, remaining, tr, tpl)
        truth_outcome = _narrow_values(
            _Draws(prior.names, truth, prior, patient.covariates), tpl, plan_course, study
        )
        decisions.append(
            {
                "after_cycle": k,
                "scans_h": sorted({float(t) for t in scans.time_h}),
                "convergence": _convergence(post),
                "posterior": post.summary(list(post.names)),
                "ranking": ranking.to_dict(),
                "forecast": fc.summary(level=0.9),
                "optimised": plan.to_dict(),
                "recommended": {
                    "cycle": len(twin.administrations) + 1,
                    "time_h": next_time,
                    "activity_MBq": float(activity),
                    "basis": basis,
                },
                "truth_of_recommended_course": truth_outcome,
                "_forecast": fc,
                "_ranking": ranking,
            }
        )  # fmt: skip
        narrowing.append(_narrow(f"after cycle {k}", post, tpl, reference, study))
        if k < tr.decisions:
            twin.administer(next_time, float(activity), ligand_nmol=tr.ligand_nmol)
    return LoopResult(
        study, twin, truth, decisions, narrowing, observed,
        time.perf_counter() - t_start, posteriors,
    )  # fmt: skip


def _convergence(post) -> dict:
    """MCMC: the diagnostics' verdict; optimisation-based posteriors have none to give."""
    if post.diagnostics is not None:
        return {"verdict": post.diagnostics.verdict, "messages": list(post.diagnostics.messages)}
    return {
        "verdict": "not applicable",
        "messages": [f"{post.method}: an approximation at the posterior mode, no MCMC "
                     "diagnostics (use inference.method: nuts for R-hat, ESS, divergences)"],
    }  # fmt: skip


def _scans(study: _Study, params, schedule: Schedule, t_admin: float, seed_offset: int):
    """Noisy scans of the synthetic patient after the administration at `t_admin`: lognormal
    noise per region and one calibration factor per scan time."""
    spec = study.spec.imaging
    times = t_admin + np.asarray(spec.scan_times_h, dtype=float)
    tpl = study.template
    traj = simulate(tpl.model, params, schedule, jnp.asarray(times))
    key = jax.random.fold_in(jax.random.key(spec.noise_seed), seed_offset)
    sd_cal = float(np.sqrt(np.log1p(spec.calibration_cv**2)))
    cal = np.exp(sd_cal * np.asarray(jax.random.normal(jax.random.fold_in(key, 0), times.shape)))
    rows = []
    for i, roi in enumerate(spec.rois):
        truth = sum(traj.activity(g) for g in tpl.roi(roi))
        y = study.noise.sample(jax.random.fold_in(key, i + 1), roi, truth, calibration=cal)
        rows += [(roi, float(t), float(v)) for t, v in zip(times, np.asarray(y), strict=True)]
    rows.sort(key=lambda r: r[1])
    return Observed(
        tuple(r[0] for r in rows), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    )


def _course(history: Schedule, next_time, activity, remaining, tr, tpl) -> Scenario:
    given = [
        Administration(float(t), float(a), tpl.nuclide, tr.ligand_nmol)
        for t, a in zip(np.asarray(history.time_h), np.asarray(history.activity_MBq), strict=True)
    ]
    planned = [
        Administration(next_time + i * tr.interval_h, float(activity), tpl.nuclide, tr.ligand_nmol)
        for i in range(remaining)
    ]
    return Scenario("recommended course", Schedule.from_administrations(given + planned))


def _reference_course(spec: TwinStudySpec, tpl: Template) -> Scenario:
    """The fixed course whose forecast is tracked as scans arrive (standard of care)."""
    tr = spec.treatment
    return standard_of_care(
        nuclide=tpl.nuclide, activity_MBq=7400.0, n_cycles=tr.n_cycles, interval_h=tr.interval_h,
        ligand_nmol=tr.ligand_nmol,
    )  # fmt: skip


def _prior_draws(prior: PopulationPrior, n: int, covariates) -> _Draws:
    z = jax.random.normal(jax.random.key(12345), (n, prior.dim))
    theta = jax.vmap(prior.theta)(z)
    return _Draws(prior.names, {k: np.asarray(v) for k, v in theta.items()}, prior, covariates)


def _narrow_values(post, tpl, course: Scenario, study: _Study) -> dict:
    fc = forecast(post, tpl, [course], study.regions, max_draws=study.spec.forecast.max_draws)
    summ = fc.summary(level=0.9)[course.name]
    return {r: {q: summ[r][q] for q in ("dose_Gy", "bed_Gy")} for r in study.regions}


def _narrow(label: str, post, tpl, course: Scenario, study: _Study) -> dict:
    return {"information": label, "course": course.name,
            "forecast": _narrow_values(post, tpl, course, study)}  # fmt: skip

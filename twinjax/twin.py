"""`DigitalTwin`: the loop of the Digital Twin System in one object.

```python
twin = DigitalTwin(template, patient, noise=LognormalError({...}, calibration_cv=0.05),
                   regions={"kidneys": Region(tissue("kidney")), ...})
twin.administer(0.0, 7400.0, ligand_nmol=96.0)    # cycle 1 given
twin.assimilate(cycle1_scans)                      # first fit (NUTS by default)
ranking = twin.compare(twin.scenarios(next_time_h=1008.0), objective, constraints)
twin.administer(1008.0, ranking.recommended_activity_MBq, ligand_nmol=96.0)
twin.assimilate(cycle2_scans)                      # warm-started update on all data
twin.save("patient-017.twin");  twin = DigitalTwin.load("patient-017.twin")
```

A twin holds its template, the patient (covariates and the administrations given so far), the
observation model, every observation assimilated, the current posterior and a provenance log:
one entry per administration, assimilation and decision, with the time (UTC), the twinjax version,
hashes of the data and the template, seeds and the diagnostics verdict. The log is append-only
and saved with the twin.

- **Assimilate.** The first scans are fitted with [`twinjax.fit`][]; later scans update the
  posterior with [`twinjax.inference.assimilate`][] (``"exact"``: a warm-started refit on all data,
  the default; ``"fast"``: a Gaussian update whose error is measured). New laboratory values
  (``labs=``, e.g. eGFR) change the patient's covariates and with them the prior: the twin then
  refits on all data. Assimilation moves forward in time: a scan at or before the last
  assimilated one is refused.
- **Forecast, compare, optimise.** Scenarios carry the whole schedule, the administrations given
  followed by the planned ones; a scenario that does not start with what was given is refused.
  `compare` ranks them with [`twinjax.decision.rank`][]; `optimise` finds the next cycle's
  activity with [`twinjax.decision.optimise_activity`][]. Both are logged.
- **Outcomes.** ``assimilate(outcomes=...)`` brings observed tumour response (a PSA-like
  marker relative to baseline, lesion volume) into the twin's belief about the lesion's
  radiosensitivity and regrowth ([`twinjax.outcomes`][]): `belief` is then the scan posterior
  reweighted by the outcomes, and forecasts and decisions use it; outcomes are re-applied
  after every later scan update. `record_outcome` keeps other outcomes (e.g. a toxicity grade)
  in the twin's history.

Units: time h since the first administration (the study clock), activity MBq, ligand nmol.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._errors import InputError
from ._twin_state import (
    _observed_from,
    _observed_state,
    _outcome_options_from,
    _outcome_options_state,
    _patient_from,
    _patient_state,
    _posterior_from,
    _posterior_state,
    _region_from,
    _region_state,
    _response_state,
)
from .decision import (
    Constraint,
    Objective,
    _administrations,
    optimise_activity,
    rank,
    scenario_library,
)
from .forecast import Forecast, Region, Scenario, forecast
from .imaging.io import Patient
from .imaging.observe import LognormalError
from .inference.fit import Posterior, fit
from .inference.model import Observed
from .inference.priors import PopulationPrior
from .inference.sequential import assimilate as _assimilate
from .models.library import Template, list_templates, load_template
from .outcomes import OutcomeUpdate, ResponseObservation, assimilate_outcomes
from .schedule import Administration, Schedule
from .store import SCHEMA, read_twin_file, write_twin_file
from .tandem import Tandem

__all__ = ["DigitalTwin"]

#: Fit options a twin uses unless told otherwise (NUTS as `twinjax.fit`).
DEFAULT_FIT = {"method": "nuts", "num_chains": 2, "num_warmup": 300, "num_samples": 300, "seed": 0}
_FIT_KEYS = {
    "method", "num_chains", "num_warmup", "num_samples", "seed", "svi_steps", "learning_rate",
    "guide", "dense_mass", "chain_method", "progress_bar", "rtol", "atol",
}  # fmt: skip


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _sha256(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() if not isinstance(a, str) else a.encode())
    return h.hexdigest()


def _template_sha256(template: Template) -> str:
    return hashlib.sha256(template.path.read_bytes() if template.path else b"").hexdigest()


def _starts_with(schedule: Schedule | Tandem, given: Sequence[Administration]) -> bool:
    """Whether `schedule` begins with the administrations `given` (to 1e-9 relative); for a
    Tandem, its label of the given administrations does, and no other label starts before
    the last given administration."""
    if isinstance(schedule, Tandem):
        if not given:
            return True
        if given[0].nuclide not in schedule.nuclides:
            return False
        others = [s for s in schedule.schedules if s.nuclide != given[0].nuclide]
        if any(float(np.asarray(s.time_h)[0]) <= given[-1].time_h for s in others):
            return False
        schedule = schedule.label(given[0].nuclide)
    mine = _administrations(schedule)
    if len(mine) < len(given):
        return False
    for m, g in zip(mine, given, strict=False):
        if m.nuclide != g.nuclide:
            return False
        pairs = ((m.time_h, g.time_h), (m.activity_MBq, g.activity_MBq))
        if any(not np.isclose(x, y, rtol=1e-9, atol=1e-9) for x, y in pairs):
            return False
    return True


class DigitalTwin:
    """The digital twin of one patient (module docs).

    **Arguments:**
    - `template`: a [`twinjax.Template`][] or the name of a shipped one.
    - `patient`: a [`twinjax.imaging.Patient`][]: covariates, and a schedule holding the
      administrations given so far (at least the first); later ones are added with
      `administer`.
    - `noise`: the observation model of the scans ([`LognormalError`][]).
    - `regions`: region name -> [`twinjax.forecast.Region`][] used by forecasts and decisions.
    - `names`, `cv`: the parameters to infer and their prior CVs (default: the template's).
    - `fit_options`: options of [`twinjax.fit`][] (default `DEFAULT_FIT`: NUTS, 2 chains x
      300 warm-up + 300 draws, seed 0).
    """

    def __init__(
        self,
        template: Template | str,
        patient: Patient,
        *,
        noise: LognormalError,
        regions: Mapping[str, Region] | None = None,
        names: Sequence[str] | None = None,
        cv: Mapping[str, float] | None = None,
        fit_options: Mapping | None = None,
    ):
        self.template = template if isinstance(template, Template) else load_template(template)
        if not isinstance(patient, Patient):
            raise InputError(
                f"patient = {type(patient).__name__}; allowed: a twinjax.imaging.Patient "
                "(Patient.virtual(...) or load_patient(...))"
            )
        if not isinstance(noise, LognormalError):
            raise InputError(f"noise = {type(noise).__name__}; allowed: a twinjax LognormalError")
        if patient.schedule.nuclide != self.template.nuclide:
            raise InputError(
                f"patient's administrations are {patient.schedule.nuclide}; template "
                f"{self.template.name!r} is labelled with {self.template.nuclide}"
            )
        unknown = sorted(set(fit_options or {}) - _FIT_KEYS)
        if unknown:
            raise InputError(f"fit_options {unknown} unknown; allowed: {sorted(_FIT_KEYS)}")
        self.patient = patient
        self.noise = noise
        self.regions = dict(regions or {})
        for r in self.regions:
            self.template.roi(r)  # unknown regions fail here, naming the known ones
        self.names = None if names is None else tuple(names)
        self.cv = None if cv is None else dict(cv)
        # Validate names/cv now, not at the first scan.
        PopulationPrior.from_template(self.template, patient.covariates, names=names, cv=cv)
        self.fit_options = {**DEFAULT_FIT, **(fit_options or {})}
        self.observed: Observed | None = None
        self.posterior: Posterior | None = None
        self.history: list[dict] = []
        self.outcomes: list[dict] = []
        self.responses: list[ResponseObservation] = []
        self.outcome_options: dict = {}
        self.outcome_update: OutcomeUpdate | None = None
        self._log("create", template=self.template.name,
                  template_sha256=_template_sha256(self.template),
                  administrations=[dataclasses.asdict(a) for a in self.administrations])  # fmt: skip

    # -- state ---------------------------------------------------------------------------
    @property
    def administrations(self) -> list[Administration]:
        """The administrations given so far."""
        return _administrations(self.patient.schedule)

    @property
    def last_scan_h(self) -> float | None:
        return None if self.observed is None else float(np.max(self.observed.time_h))

    def _log(self, action: str, **details) -> None:
        from . import __version__

        self.history.append(
            {"time_utc": _now(), "action": action, "twinjax_version": __version__, **details}
        )

    # -- the loop ------------------------------------------------------------------------
    def administer(
        self,
        time_h: float,
        activity_MBq: float,
        *,
        ligand_nmol: float | None = None,
        duration_h: float = 0.0,
    ) -> None:
        """Record an administration given at `time_h` (h, study clock) of `activity_MBq` (MBq)
        with `ligand_nmol` (nmol, total ligand; default that of the last administration). It
        must come after the last administration; the nuclide is the template's."""
        last = self.administrations[-1]
        if not (np.isfinite(time_h) and time_h > last.time_h):
            raise InputError(
                f"administer: time_h = {time_h!r}; allowed: after the last administration "
                f"({last.time_h:g} h)"
            )
        lig = last.ligand_nmol if ligand_nmol is None else ligand_nmol
        new = Administration(float(time_h), float(activity_MBq), last.nuclide, lig, duration_h)
        schedule = Schedule.from_administrations([*self.administrations, new])
        self.patient = dataclasses.replace(self.patient, schedule=schedule)
        self._log("administer", **dataclasses.asdict(new))

    def assimilate(
        self,
        scans=None,
        *,
        labs: Mapping[str, float] | None = None,
        outcomes=None,
        method: str = "exact",
        outcome_options: Mapping | None = None,
    ) -> Posterior:
        """Bring new scans (an [`Observed`][] or `TimeActivityData`: region, time h, activity
        MBq), laboratory values (`labs`: covariate -> value in canonical units, e.g.
        ``{"egfr_L_per_h": 4.8}``) and/or observed tumour response (`outcomes`: one or more
        [`twinjax.outcomes.ResponseObservation`][], e.g. PSA relative to baseline) into the
        posterior. `method`: ``"exact"`` or ``"fast"`` for scans after the first fit (see
        `twinjax.inference.assimilate`). Outcomes update the lesion's radiosensitivity and
        growth draw by draw (`twinjax.outcomes.assimilate_outcomes`; `outcome_options`: its
        keywords `prior`, `max_draws`, `per_draw`, `seed`, `strict`); they are re-applied after
        every later scan update. **Returns** the twin's current belief (`self.belief`): the
        scan posterior (`self.posterior`), updated by the outcomes when there are any."""
        if scans is None and not labs and outcomes is None:
            raise InputError("assimilate: nothing to assimilate; give scans, labs and/or outcomes")
        if method not in ("exact", "fast"):
            raise InputError(f"method = {method!r}; allowed: 'exact', 'fast'")
        new_responses = self._check_outcomes(outcomes) if outcomes is not None else []
        options = self._check_outcome_options(outcome_options)
        if scans is None and not labs:
            self._need_posterior("assimilate outcomes")
            self._update_outcomes(self.responses + new_responses, options, len(new_responses))
            return self.belief
        new = None
        if scans is not None:
            new = scans if isinstance(scans, Observed) else Observed.from_data(scans)
            self._check_scans(new)
        covariates = dict(self.patient.covariates)
        if labs:
            for k, v in labs.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                    raise InputError(f"labs[{k!r}] = {v!r}; allowed: a finite number")
            covariates.update({k: float(v) for k, v in labs.items()})
        patient = dataclasses.replace(self.patient, covariates=covariates)
        opts = {k: v for k, v in self.fit_options.items()}
        refit = self.posterior is None or labs
        if refit:
            data = new if self.observed is None else _concat(self.observed, new)
            if data is None:
                raise InputError("assimilate: labs without any scans yet; give scans too")
            if self.posterior is not None and labs:
                opts["seed"] = self.posterior.context.options["seed"] + 1
            post = fit(self.template, patient, data, noise=self.noise, names=self.names,
                       cv=self.cv, **opts)  # fmt: skip
            how = "fit"
        else:
            post = _assimilate(self.posterior, new, method=method, patient=patient)
            how = f"assimilate ({method})"
        self.patient, self.posterior, self.observed = patient, post, post.observed
        d = post.diagnostics
        self._log(
            "assimilate",
            how=how,
            scans=None if new is None else {
                "n_rows": len(new.roi), "rois": sorted(set(new.roi)),
                "time_h": [float(np.min(new.time_h)), float(np.max(new.time_h))],
                "data_sha256": _sha256(new.time_h, new.activity_MBq, "|".join(new.roi)),
            },
            labs=dict(labs or {}),
            method=post.method,
            seed=int(post.provenance["seed"]),
            verdict=None if d is None else d.verdict,
            messages=[] if d is None else list(d.messages),
            approximation=post.approximation,
            wall_time_s=post.provenance.get("wall_time_s"),
        )  # fmt: skip
        self.outcome_update = None  # it belonged to the previous scan posterior
        if self.responses or new_responses:
            self._update_outcomes(self.responses + new_responses, options, len(new_responses))
        return self.belief

    @property
    def belief(self) -> Posterior | None:
        """The posterior forecasts and decisions use: the scan posterior updated by the
        observed outcomes (`outcome_update`), or the scan posterior itself."""
        if self.outcome_update is not None:
            return self.outcome_update.posterior
        return self.posterior

    def _check_outcomes(self, outcomes) -> list[ResponseObservation]:
        items = [outcomes] if isinstance(outcomes, ResponseObservation) else list(outcomes)
        last: dict[str, float] = {}
        for o in self.responses:
            last[o.region] = max(last.get(o.region, -np.inf), float(o.time_h[-1]))
        for o in items:
            if not isinstance(o, ResponseObservation):
                raise InputError(
                    f"outcomes = {o!r}; allowed: twinjax.outcomes.ResponseObservation(s)"
                )
            if o.region not in self.regions:
                raise InputError(
                    f"ResponseObservation.region = {o.region!r}; allowed: a region of the twin, "
                    f"{sorted(self.regions)}"
                )
            if o.time_h[0] <= last.get(o.region, -np.inf):
                raise InputError(
                    f"ResponseObservation({o.region!r}).time_h starts at {o.time_h[0]:g} h, not "
                    f"after the last outcome of that region ({last[o.region]:g} h); allowed: "
                    "later times (outcomes move forward in time)"
                )
            last[o.region] = float(o.time_h[-1])
        return items

    def _check_outcome_options(self, options) -> dict:
        merged = {**self.outcome_options, **dict(options or {})}
        unknown = sorted(set(merged) - {"prior", "max_draws", "per_draw", "seed", "strict"})
        if unknown:
            raise InputError(
                f"outcome_options {unknown} unknown; allowed: prior, max_draws, per_draw, seed, "
                "strict"
            )
        return merged

    def _update_outcomes(self, responses: list, options: dict, n_new: int) -> None:
        """Apply every outcome observation to the current scan posterior; the twin's outcome
        state changes only once the update has succeeded (logged)."""
        update = assimilate_outcomes(
            self.posterior, self.template, self.regions, self.patient.schedule, responses,
            **options,
        )  # fmt: skip
        self.responses, self.outcome_options, self.outcome_update = responses, options, update
        self._log("assimilate_outcomes", new=n_new, regions=sorted({o.region for o in responses}),
                  n_observations=int(sum(o.time_h.size for o in responses)),
                  **update.to_dict())  # fmt: skip

    def _check_scans(self, new: Observed) -> None:
        t = np.asarray(new.time_h, dtype=float)
        a = np.asarray(new.activity_MBq, dtype=float)
        if t.size == 0:
            raise InputError("scans: no rows; allowed: at least one (region, time, activity)")
        if not (np.all(np.isfinite(t)) and np.all(t >= 0)):
            raise InputError(f"scans.time_h = {t.tolist()}; allowed: finite times >= 0 h")
        if not (np.all(np.isfinite(a)) and np.all(a >= 0)):
            raise InputError(f"scans.activity_MBq = {a.tolist()}; allowed: finite values >= 0")
        known = set(self.noise.cv)
        bad = sorted(set(new.roi) - known)
        if bad:
            raise InputError(
                f"scans: regions {bad} have no measurement CV in the twin's noise model; "
                f"allowed: {sorted(known)}"
            )
        last = self.last_scan_h
        if last is not None and float(t.min()) <= last:
            raise InputError(
                f"scans: a scan at {float(t.min()):g} h is not after the last assimilated scan "
                f"({last:g} h); assimilation moves forward in time"
            )
        first = self.administrations[0].time_h
        if float(t.min()) < first:
            raise InputError(
                f"scans: a scan at {float(t.min()):g} h precedes the first administration "
                f"({first:g} h)"
            )

    def _need_posterior(self, what: str) -> Posterior:
        if self.posterior is None:
            raise InputError(f"{what}: the twin has no posterior yet; assimilate scans first")
        return self.posterior

    def scenarios(self, *, next_time_h: float, **library) -> list[Scenario]:
        """The scenario library ([`twinjax.decision.scenario_library`][]) continuing this twin's
        administrations from `next_time_h` (h)."""
        return scenario_library(history=self.patient.schedule, next_time_h=next_time_h, **library)

    def _check_scenarios(self, scenarios: Sequence[Scenario]) -> None:
        given = self.administrations
        for sc in scenarios:
            if not isinstance(sc, Scenario):
                raise InputError(f"scenario {sc!r}; allowed: twinjax.forecast.Scenario")
            if not _starts_with(sc.schedule, given):
                raise InputError(
                    f"scenario {sc.name!r} does not start with the {len(given)} administration(s) "
                    f"already given ({[(a.time_h, a.activity_MBq) for a in given]} h, MBq); "
                    "build scenarios with twin.scenarios(...) or prepend the history"
                )

    def forecast(self, scenarios: Sequence[Scenario], **options) -> Forecast:
        """Outcome distributions of each scenario under the current belief (`belief`;
        [`twinjax.forecast.forecast`][]; `options` as there)."""
        self._need_posterior("forecast")
        post = self.belief
        if not self.regions:
            raise InputError("forecast: the twin has no regions; pass regions= when creating it")
        self._check_scenarios(scenarios)
        return forecast(post, self.template, scenarios, self.regions, **options)

    def compare(
        self,
        scenarios: Sequence[Scenario],
        objective: Objective,
        constraints: Sequence[Constraint] = (),
        **options,
    ):
        """Forecast `scenarios` and rank them ([`twinjax.decision.rank`][]). **Returns**
        ``(ranking, forecast)``; the decision is logged."""
        fc = self.forecast(scenarios, **options)
        ranking = rank(fc, objective, constraints)
        self._log(
            "compare",
            after_scan_h=self.last_scan_h,
            scenarios=[s.name for s in scenarios],
            best=ranking.best,
            objective=dataclasses.asdict(objective),
            constraints=[dataclasses.asdict(c) for c in constraints],
            posterior_draws=fc.n_draws,
        )
        return ranking, fc

    def optimise(
        self, objective: Objective, constraints: Sequence[Constraint] = (), *, next_time_h: float,
        **options,
    ):  # fmt: skip
        """The next cycle's activity (and optionally interval) maximising `objective` under the
        chance `constraints` ([`twinjax.decision.optimise_activity`][]); logged."""
        self._need_posterior("optimise")
        post = self.belief
        if not (np.isfinite(next_time_h) and next_time_h > self.administrations[-1].time_h):
            raise InputError(
                f"next_time_h = {next_time_h!r}; allowed: after the last administration "
                f"({self.administrations[-1].time_h:g} h)"
            )
        plan = optimise_activity(
            post, self.template, self.patient.schedule, self.regions, objective, constraints,
            next_time_h=next_time_h, **options,
        )  # fmt: skip
        self._log("optimise", after_scan_h=self.last_scan_h, next_time_h=float(next_time_h),
                  plan={k: v for k, v in plan.to_dict().items() if k != "history"})  # fmt: skip
        return plan

    def record_outcome(self, name: str, value: float, *, time_h: float, unit: str = "") -> None:
        """Keep an observed outcome (e.g. a toxicity grade) at `time_h` (h, study clock) in
        the twin's history. Tumour response (marker, volume) that should update the twin goes
        to ``assimilate(outcomes=ResponseObservation(...))`` instead."""
        if not (isinstance(name, str) and name):
            raise InputError(f"outcome name = {name!r}; allowed: a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise InputError(f"outcome {name!r} value = {value!r}; allowed: a finite number")
        if not (np.isfinite(time_h) and time_h >= 0):
            raise InputError(f"outcome {name!r} time_h = {time_h!r}; allowed: finite, >= 0 h")
        entry = {"name": name, "value": float(value), "time_h": float(time_h), "unit": unit}
        self.outcomes.append(entry)
        self._log("outcome", **entry)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the twin to one file, atomically, with checksums (see `twinjax.store`)."""
        from . import __version__

        arrays: dict[str, np.ndarray] = {}
        regions = {name: _region_state(name, r, arrays) for name, r in self.regions.items()}
        post_state, nc = None, None
        if self.posterior is not None:
            post_state, nc = _posterior_state(self.posterior, arrays)
        state = {
            "schema": SCHEMA,
            "twinjax_version": __version__,
            "template": {"name": self.template.name, "sha256": _template_sha256(self.template)},
            "patient": _patient_state(self.patient),
            "noise": {
                "cv": dict(self.noise.cv),
                "calibration_cv": self.noise.calibration_cv,
                "detection_limit_MBq": self.noise.detection_limit_MBq,
            },
            "regions": regions,
            "inference": {"names": self.names, "cv": self.cv, "fit_options": self.fit_options},
            "observed": None if self.observed is None else _observed_state(self.observed),
            "posterior": post_state,
            "history": self.history,
            "outcomes": self.outcomes,
            "responses": [_response_state(o) for o in self.responses],
            "outcome_options": _outcome_options_state(self.outcome_options),
        }
        return write_twin_file(path, state, nc, arrays)

    @classmethod
    def load(cls, path: str | Path, *, template: Template | str | None = None) -> DigitalTwin:
        """Read a twin written by `save`. Its template is the shipped one of the saved name, or
        `template` (a path or `Template`) for a custom one; either must have the SHA-256 the
        twin was saved with. **Raises:** `InputError` for a corrupt or truncated file, another
        schema, or a changed template (naming both versions)."""
        state, nc, arrays = read_twin_file(path)
        name = Path(path).name
        saved = state["template"]
        if template is None:
            if saved["name"] not in list_templates():
                raise InputError(
                    f"{name}: the twin's template {saved['name']!r} is not shipped with twinjax; "
                    "pass template= (its YAML path) to load it"
                )
            template = saved["name"]
        tpl = template if isinstance(template, Template) else load_template(template)
        sha = _template_sha256(tpl)
        if tpl.name != saved["name"] or sha != saved["sha256"]:
            raise InputError(
                f"{name}: saved with template {saved['name']!r} (SHA-256 {saved['sha256'][:12]}"
                f"...), but the template here is {tpl.name!r} (SHA-256 {sha[:12]}...); load it "
                "with the template version it was saved with, or rebuild the twin from its data"
            )
        twin = cls.__new__(cls)
        twin.template = tpl
        twin.patient = _patient_from(state["patient"])
        nz = state["noise"]
        twin.noise = LognormalError(
            dict(nz["cv"]), calibration_cv=nz["calibration_cv"],
            detection_limit_MBq=nz["detection_limit_MBq"],
        )  # fmt: skip
        twin.regions = {k: _region_from(k, v, arrays) for k, v in state["regions"].items()}
        inf = state["inference"]
        twin.names = None if inf["names"] is None else tuple(inf["names"])
        twin.cv = inf["cv"]
        twin.fit_options = dict(inf["fit_options"])
        twin.observed = None if state["observed"] is None else _observed_from(state["observed"])
        twin.history = list(state["history"])
        twin.outcomes = list(state["outcomes"])
        twin.posterior = None
        if state["posterior"] is not None:
            twin.posterior = _posterior_from(state["posterior"], nc, arrays, tpl, twin.noise)
        twin.responses = [ResponseObservation(**d) for d in state.get("responses", [])]
        twin.outcome_options = _outcome_options_from(state.get("outcome_options", {}))
        twin.outcome_update = None
        if twin.responses and twin.posterior is not None:
            # Deterministic (seeded) reweighting: the loaded twin's belief equals the saved one.
            twin.outcome_update = assimilate_outcomes(
                twin.posterior, tpl, twin.regions, twin.patient.schedule, twin.responses,
                **twin.outcome_options,
            )  # fmt: skip
        return twin


def _concat(old: Observed, new: Observed | None) -> Observed:
    if new is None:
        return old
    return Observed(
        old.roi + tuple(new.roi),
        np.concatenate([old.time_h, new.time_h]),
        np.concatenate([old.activity_MBq, new.activity_MBq]),
    )


# -- (de)serialisation helpers ----------------------------------------------------------------

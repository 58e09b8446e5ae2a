"""Clinical input: patient manifests (YAML) and measured time-activity data (CSV).

These are the tidy files a clinic exports for a twin, read once and converted to twinjax's
canonical units at the edge (time h, activity MBq, amount nmol, volume L, mass kg; see
`twinjax.units`). Everything is validated before anything is computed: an invalid file raises
`twinjax.InputError` naming the file, the field or column, the row, the value and what is allowed.
Nothing is written.

**Patient manifest** (one YAML file per patient), read by [`load_patient`][]:

```yaml
patient_id: A01
sex: male                 # male | female, optional
weight_kg: 84.1           # optional covariates: kg, cm, fraction, mL/min (absolute eGFR)
height_cm: 166
hematocrit: 0.409
egfr_mL_min: 92.9
ct_volumes_mL:            # region -> volume from CT segmentation (mL)
  kidneys: 307.1
  tumour: 593.0
administrations:          # one entry per injection, times in hours since the first one
  - time_h: 0.0
    nuclide: Lu-177
    activity_MBq: 6939.6
    ligand_hot_nmol: 9.5477     # optional: labelled ligand (checked against the activity)
    ligand_cold_nmol: 43.9963   # optional: unlabelled ligand
    duration_h: 0.0             # optional: 0 = bolus, > 0 = infusion
```

**Time-activity data** (one CSV for a cohort), read by [`read_tacs`][]: columns `patient_id`,
`roi`, `time_h` (hours since the first administration), one activity column (`activity_MBq`, or
`activity_kBq`, `activity_GBq`, `activity_Bq`, `activity_mCi`, converted to MBq) and an optional
`cycle`; one row per patient, scan and region. Activities are as measured (not decay-corrected).

```python
patient = load_patient("patients/A01.yaml")
data = read_tacs("tacs.csv", patient_id="A01")
check_against_patient(data, patient)
data.for_roi("kidneys")          # (time_h, activity_MBq)
data.until(100.0)                # the scans known 100 h after the first injection
```
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Field, field_validator, model_validator

from .. import units
from .._config import _Strict, read_yaml, validate
from .._errors import InputError
from ..nuclides import nuclide as _nuclide
from ..schedule import Administration, Schedule

__all__ = [
    "AdministrationRecord",
    "Patient",
    "PatientManifest",
    "TimeActivityData",
    "check_against_patient",
    "load_patient",
    "read_tacs",
]

#: Activity columns accepted in a time-activity CSV and their factor to MBq.
ACTIVITY_COLUMNS: dict[str, float] = {
    "activity_MBq": 1.0,
    "activity_kBq": units.KBQ_TO_MBQ,
    "activity_GBq": units.GBQ_TO_MBQ,
    "activity_Bq": units.BQ_TO_MBQ,
    "activity_mCi": units.MCI_TO_MBQ,
}
_REQUIRED_COLUMNS = ("patient_id", "roi", "time_h")
_OPTIONAL_COLUMNS = ("cycle",)
_MAX_ERRORS = 10
_REGION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is a boolean; allowed: a number")
    return v


def _id_text(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(
            f"patient_id = {v!r} is a number; allowed: a text identifier (quote it in YAML, "
            'e.g. patient_id: "007")'
        )
    return v


_Number = Annotated[float, BeforeValidator(_no_bool)]


def _finite(v: float) -> bool:
    return math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# Patient manifest
# ---------------------------------------------------------------------------------------------


class AdministrationRecord(_Strict):
    """One administration as written in a patient manifest (units in the field names).

    `time_h` (h since the first administration, >= 0), `nuclide` (e.g. ``Lu-177``; stored under
    its canonical name), `activity_MBq` (> 0), `ligand_hot_nmol` (labelled ligand, optional,
    > 0, must agree with ``activity_MBq / nuclide.mbq_per_nmol`` within 3 %),
    `ligand_cold_nmol` (unlabelled ligand, optional, >= 0), `duration_h` (0 = bolus).
    """

    time_h: _Number
    nuclide: str
    activity_MBq: _Number
    ligand_hot_nmol: _Number | None = None
    ligand_cold_nmol: _Number | None = None
    duration_h: _Number = 0.0

    @field_validator("time_h")
    @classmethod
    def _time(cls, v: float) -> float:
        if not (_finite(v) and v >= 0):
            raise ValueError(
                f"time_h = {v!r}; allowed: a finite time >= 0 h (hours since the first "
                "administration)"
            )
        return v

    @field_validator("nuclide")
    @classmethod
    def _nuclide_name(cls, v: str) -> str:
        return _nuclide(v).name  # InputError (a ValueError) names the closest known nuclides

    @field_validator("activity_MBq")
    @classmethod
    def _activity(cls, v: float) -> float:
        if not (_finite(v) and 0 < v <= 1e5):
            hint = " (this looks like kBq; give MBq)" if _finite(v) and v > 1e5 else ""
            raise ValueError(
                f"activity_MBq = {v!r}; allowed: a finite activity above 0 and at most "
                f"100000 MBq{hint}"
            )
        return v

    @field_validator("ligand_hot_nmol")
    @classmethod
    def _hot(cls, v: float | None) -> float | None:
        if v is not None and not (_finite(v) and v > 0):
            raise ValueError(f"ligand_hot_nmol = {v!r}; allowed: a finite amount > 0 nmol")
        return v

    @field_validator("ligand_cold_nmol")
    @classmethod
    def _cold(cls, v: float | None) -> float | None:
        if v is not None and not (_finite(v) and v >= 0):
            raise ValueError(f"ligand_cold_nmol = {v!r}; allowed: a finite amount >= 0 nmol")
        return v

    @field_validator("duration_h")
    @classmethod
    def _duration(cls, v: float) -> float:
        if not (_finite(v) and v >= 0):
            raise ValueError(f"duration_h = {v!r}; allowed: 0 (bolus) or a finite duration > 0 h")
        return v

    @model_validator(mode="after")
    def _hot_matches_activity(self) -> AdministrationRecord:
        if self.ligand_hot_nmol is None:
            return self
        spec = _nuclide(self.nuclide).mbq_per_nmol
        expected = self.activity_MBq / spec
        rel = self.ligand_hot_nmol / expected - 1.0
        if abs(rel) > 0.03:
            ratio = self.ligand_hot_nmol / expected
            hint = ""
            if 300 < ratio < 3000:
                hint = " (is activity_MBq in GBq?)"
            elif 1 / 3000 < ratio < 1 / 300:
                hint = " (is activity_MBq in kBq?)"
            raise ValueError(
                f"ligand_hot_nmol = {self.ligand_hot_nmol!r} nmol disagrees with activity_MBq = "
                f"{self.activity_MBq!r} MBq of {self.nuclide}, which is {expected:.5g} nmol of "
                f"labelled ligand at {spec:.6g} MBq/nmol (off by {100 * rel:+.1f} %); allowed: "
                f"within 3 % of activity_MBq / {spec:.6g}{hint}"
            )
        return self

    @property
    def ligand_nmol(self) -> float | None:
        """Total ligand of the administration (nmol) for [`twinjax.Administration`][].

        Hot + cold when the cold amount is given (the hot amount defaults to
        ``activity_MBq / mbq_per_nmol``, and the total is never below that labelled amount);
        ``None`` (carrier-free: labelled molecules only) when no cold amount is given.
        """
        if self.ligand_cold_nmol is None:
            return None
        labelled = self.activity_MBq / _nuclide(self.nuclide).mbq_per_nmol
        hot = labelled if self.ligand_hot_nmol is None else self.ligand_hot_nmol
        return max(hot + self.ligand_cold_nmol, labelled)


class PatientManifest(_Strict):
    """A patient's manifest (YAML), validated. Unknown fields are errors.

    Fields (optional ones may be omitted or ``null``; present ones are range-checked):
    - `patient_id`: text identifier.
    - `sex`: ``male`` or ``female``.
    - `weight_kg`: body weight, 2-400 kg.
    - `height_cm`: body height, 40-250 cm.
    - `hematocrit`: fraction 0.1-0.8 (not percent).
    - `egfr_mL_min`: absolute estimated GFR, 1-300 mL/min (not normalised to 1.73 m²).
    - `ct_volumes_mL`: region -> CT volume (mL, > 0); region names are identifiers
      (letters, digits, ``_``) because they become covariate names ``ct_volume_L_<region>``.
    - `administrations`: one or more [`AdministrationRecord`][]s, strictly increasing in time,
      all of one nuclide.
    """

    patient_id: Annotated[str, BeforeValidator(_id_text)]
    sex: Literal["male", "female"] | None = None
    weight_kg: _Number | None = None
    height_cm: _Number | None = None
    hematocrit: _Number | None = None
    egfr_mL_min: _Number | None = None
    ct_volumes_mL: dict[str, _Number] = Field(default_factory=dict)
    administrations: list[AdministrationRecord] = Field(min_length=1)

    @field_validator("patient_id")
    @classmethod
    def _pid(cls, v: str) -> str:
        if not v.strip() or v != v.strip():
            raise ValueError(
                f"patient_id = {v!r}; allowed: a non-empty identifier without surrounding spaces"
            )
        return v

    @field_validator("weight_kg")
    @classmethod
    def _weight(cls, v: float | None) -> float | None:
        if v is not None and not (_finite(v) and 2 <= v <= 400):
            hint = ""
            if _finite(v) and 2000 <= v <= 400_000:
                hint = f" (this looks like grams: {v!r} g = {v * units.G_TO_KG:.4g} kg)"
            raise ValueError(
                f"weight_kg = {v!r}; allowed: a body weight between 2 and 400 kg{hint}"
            )
        return v

    @field_validator("height_cm")
    @classmethod
    def _height(cls, v: float | None) -> float | None:
        if v is not None and not (_finite(v) and 40 <= v <= 250):
            hint = ""
            if _finite(v) and 0.4 <= v <= 2.5:
                hint = f" (this looks like metres: {v!r} m = {100 * v:.4g} cm)"
            elif _finite(v) and 400 <= v <= 2500:
                hint = f" (this looks like millimetres: {v!r} mm = {v / 10:.4g} cm)"
            raise ValueError(
                f"height_cm = {v!r}; allowed: a body height between 40 and 250 cm{hint}"
            )
        return v

    @field_validator("hematocrit")
    @classmethod
    def _hct(cls, v: float | None) -> float | None:
        if v is not None and not (_finite(v) and 0.1 <= v <= 0.8):
            hint = " (not percent)" if _finite(v) and v > 1 else ""
            raise ValueError(f"hematocrit = {v!r}; allowed: a fraction between 0.1 and 0.8{hint}")
        return v

    @field_validator("egfr_mL_min")
    @classmethod
    def _egfr(cls, v: float | None) -> float | None:
        if v is not None and not (_finite(v) and 1 <= v <= 300):
            hint = " (is it in L/min or mL/s? give mL/min)" if _finite(v) and 0 < v < 1 else ""
            raise ValueError(
                f"egfr_mL_min = {v!r}; allowed: an absolute filtration rate between 1 and "
                f"300 mL/min{hint}"
            )
        return v

    @field_validator("ct_volumes_mL")
    @classmethod
    def _volumes(cls, v: dict[str, float]) -> dict[str, float]:
        for region, vol in v.items():
            if not _REGION_NAME.match(region):
                raise ValueError(
                    f"region name {region!r}; allowed: letters, digits and '_', starting with a "
                    "letter (it becomes the covariate ct_volume_L_<region>)"
                )
            if not (_finite(vol) and 0 < vol <= 2e5):
                hint = ""
                if _finite(vol) and vol > 2e5:
                    hint = " (this looks like mm³; 1 mL = 1000 mm³)"
                raise ValueError(
                    f"ct_volumes_mL.{region} = {vol!r}; allowed: a finite volume above 0 and at "
                    f"most 200000 mL{hint}"
                )
        return v

    @model_validator(mode="after")
    def _schedule(self) -> PatientManifest:
        admins = self.administrations
        for i in range(1, len(admins)):
            if admins[i].time_h <= admins[i - 1].time_h:
                raise ValueError(
                    f"administrations[{i}].time_h = {admins[i].time_h!r} h is not after "
                    f"administrations[{i - 1}].time_h = {admins[i - 1].time_h!r} h; allowed: "
                    "strictly increasing times (list the administrations in order)"
                )
        nuclides = sorted({a.nuclide for a in admins})
        if len(nuclides) > 1:
            raise ValueError(
                f"administrations mix nuclides {nuclides}; allowed: one nuclide per patient file"
            )
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class Patient:
    """One patient, ready for a twin: covariates in canonical units and the treatment schedule.

    **Fields:**
    - `patient_id`: the identifier of the manifest.
    - `covariates`: name -> value in twinjax's canonical units, names carrying the unit; only the
      covariates the manifest gives: `weight_kg` (kg), `height_cm` (cm), `hematocrit` (-),
      `egfr_L_per_h` (L/h, from mL/min x 0.06), `bsa_m2` (m², Mosteller
      ``sqrt(height_cm * weight_kg / 3600)``, when both are given) and `ct_volume_L_<region>`
      (L, from mL / 1000) for every CT volume. Template ``covariates:`` formulas refer to them.
    - `schedule`: a [`twinjax.Schedule`][] with one [`twinjax.Administration`][] per entry
      (total ligand = hot + cold, see [`AdministrationRecord.ligand_nmol`][]).
    - `manifest`: the validated [`PatientManifest`][] (``None`` for a patient built in code with
      [`Patient.virtual`][]).
    - `source`: the file it was read from (``None`` if built in code).

    Equality is identity (the schedule holds arrays).
    """

    patient_id: str
    covariates: dict[str, float]
    schedule: Schedule
    manifest: PatientManifest | None = None
    source: str | None = None

    @classmethod
    def virtual(
        cls,
        covariates: Mapping[str, float] | None,
        schedule: Schedule,
        *,
        patient_id: str = "virtual",
    ) -> Patient:
        """A patient built in code (simulation studies, tests, benchmarks): no manifest.

        **Arguments:**
        - `covariates`: name -> value in canonical units (names as in the fields above, e.g.
          ``{"egfr_L_per_h": 5.4}``); ``None`` or ``{}`` for a typical patient.
        - `schedule`: the [`twinjax.Schedule`][] of administrations.
        - `patient_id`: an identifier.

        **Returns:** a [`Patient`][]. **Raises:** `InputError` for a covariate that is not a
        finite number, or a schedule that is not a `Schedule`.
        """
        if not isinstance(schedule, Schedule):
            raise InputError(
                f"schedule = {type(schedule).__name__}; allowed: a twinjax.Schedule "
                "(e.g. Schedule.single(7400.0, ligand_nmol=100.0))"
            )
        cov: dict[str, float] = {}
        for name, value in (covariates or {}).items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.number)
                or not _finite(value)
            ):
                raise InputError(
                    f"covariates[{name!r}] = {value!r}; allowed: a finite number in canonical "
                    "units (see twinjax.units)"
                )
            cov[str(name)] = float(value)
        return cls(patient_id, cov, schedule)

    @classmethod
    def from_manifest(cls, manifest: PatientManifest, *, source: str | None = None) -> Patient:
        """Build a patient from a validated manifest.

        **Arguments:**
        - `manifest`: a [`PatientManifest`][].
        - `source`: where it came from (a file name), used in error messages.

        **Returns:** a [`Patient`][].
        """
        where = source or f"patient {manifest.patient_id!r}"
        try:
            schedule = Schedule.from_administrations(
                [
                    Administration(a.time_h, a.activity_MBq, a.nuclide, a.ligand_nmol, a.duration_h)
                    for a in manifest.administrations
                ]
            )
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        return cls(manifest.patient_id, _covariates(manifest), schedule, manifest, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "patient") -> Patient:
        """Validate a manifest given as a mapping (the parsed YAML) and build the patient.

        **Arguments:**
        - `data`: the manifest's fields (units as in [`PatientManifest`][]).
        - `where`: a name for error messages (e.g. the file).

        **Returns:** a [`Patient`][]. **Raises:** `InputError` naming `where`, the field and value.
        """
        manifest = validate(PatientManifest, data, where)
        return cls.from_manifest(manifest, source=where)


def _covariates(m: PatientManifest) -> dict[str, float]:
    cov: dict[str, float] = {}
    if m.weight_kg is not None:
        cov["weight_kg"] = float(m.weight_kg)
    if m.height_cm is not None:
        cov["height_cm"] = float(m.height_cm)
    if m.hematocrit is not None:
        cov["hematocrit"] = float(m.hematocrit)
    if m.egfr_mL_min is not None:
        cov["egfr_L_per_h"] = float(m.egfr_mL_min) * units.ML_PER_MIN_TO_L_PER_H
    if m.weight_kg is not None and m.height_cm is not None:
        cov["bsa_m2"] = math.sqrt(m.height_cm * m.weight_kg / 3600.0)
    for region, vol in m.ct_volumes_mL.items():
        cov[f"ct_volume_L_{region}"] = float(vol) * units.ML_TO_L
    return cov


def load_patient(path: str | Path) -> Patient:
    """Read and validate a patient manifest (YAML; format in the module docs).

    **Arguments:**
    - `path`: the YAML file (units: kg, cm, fraction, mL/min, mL, h, MBq, nmol as named in the
      fields).

    **Returns:** a [`Patient`][] with covariates in canonical units and its `Schedule`.

    **Raises:** `InputError` naming the file, the field, the value and what is allowed.
    """
    where = str(path)
    return Patient.from_dict(read_yaml(path), where=where)


# ---------------------------------------------------------------------------------------------
# Time-activity data
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TimeActivityData:
    """Measured activities of one patient: one row per (region, scan time).

    **Fields** (1-D, one entry per row; arrays are float64 and read-only):
    - `patient_id`: the patient.
    - `roi`: region name of each row (e.g. ``kidneys``, ``whole_body``).
    - `time_h`: scan time (h since the first administration), finite, >= 0, strictly increasing
      within each region.
    - `activity_MBq`: measured activity in the region (MBq, not decay-corrected), finite, >= 0.
    - `cycle`: treatment cycle of each row (int, >= 1) or ``None``.
    - `source`: the file it was read from (``None`` if built in code).

    Rows keep their order (read in file order, or sorted by time with ``sort=True``).
    Equality is identity.
    """

    patient_id: str
    roi: tuple[str, ...]
    time_h: np.ndarray
    activity_MBq: np.ndarray
    cycle: np.ndarray | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.source or 'time-activity data'} (patient {self.patient_id!r})"
        roi = tuple(str(r) for r in self.roi)
        time = _readonly(np.array(self.time_h, dtype=np.float64))
        act = _readonly(np.array(self.activity_MBq, dtype=np.float64))
        n = len(roi)
        if time.shape != (n,) or act.shape != (n,):
            raise InputError(
                f"{where}: roi ({n} rows), time_h {time.shape} and activity_MBq {act.shape} "
                "must be 1-D of the same length"
            )
        cycle = None
        if self.cycle is not None:
            c = np.asarray(self.cycle)
            if c.shape != (n,) or not (
                np.issubdtype(c.dtype, np.integer)
                or (np.issubdtype(c.dtype, np.floating) and np.all(np.isfinite(c) & (c % 1 == 0)))
            ):
                raise InputError(f"{where}: cycle must be {n} integers (or None), got {c!r}")
            cycle = _readonly(c.astype(np.int64))
            if np.any(cycle < 1):
                i = int(np.argmax(cycle < 1))
                raise InputError(f"{where}: row {i}: cycle = {int(cycle[i])}; allowed: >= 1")
        errors: list[str] = []
        for i in range(n):
            for col, v, unit in (("time_h", time[i], "h"), ("activity_MBq", act[i], "MBq")):
                if not (math.isfinite(v) and v >= 0):
                    errors.append(
                        f"row {i} (roi {roi[i]!r}): {col} = {float(v)!r}; allowed: a finite "
                        f"value >= 0 {unit}"
                    )
        if not errors:
            errors = _order_problems(
                roi, time, [f"row {i}" for i in range(n)], "sort the rows by time"
            )
        _raise(where, errors)
        for name, value in (
            ("roi", roi),
            ("time_h", time),
            ("activity_MBq", act),
            ("cycle", cycle),
        ):
            object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        """Number of rows (measurements)."""
        return len(self.roi)

    @property
    def rois(self) -> tuple[str, ...]:
        """The region names, sorted and unique."""
        return tuple(sorted(set(self.roi)))

    def for_roi(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The series of one region.

        **Arguments:** `name` — a region of `rois`.

        **Returns:** ``(time_h, activity_MBq)``: times (h) and activities (MBq), in time order.

        **Raises:** `InputError` listing the known regions if `name` is not one of them.
        """
        if name not in self.roi:
            raise InputError(
                f"roi {name!r} is not in the data of patient {self.patient_id!r}; known: "
                f"{', '.join(self.rois)}"
            )
        keep = np.array([r == name for r in self.roi], dtype=bool)
        return self.time_h[keep].copy(), self.activity_MBq[keep].copy()

    def until(self, time_h: float) -> TimeActivityData:
        """The rows measured up to a time, for sequential assimilation.

        **Arguments:** `time_h` — the cut-off (h since the first administration); rows with
        ``time <= time_h`` are kept.

        **Returns:** a [`TimeActivityData`][] (possibly with no rows).
        """
        try:
            t = float(time_h)
        except (TypeError, ValueError):
            raise InputError(f"until: time_h = {time_h!r}; allowed: a number (h)") from None
        if math.isnan(t):
            raise InputError(f"until: time_h = {time_h!r}; allowed: a number (h), not NaN")
        keep = self.time_h <= t
        return TimeActivityData(
            self.patient_id,
            tuple(r for r, k in zip(self.roi, keep, strict=True) if k),
            self.time_h[keep],
            self.activity_MBq[keep],
            None if self.cycle is None else self.cycle[keep],
            self.source,
        )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _raise(where: str, errors: list[str]) -> None:
    if errors:
        more = f"; ... and {len(errors) - _MAX_ERRORS} more" if len(errors) > _MAX_ERRORS else ""
        raise InputError(f"{where}: " + "; ".join(errors[:_MAX_ERRORS]) + more)


def _order_problems(roi, time, labels, fix: str, prefix: str = "") -> list[str]:
    """Duplicate (roi, time) rows, then times not increasing within a roi."""
    errors: list[str] = []
    seen: dict[tuple[str, float], int] = {}
    for i, (r, t) in enumerate(zip(roi, time, strict=True)):
        key = (r, float(t))
        if key in seen:
            errors.append(
                f"{prefix}{labels[i]} (roi {r!r}): time_h = {float(t)!r} h duplicates {labels[seen[key]]}; "
                "allowed: one row per roi and time (remove or merge the duplicate row)"
            )
        else:
            seen[key] = i
    if errors:
        return errors
    last: dict[str, int] = {}
    for i, (r, t) in enumerate(zip(roi, time, strict=True)):
        j = last.get(r)
        if j is not None and t < time[j]:
            errors.append(
                f"{prefix}{labels[i]} (roi {r!r}): time_h = {float(t)!r} h comes after time_h = "
                f"{float(time[j])!r} h on {labels[j]}; allowed: times increasing within each "
                f"roi ({fix})"
            )
        last[r] = i
    return errors


def _parse_number(raw: str) -> tuple[float | None, str | None]:
    s = raw.strip()
    if not s:
        return None, "is empty"
    try:
        v = float(s)
    except ValueError:
        return None, "is not a number"
    if math.isnan(v):
        return None, "is NaN"
    if not math.isfinite(v):
        return None, "is not finite"
    return v, None


def _allowed_columns() -> str:
    return (
        f"required {', '.join(_REQUIRED_COLUMNS)} and one activity column of "
        f"{', '.join(ACTIVITY_COLUMNS)}; optional {', '.join(_OPTIONAL_COLUMNS)}"
    )


def _check_header(where: str, header: list[str]) -> str:
    """Validate the column names; return the activity column."""
    if not any(header):
        raise InputError(f"{where}: the header row is empty; allowed columns: {_allowed_columns()}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{where}: column(s) {dupes} appear more than once; allowed: each once")
    known = (*_REQUIRED_COLUMNS, *ACTIVITY_COLUMNS, *_OPTIONAL_COLUMNS)
    unknown = [h for h in header if h not in known]
    if unknown:
        hints = []
        for h in unknown:
            close = [k for k in known if k.lower() == h.lower()]  # wrong case: mBq vs MBq
            if not close and h.lower().startswith("activity"):
                hints.append(f"{h!r} (not a known activity unit)")
                continue
            close = close or difflib.get_close_matches(h, known, n=1, cutoff=0.6)
            hints.append(f"{h!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InputError(
            f"{where}: unknown column(s) {', '.join(hints)}; allowed columns: {_allowed_columns()} "
            "(units are case-sensitive)"
        )
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    activity = [h for h in header if h in ACTIVITY_COLUMNS]
    if missing or not activity:
        what = missing + ([] if activity else ["an activity column"])
        raise InputError(
            f"{where}: missing column(s) {', '.join(what)} (the file has {', '.join(header)}); "
            f"allowed columns: {_allowed_columns()}"
        )
    if len(activity) > 1:
        raise InputError(
            f"{where}: more than one activity column ({', '.join(activity)}); allowed: exactly "
            f"one of {', '.join(ACTIVITY_COLUMNS)}"
        )
    return activity[0]


def read_tacs(
    path: str | Path, patient_id: str | None = None, *, sort: bool = False
) -> dict[str, TimeActivityData] | TimeActivityData:
    """Read measured time-activity data from a CSV (format in the module docs).

    **Arguments:**
    - `path`: the CSV file: columns `patient_id`, `roi`, `time_h` (h since the first
      administration), one activity column (`activity_MBq`, `activity_kBq`, `activity_GBq`,
      `activity_Bq` or `activity_mCi`; converted to MBq), optional `cycle` (integer >= 1).
    - `patient_id`: if given, read only this patient (only its rows are validated) and return
      its data alone.
    - `sort`: sort each patient's rows by time (stable). By default rows whose times are not
      increasing within a region are an error, so that a mislabelled row is not hidden.

    **Returns:** patient id -> [`TimeActivityData`][] (activities in MBq), in file order; or one
    [`TimeActivityData`][] when `patient_id` is given.

    **Raises:** `InputError` naming the file, the line, the patient, the roi, the column, the
    value and what is allowed: for missing, unknown or duplicate columns; empty, non-numeric,
    NaN or infinite values; negative times or activities; duplicate (roi, time) rows; times out
    of order; no data rows; an unknown `patient_id`.
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise InputError(f"file {where!r} does not exist")
    if patient_id is not None and not isinstance(patient_id, str):
        raise InputError(f"read_tacs: patient_id = {patient_id!r}; allowed: a text identifier")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(
                    f"{where}: the file is empty; allowed columns: {_allowed_columns()}"
                )
            header = [h.strip() for h in header]
            act_col = _check_header(where, header)
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise InputError(f"{where}: not a text (UTF-8) CSV file") from None
    except csv.Error as err:
        raise InputError(f"{where}: not a valid CSV file ({err})") from None

    col = {h: i for i, h in enumerate(header)}
    factor = ACTIVITY_COLUMNS[act_col]
    unit = act_col.removeprefix("activity_")
    has_cycle = "cycle" in col
    errors: list[str] = []
    known: dict[str, None] = {}
    parsed: dict[str, list[tuple[int, str, float, float, int | None]]] = {}
    n_rows = 0
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        n_rows += 1
        if len(row) != len(header):
            errors.append(
                f"line {line} has {len(row)} fields; allowed: {len(header)} as in the header"
            )
            continue
        pid = row[col["patient_id"]].strip()
        if not pid:
            errors.append(f"line {line}: patient_id is empty; allowed: a text identifier")
            continue
        known[pid] = None
        if patient_id is not None and pid != patient_id:
            continue
        roi = row[col["roi"]].strip()
        ctx = f"line {line} (patient {pid!r}, roi {roi!r})"
        if not roi:
            errors.append(f"line {line} (patient {pid!r}): roi is empty; allowed: a region name")
            continue
        ok = True
        raw_t = row[col["time_h"]]
        t, problem = _parse_number(raw_t)
        if problem or t < 0:
            errors.append(
                f"{ctx}: time_h = {raw_t!r} {problem or 'is negative'}; allowed: a finite time "
                ">= 0 h (hours since the first administration)"
            )
            ok = False
        raw_a = row[col[act_col]]
        a, problem = _parse_number(raw_a)
        if problem or a < 0:
            errors.append(
                f"{ctx}: {act_col} = {raw_a!r} {problem or 'is negative'}; allowed: a finite "
                f"activity >= 0 {unit}"
            )
            ok = False
        c = None
        if has_cycle:
            raw_c = row[col["cycle"]]
            cv, problem = _parse_number(raw_c)
            if problem is None and (cv < 1 or not cv.is_integer()):
                problem = "is not an integer >= 1"
            if problem:
                errors.append(f"{ctx}: cycle = {raw_c!r} {problem}; allowed: an integer >= 1")
                ok = False
            else:
                c = int(cv)
        if ok:
            parsed.setdefault(pid, []).append((line, roi, t, a * factor, c))
    _raise(where, errors)

    if n_rows == 0:
        raise InputError(
            f"{where}: no data rows (an empty series); allowed: one or more rows of "
            f"{', '.join(header)}"
        )
    if patient_id is not None and patient_id not in parsed:
        raise InputError(
            f"{where}: no rows for patient_id {patient_id!r}; known: {', '.join(known)}"
        )

    out: dict[str, TimeActivityData] = {}
    for pid, recs in parsed.items():
        if sort:
            recs = sorted(recs, key=lambda r: r[2])
        roi = tuple(r[1] for r in recs)
        time = np.array([r[2] for r in recs], dtype=np.float64)
        labels = [f"line {r[0]}" for r in recs]
        errors += _order_problems(
            roi, time, labels, "sort them or pass sort=True", prefix=f"patient {pid!r}, "
        )
        if errors:
            continue
        out[pid] = TimeActivityData(
            patient_id=pid,
            roi=roi,
            time_h=time,
            activity_MBq=np.array([r[3] for r in recs], dtype=np.float64),
            cycle=np.array([r[4] for r in recs], dtype=np.int64) if has_cycle else None,
            source=where,
        )
    _raise(where, errors)
    return out[patient_id] if patient_id is not None else out


def check_against_patient(
    data: TimeActivityData, patient: Patient, *, margin: float = 0.05
) -> None:
    """Check measured data against the patient's schedule before fitting.

    Every scan must be at or after the first administration; every activity must be at most the
    total activity administered up to that time (no decay correction) plus a `margin` for
    measurement error; a row's `cycle`, if given, must be an administration of the schedule and
    its time must lie between that administration and the next. Region names need not be CT
    volumes of the patient (``whole_body`` etc. are fine).

    **Arguments:**
    - `data`: the patient's [`TimeActivityData`][] (h, MBq).
    - `patient`: the [`Patient`][] (its `schedule`: h, MBq).
    - `margin`: allowed relative excess over the administered activity (-), default 5 %.

    **Returns:** ``None``. **Raises:** `InputError` naming the data, the patient, the row, the
    value and what is allowed.
    """
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
        raise InputError(f"check_against_patient: margin = {margin!r}; allowed: a fraction >= 0")
    where = f"{data.source or 'time-activity data'} (patient {data.patient_id!r})"
    if data.patient_id != patient.patient_id:
        raise InputError(
            f"{where}: the data are of patient {data.patient_id!r} but the patient file "
            f"{patient.source or ''} is of {patient.patient_id!r}; allowed: the same patient"
        )
    t_admin = np.asarray(patient.schedule.time_h, dtype=np.float64)
    a_admin = np.asarray(patient.schedule.activity_MBq, dtype=np.float64)
    errors: list[str] = []
    for i in range(data.n):
        t, a, roi = float(data.time_h[i]), float(data.activity_MBq[i]), data.roi[i]
        ctx = f"row {i} (roi {roi!r}, time_h = {t!r} h)"
        if t < t_admin[0]:
            errors.append(
                f"{ctx}: the scan is before the first administration at time_h = "
                f"{float(t_admin[0])!r} h; allowed: scan times >= {float(t_admin[0])!r} h"
            )
            continue
        given = float(a_admin[t_admin <= t].sum())
        if a > given * (1.0 + margin):
            errors.append(
                f"{ctx}: activity_MBq = {a!r} exceeds the {given:.6g} MBq administered up to "
                f"then; allowed: at most {given * (1.0 + margin):.6g} MBq (+{100 * margin:g} % "
                "margin)"
            )
        if data.cycle is not None:
            c = int(data.cycle[i])
            if c > len(t_admin):
                errors.append(
                    f"{ctx}: cycle = {c}; allowed: 1 to {len(t_admin)} (the administrations of "
                    "the patient)"
                )
            elif t < t_admin[c - 1] or (c < len(t_admin) and t >= t_admin[c]):
                end = f" and before {float(t_admin[c])!r} h" if c < len(t_admin) else ""
                errors.append(
                    f"{ctx}: cycle = {c} but the scan is not in that cycle; allowed: times from "
                    f"{float(t_admin[c - 1])!r} h{end}"
                )
    _raise(where, errors)

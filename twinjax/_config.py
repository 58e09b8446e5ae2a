"""Validated configuration: pydantic schemas of templates and studies, unit conversion at the edge.

Every YAML file twinjax reads goes through a schema here. Unknown keys are errors (a typo in a
field name must not pass silently), and every error message names the file, the field, the value
and what is allowed, before anything is computed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._errors import InputError

# Conversion factors to twinjax's canonical units (h, L, nmol, nmol/L, L/h, 1/h, kg).
# Concentrations of PET input functions keep their own unit (only the time part converts).
UNIT_FACTORS: dict[str, float] = {
    "-": 1.0,
    "1/h": 1.0,
    "1/min": 60.0,
    "1/s": 3600.0,
    "1/d": 1.0 / 24.0,
    "h": 1.0,
    "min": 1.0 / 60.0,
    "s": 1.0 / 3600.0,
    "d": 24.0,
    "L": 1.0,
    "mL": 1e-3,
    "kg": 1.0,
    "g": 1e-3,
    "m2": 1.0,
    "L/h": 1.0,
    "L/min": 60.0,
    "mL/min": 0.06,
    "mL/h": 1e-3,
    "nmol": 1.0,
    "pmol": 1e-3,
    "nmol/L": 1.0,
    "nM": 1.0,
    "pmol/L": 1e-3,
    "pM": 1e-3,
    "nmol/mL": 1e3,
    "nmol/h": 1.0,
    "nmol/min": 60.0,
    "L/(nmol h)": 1.0,
    "L/(nmol min)": 60.0,
    "1/(nM h)": 1.0,
    "1/(nM min)": 60.0,
    "MBq": 1.0,
    "GBq": 1e3,
    "MBq/nmol": 1.0,
    "MBq/L": 1.0,
    "uCi/mL": 1.0,
    "kBq/mL": 1.0,
    "uCi/mL/min": 60.0,
    "kBq/mL/min": 60.0,
}


def to_canonical(value: float, unit: str, field: str) -> float:
    """Convert `value` in `unit` to twinjax's canonical unit for that quantity."""
    if unit not in UNIT_FACTORS:
        raise InputError(
            f"{field}: unit {unit!r} is not known; allowed: {', '.join(sorted(UNIT_FACTORS))}"
        )
    return float(value) * UNIT_FACTORS[unit]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ParameterSpec(_Strict):
    """A parameter value with its unit, between-patient variability and source."""

    value: float
    unit: str
    cv: float | None = Field(default=None, description="lognormal between-patient CV (-)")
    stat: Literal["median", "mean"] = Field(
        default="median", description="whether `value` is the population median or mean"
    )
    source: str

    def median(self, field: str) -> float:
        """The population median in canonical units (a lognormal mean m has median
        m / sqrt(1 + cv^2))."""
        v = to_canonical(self.value, self.unit, field)
        if self.stat == "mean" and self.cv is not None:
            v = v / math.sqrt(1.0 + self.cv**2)
        return v

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"value = {v!r} is not finite; allowed: a finite number (in `unit`)")
        return v

    @field_validator("cv")
    @classmethod
    def _cv(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v <= 0 or v > 3):
            raise ValueError(f"cv = {v!r}; allowed: 0 < cv <= 3 (a lognormal CV)")
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        if v not in UNIT_FACTORS:
            raise ValueError(f"unit {v!r} is not known; allowed: {', '.join(sorted(UNIT_FACTORS))}")
        return v


class OrganSpec(_Strict):
    name: str
    receptor: bool = False
    vascular: bool = True
    permeable: bool = True
    drains_to: str | None = None
    filtration: bool = False
    biliary: bool = False


class TransferSpec(_Strict):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    rate: str | float


class SaturableSpec(_Strict):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    vmax: str | float
    km: str | float
    volume: str | float


class BindingSpec(_Strict):
    free: str
    bound: str
    k_on: str | float
    capacity: str | float
    volume: str | float


class PBPKStructure(_Strict):
    kind: Literal["pbpk"]
    circulation: Literal["arteriovenous", "single"] = "arteriovenous"
    release: Literal["interstitial", "sink"] = "interstitial"
    organs: list[OrganSpec]


class CompartmentalStructure(_Strict):
    kind: Literal["compartmental"]
    compartments: list[str]
    dose: str
    excreta: list[str] = []
    volumes: dict[str, str | float] = {}
    transfers: list[TransferSpec] = []
    saturable: list[SaturableSpec] = []
    bindings: list[BindingSpec] = []
    groups: dict[str, list[str]] = {}


class AdministrationSpec(_Strict):
    time_h: float = 0.0
    activity_MBq: float
    ligand_nmol: float | None = None
    duration_h: float = 0.0


class TemplateSpec(_Strict):
    """A published model: structure, parameter values with sources and variability."""

    schema_: Literal["twinjax.template/1"] = Field(alias="schema")
    name: str
    title: str
    kind: Literal["pbpk", "compartmental", "pet_1tcm", "pet_2tcm"]
    nuclide: str
    ligand: str | None = None
    description: str | None = None
    references: dict[str, str]
    model: PBPKStructure | CompartmentalStructure | None = Field(default=None, discriminator="kind")
    input_function: dict[str, ParameterSpec] | None = None
    parameters: dict[str, ParameterSpec]
    derived: dict[str, str] = {}
    covariates: dict[str, str] = Field(
        default={}, description="parameter -> formula of patient covariates (canonical units)"
    )
    rois: dict[str, list[str]] = {}
    default_administration: AdministrationSpec | None = None
    notes: str | None = None


class TimesSpec(_Strict):
    start_h: float = 0.0
    stop_h: float
    n: int = 200


class CyclesSpec(_Strict):
    n_cycles: int
    interval_h: float
    activity_MBq: float | list[float]
    ligand_nmol: float | list[float] | None = None
    duration_h: float = 0.0


class ScheduleSpec(_Strict):
    administrations: list[AdministrationSpec] | None = None
    cycles: CyclesSpec | None = None


class StudySpec(_Strict):
    """What `twinjax simulate` runs: a template, optional parameter overrides, a schedule."""

    schema_: Literal["twinjax.study/1"] = Field(alias="schema")
    name: str
    description: str | None = None
    template: str
    parameters: dict[str, float] = {}
    schedule: ScheduleSpec
    times: TimesSpec | list[float]
    rois: list[str] | None = None


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file {str(p)!r} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{p.name}: not valid YAML ({err})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p.name}: not a text (UTF-8) YAML file") from None


def validate(schema: type[BaseModel], data: Any, where: str) -> Any:
    """Validate `data` against `schema`; turn pydantic's errors into one clear `InputError`."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors()[:5]:
            loc = ".".join(str(x) for x in e["loc"])
            if e["type"] == "extra_forbidden":
                allowed = _allowed_fields(schema, e["loc"][:-1])
                msg = f"unknown field {e['loc'][-1]!r}" + (
                    f"; allowed: {allowed}" if allowed else ""
                )
            else:
                msg = e["msg"]
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{loc}: {msg}{shown}")
        raise InputError(f"{where}: " + "; ".join(lines)) from None


def _allowed_fields(schema: type[BaseModel], loc: tuple) -> str:
    model: Any = schema
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:  # a key of a dict of models, e.g. parameters.<name>
            continue
        model = _inner_model(field.annotation)
    if model is None or not hasattr(model, "model_fields"):
        return ""
    return ", ".join(f.alias or n for n, f in model.model_fields.items())


def _inner_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _inner_model(arg)
        if m is not None:
            return m
    return None

"""The tissue radiobiology library: LQ parameters, LKB NTCP parameters and BED limits, each with
its source (``twinjax/data/tissues.yaml``).

    >>> kid = twinjax.radiobiology.tissue("kidney")
    >>> kid.alpha_beta_Gy, kid.repair_half_time_h, kid.lkb.td50_Gy
    (2.6, 2.8, 28.0)
    >>> kid.replace(repair_half_time_h=1.5)          # a study's own value

Each value's `basis` says whether it is a published value (``"published"``) or a convention of
the field with no tissue-specific measurement behind it (``"convention"``); `Tissue.sources`
lists them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from importlib import resources
from typing import Literal

import yaml
from pydantic import Field, field_validator

from .._config import _Strict, validate
from .._errors import InputError

__all__ = ["LKB", "Tissue", "known_tissues", "tissue"]


class _Value(_Strict):
    value: float
    basis: Literal["published", "convention"]
    source: str = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"value = {v!r}; allowed: a finite number > 0")
        return v


class _LKB(_Strict):
    td50_Gy: float = Field(gt=0)
    m: float = Field(gt=0)
    n: float = Field(gt=0)
    endpoint: str
    source: str = Field(min_length=1)


class _Limit(_Strict):
    value: float = Field(gt=0)
    condition: str
    source: str = Field(min_length=1)


class _TissueSpec(_Strict):
    title: str
    alpha_per_Gy: _Value | None = None
    alpha_beta_Gy: _Value
    repair_half_time_h: _Value
    alpha_sd_per_Gy: _Value | None = None
    clonogen_density_per_cm3: _Value | None = None
    lkb: _LKB | None = None
    bed_limits_Gy: list[_Limit] = Field(default_factory=list)


class _Library(_Strict):
    schema_: Literal["twinjax.tissues/1"] = Field(alias="schema")
    tissues: dict[str, _TissueSpec]


@dataclasses.dataclass(frozen=True)
class LKB:
    """Lyman-Kutcher-Burman NTCP parameters: `td50_Gy` (uniform EQD2 giving 50 % complication
    probability), `m` (slope), `n` (volume effect; gEUD exponent 1/n), `endpoint`, `source`."""

    td50_Gy: float
    m: float
    n: float
    endpoint: str = ""
    source: str = ""

    def __post_init__(self):
        for field in ("td50_Gy", "m", "n"):
            v = getattr(self, field)
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not (math.isfinite(v) and v > 0)
            ):
                raise InputError(f"LKB.{field} = {v!r}; allowed: a finite number > 0")


@dataclasses.dataclass(frozen=True)
class Tissue:
    """Radiobiological parameters of one tissue (units in the field names).

    `alpha_per_Gy`, `alpha_sd_per_Gy` (between-patient SD of alpha) and
    `clonogen_density_per_cm3` are ``None`` where no value is known (tumour-control functions then
    ask for them); `lkb` and `bed_limits_Gy` (``(value, condition)`` pairs) only for organs at
    risk; `sources`: field -> (basis, citation).
    """

    name: str
    title: str
    alpha_beta_Gy: float
    repair_half_time_h: float
    alpha_per_Gy: float | None = None
    alpha_sd_per_Gy: float | None = None
    clonogen_density_per_cm3: float | None = None
    lkb: LKB | None = None
    bed_limits_Gy: tuple[tuple[float, str], ...] = ()
    sources: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def beta_per_Gy2(self) -> float | None:
        """beta = alpha / (alpha/beta) (1/Gy^2), where alpha is known."""
        return None if self.alpha_per_Gy is None else self.alpha_per_Gy / self.alpha_beta_Gy

    @property
    def repair_rate_per_h(self) -> float:
        """mu = ln 2 / T_rep (1/h)."""
        return math.log(2.0) / self.repair_half_time_h

    def replace(self, **changes) -> Tissue:
        """A copy with some parameters replaced (validated: positive, finite); the replaced
        fields' sources become ``("user", "set by the caller")``."""
        for field, v in changes.items():
            if field not in {
                "alpha_beta_Gy",
                "repair_half_time_h",
                "alpha_per_Gy",
                "alpha_sd_per_Gy",
                "clonogen_density_per_cm3",
            }:
                raise InputError(
                    f"Tissue.replace: unknown or fixed field {field!r}; allowed: alpha_beta_Gy, "
                    "repair_half_time_h, alpha_per_Gy, alpha_sd_per_Gy, clonogen_density_per_cm3"
                )
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            low = 0.0 if field == "alpha_sd_per_Gy" else None
            if not ok or (v < 0 if low is not None else v <= 0):
                allowed = ">= 0" if low is not None else "> 0"
                raise InputError(f"{self.name}.{field} = {v!r}; allowed: a finite number {allowed}")
        sources = {**self.sources, **{f: ("user", "set by the caller") for f in changes}}
        return dataclasses.replace(
            self, **{k: float(v) for k, v in changes.items()}, sources=sources
        )


@functools.cache
def _library() -> dict[str, Tissue]:
    text = resources.files("twinjax").joinpath("data", "tissues.yaml").read_text()
    lib = validate(_Library, yaml.safe_load(text), "twinjax/data/tissues.yaml")
    out = {}
    for name, spec in lib.tissues.items():
        values = {
            f: getattr(spec, f)
            for f in (
                "alpha_per_Gy",
                "alpha_beta_Gy",
                "repair_half_time_h",
                "alpha_sd_per_Gy",
                "clonogen_density_per_cm3",
            )
            if getattr(spec, f) is not None
        }
        sources = {f: (v.basis, v.source) for f, v in values.items()}
        lkb = None
        if spec.lkb is not None:
            lkb = LKB(spec.lkb.td50_Gy, spec.lkb.m, spec.lkb.n, spec.lkb.endpoint, spec.lkb.source)
            sources["lkb"] = ("published", spec.lkb.source)
        for lim in spec.bed_limits_Gy:
            sources[f"bed_limit {lim.value:g} Gy"] = ("published", lim.source)
        out[name] = Tissue(
            name=name,
            title=spec.title,
            **{f: v.value for f, v in values.items()},
            lkb=lkb,
            bed_limits_Gy=tuple((lim.value, lim.condition) for lim in spec.bed_limits_Gy),
            sources=sources,
        )
    return out


def known_tissues() -> tuple[str, ...]:
    """Names of the tissues in the library."""
    return tuple(sorted(_library()))


def tissue(name: str) -> Tissue:
    """The library's [`Tissue`][] `name` (e.g. ``"kidney"``, ``"salivary_glands"``,
    ``"red_marrow"``, ``"liver"``, ``"prostate_cancer"``, ``"net"``)."""
    lib = _library()
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in lib:
        close = difflib.get_close_matches(key, lib, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"tissue {name!r} is not in the library{hint} known: {known_tissues()}")
    return lib[key]

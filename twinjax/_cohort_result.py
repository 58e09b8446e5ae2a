"""The outcomes of an in-silico trial (private, re-exported by [`twinjax.cohort`][]):
[`TrialResult`][], its summaries and its netCDF files."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from ._errors import InputError
from ._files import verify_dataset, write_netcdf
from .forecast import _band

_OPS = {"<=": np.less_equal, "<": np.less, ">=": np.greater_equal, ">": np.greater}


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """Outcomes of an in-silico trial: ``values[region][quantity]`` arrays ``(N, K)``, or ``(N,
    K, S)`` for a cohort with posterior draws, scenarios in the order of `scenarios`.
    Quantities: ``tia_MBqh``, ``dose_Gy`` (physical), ``weighted_dose_Gy`` (RBE-weighted),
    ``g``, ``bed_Gy``, ``eqd2_Gy``; ``ntcp`` (organs whose tissue has LKB parameters);
    ``surviving_fraction`` and ``tcp`` (tumours with alpha and a clonogen density). `masses_kg`
    region -> ``(N,)``; `limits` region -> the tissue library's BED limits ``((Gy,
    condition), ...)``."""

    scenarios: tuple[str, ...]
    values: dict[str, dict[str, np.ndarray]] = dataclasses.field(repr=False)
    masses_kg: dict[str, np.ndarray] = dataclasses.field(repr=False)
    nuclides: dict[str, str]
    limits: dict[str, tuple] = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def n_patients(self) -> int:
        return int(next(iter(self.masses_kg.values())).shape[0])

    @property
    def n_draws(self) -> int | None:
        v = next(iter(next(iter(self.values.values())).values()))
        return int(v.shape[2]) if v.ndim == 3 else None

    def get(self, scenario: str, region: str, quantity: str) -> np.ndarray:
        """Values of one scenario: ``(N,)`` or ``(N, S)``."""
        if scenario not in self.scenarios:
            raise InputError(f"scenario = {scenario!r}; allowed: {list(self.scenarios)}")
        if region not in self.values or quantity not in self.values[region]:
            known = {r: sorted(q) for r, q in self.values.items()}
            raise InputError(f"region {region!r}, quantity {quantity!r}; allowed: {known}")
        return self.values[region][quantity][:, self.scenarios.index(scenario)]

    def fraction(self, constraints, level: float = 0.9) -> dict[str, dict[str, float]]:
        """Fraction of patients meeting every constraint, per scenario. `constraints`: one or
        several ``(region, quantity, op, threshold)`` with op ``"<="``, ``"<"``, ``">="`` or
        ``">"``, e.g. ``("kidneys", "bed_Gy", "<=", 40.0)``. Returns ``{scenario: {"fraction"}}``
        and, for a cohort with posterior draws, the ``"median"``, ``"lower"`` and ``"upper"``
        (central `level` interval) of the fraction over the draws."""
        if isinstance(constraints, tuple) and constraints and isinstance(constraints[0], str):
            constraints = [constraints]
        constraints = list(constraints)
        for c in constraints:
            if not (isinstance(c, tuple | list) and len(c) == 4 and c[2] in _OPS
                    and isinstance(c[3], int | float) and math.isfinite(c[3])):  # fmt: skip
                raise InputError(
                    f"constraint {c!r}; allowed: (region, quantity, op, threshold) with op in "
                    f"{list(_OPS)} and a finite threshold"
                )
        if not constraints:
            raise InputError("constraints is empty; allowed: one or more (region, quantity, op, x)")
        lo, hi = _band(level)
        out = {}
        for s in self.scenarios:
            ok = np.ones_like(self.get(s, constraints[0][0], constraints[0][1]), bool)
            for r, q, op, x in constraints:
                ok &= _OPS[op](self.get(s, r, q), x)
            row = {"fraction": float(ok.mean())}
            if ok.ndim == 2:  # per draw: the fraction over patients, then its interval
                a, m, b = np.quantile(ok.mean(axis=0), [lo, 0.5, hi])
                row.update(lower=float(a), median=float(m), upper=float(b))
            out[s] = row
        return out

    def summary(self, level: float = 0.9) -> dict:
        """Per scenario and region: every quantity's ``mean``, ``median`` and central `level`
        interval (``lower``, ``upper``) over patients (and draws); for regions whose tissue has
        BED limits, ``bed_limits``: the fraction of patients within each (see `fraction`)."""
        lo, hi = _band(level)
        out: dict = {}
        for s in self.scenarios:
            out[s] = {}
            for r, qs in self.values.items():
                row: dict = {}
                for q in qs:
                    v = self.get(s, r, q)
                    a, m, b = np.quantile(v, [lo, 0.5, hi])
                    row[q] = {"mean": float(v.mean()), "median": float(m), "lower": float(a),
                              "upper": float(b)}  # fmt: skip
                if self.limits.get(r):
                    row["bed_limits"] = [
                        {"limit_Gy": lim, "condition": cond,
                         **self.fraction((r, "bed_Gy", "<=", lim), level)[s]}
                        for lim, cond in self.limits[r]
                    ]  # fmt: skip
                out[s][r] = row
        return out

    def to_dict(self, level: float = 0.9, *, arrays: bool = False) -> dict:
        """JSON-ready: scenarios, sizes, nuclides, `summary`, provenance (and, with `arrays`,
        every value as nested lists)."""
        d = {
            "scenarios": list(self.scenarios),
            "regions": list(self.values),
            "n_patients": self.n_patients,
            "n_draws": self.n_draws,
            "nuclides": dict(self.nuclides),
            "summary": self.summary(level),
            "provenance": self.provenance,
        }
        if arrays:
            d["values"] = {
                r: {q: v.tolist() for q, v in qs.items()} for r, qs in self.values.items()
            }
            d["masses_kg"] = {r: v.tolist() for r, v in self.masses_kg.items()}
        return d

    def to_netcdf(self, path) -> None:
        """Write every value as netCDF (atomically: temp file + rename): one variable per
        quantity with dims ``(region, patient, scenario[, draw])`` (NaN where a quantity does
        not apply to a region), ``mass_kg`` ``(region, patient)``; provenance, nuclides and
        limits as JSON attributes. Read back with [`TrialResult.from_netcdf`][]."""
        import xarray as xr

        regions = list(self.values)
        dims = ("region", "patient", "scenario") + (("draw",) if self.n_draws else ())
        shape = next(iter(self.values[regions[0]].values())).shape
        data = {}
        for q in sorted({q for qs in self.values.values() for q in qs}):
            arr = np.stack([self.values[r].get(q, np.full(shape, np.nan)) for r in regions])
            data[q] = (dims, arr)
        data["mass_kg"] = (("region", "patient"), np.stack([self.masses_kg[r] for r in regions]))
        attrs = {k: json.dumps(v) for k, v in (("provenance", self.provenance),
                 ("nuclides", self.nuclides), ("limits", self.limits))}  # fmt: skip
        ds = xr.Dataset(data, coords={"region": regions, "scenario": list(self.scenarios)},
                        attrs=attrs)  # fmt: skip
        # Atomic, with the SHA-256 of the data in the file (verified by `from_netcdf`).
        write_netcdf(path, ds)

    @classmethod
    def from_netcdf(cls, path) -> TrialResult:
        """Read a file written by [`TrialResult.to_netcdf`][]."""
        import xarray as xr

        with xr.open_dataset(path) as ds:
            ds.load()
            verify_dataset(ds, path, required=False)  # older files carry no checksum
            regions = [str(r) for r in ds["region"].values]
            values: dict = {r: {} for r in regions}
            for q in ds.data_vars:
                if q == "mass_kg":
                    continue
                arr = np.asarray(ds[q].values)
                for i, r in enumerate(regions):
                    if not np.all(np.isnan(arr[i])):
                        values[r][str(q)] = arr[i]
            masses = {r: np.asarray(ds["mass_kg"].values[i]) for i, r in enumerate(regions)}
            limits = {r: tuple(tuple(x) for x in v)
                      for r, v in json.loads(ds.attrs["limits"]).items()}  # fmt: skip
            return cls(
                scenarios=tuple(str(s) for s in ds["scenario"].values),
                values=values,
                masses_kg=masses,
                nuclides=json.loads(ds.attrs["nuclides"]),
                limits=limits,
                provenance=json.loads(ds.attrs["provenance"]),
            )

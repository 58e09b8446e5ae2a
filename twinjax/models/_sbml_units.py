"""SBML units (private, for [`twinjax.models.sbml`][], whose docs give the rules): the factors that
convert an SBML model's units to twinjax units (h, nmol, L, kg), and the unit names of
canonical dimensions."""

from __future__ import annotations

from collections.abc import Mapping

from .._errors import InputError

_AVOGADRO = 6.02214076e23


#: User overrides of the model's default units (`units=`): name -> (unit kind, factor to SI).
_OVERRIDES = {
    "time": {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0},
    "substance": {"mol": 1.0, "mmol": 1e-3, "umol": 1e-6, "nmol": 1e-9, "pmol": 1e-12},
    "volume": {"L": 1e-3, "mL": 1e-6, "uL": 1e-9},
}
_DIMS = {"time": (0, 0, 1, 0), "substance": (1, 0, 0, 0), "volume": (0, 3, 0, 0)}
#: twinjax unit names of canonical dimensions (mole, metre, second, kilogram exponents).
_LABELS = {
    (0, 0, 0, 0): "-",
    (0, 0, -1, 0): "1/h",
    (0, 0, 1, 0): "h",
    (0, 3, 0, 0): "L",
    (0, 3, -1, 0): "L/h",
    (1, 0, 0, 0): "nmol",
    (1, -3, 0, 0): "nmol/L",
    (1, 0, -1, 0): "nmol/h",
    (-1, 3, -1, 0): "L/(nmol h)",
    (0, 0, 0, 1): "kg",
    (0, 2, 0, 0): "m2",
}
#: Canonical dimensions of the unit names templates use (for the units written to SBML).
_UNIT_DIMS = {
    **dict.fromkeys(["1/h", "1/min", "1/s", "1/d"], (0, 0, -1, 0)),
    **dict.fromkeys(["h", "min", "s", "d"], (0, 0, 1, 0)),
    **dict.fromkeys(["L", "mL"], (0, 3, 0, 0)),
    **dict.fromkeys(["L/h", "L/min", "mL/min", "mL/h"], (0, 3, -1, 0)),
    **dict.fromkeys(["nmol", "pmol"], (1, 0, 0, 0)),
    **dict.fromkeys(["nmol/L", "nM", "pmol/L", "pM", "nmol/mL"], (1, -3, 0, 0)),
    **dict.fromkeys(["nmol/h", "nmol/min"], (1, 0, -1, 0)),
    **dict.fromkeys(["L/(nmol h)", "L/(nmol min)", "1/(nM h)", "1/(nM min)"], (-1, 3, -1, 0)),
    **dict.fromkeys(["kg", "g"], (0, 0, 0, 1)),
    "m2": (0, 2, 0, 0),
    "-": (0, 0, 0, 0),
}


def _kinds(lib) -> dict[int, tuple[float, tuple[int, int, int, int]]]:
    """SI factor and (mole, metre, second, kilogram) exponents of the convertible unit kinds."""
    return {
        lib.UNIT_KIND_MOLE: (1.0, (1, 0, 0, 0)),
        lib.UNIT_KIND_ITEM: (1.0 / _AVOGADRO, (1, 0, 0, 0)),
        lib.UNIT_KIND_LITRE: (1e-3, (0, 3, 0, 0)),
        lib.UNIT_KIND_LITER: (1e-3, (0, 3, 0, 0)),
        lib.UNIT_KIND_METRE: (1.0, (0, 1, 0, 0)),
        lib.UNIT_KIND_METER: (1.0, (0, 1, 0, 0)),
        lib.UNIT_KIND_SECOND: (1.0, (0, 0, 1, 0)),
        lib.UNIT_KIND_GRAM: (1e-3, (0, 0, 0, 1)),
        lib.UNIT_KIND_KILOGRAM: (1.0, (0, 0, 0, 1)),
        lib.UNIT_KIND_DIMENSIONLESS: (1.0, (0, 0, 0, 0)),
    }


def _canonical(si_factor: float, dims: tuple[int, ...]) -> float:
    """Factor from SI to twinjax units: 1e9 nmol per mol, 1e3 L per m^3, 1/3600 h per s."""
    m, length, s, _ = dims
    f = si_factor * 1e9**m * (1.0 / 3600.0) ** s
    f = f * 1e3 ** (length // 3) if length % 3 == 0 else f
    # Products of decimal prefixes pick up rounding (1e-9 * 1e9 * 1e3 = 1000.0000000000001);
    # 15 significant digits is below any factor's meaning and makes exact factors exact.
    return float(f"{f:.15g}")


class _Units:
    """Factors (to twinjax units) of the unit ids of one SBML model."""

    def __init__(self, lib, model, level: int, overrides: Mapping[str, str]):
        self.lib, self.model, self.level = lib, model, level
        self.kinds = _kinds(lib)
        self.defaults: dict[str, tuple[float, tuple]] = {}
        for what in ("substance", "time", "volume"):
            if what in overrides:
                table = _OVERRIDES[what]
                u = overrides[what]
                if u not in table:
                    raise InputError(f"units[{what!r}] = {u!r}; allowed: {', '.join(table)}")
                self.defaults[what] = (_canonical(table[u], _DIMS[what]), _DIMS[what])
                continue
            if level == 3:
                attr = {
                    "substance": model.getExtentUnits() or model.getSubstanceUnits(),
                    "time": model.getTimeUnits(),
                    "volume": model.getVolumeUnits(),
                }[what]
                # Level 3 has no default units: a model without them is read in twinjax units.
                self.defaults[what] = self.factor(attr, f"model {what}Units") or (1.0, _DIMS[what])
            else:
                self.defaults[what] = self.factor(what, f"model {what} units")

    def factor(self, units: str, where: str) -> tuple[float, tuple] | None:
        """(factor to twinjax units, dims) of unit id `units`; None if `units` is empty."""
        if not units:
            return None
        ud = self.model.getUnitDefinition(units)
        if ud is not None:
            return self.definition(ud, f"{where}: unit {units!r}")
        if self.level == 2 and units in ("substance", "time", "volume"):
            base = {"substance": "mole", "time": "second", "volume": "litre"}[units]
            return self.factor(base, where)
        kind = self.lib.UnitKind_forName(units)
        if kind not in self.kinds:
            raise InputError(
                f"{where}: unit {units!r} cannot be converted to twinjax units (h, nmol, L, kg); "
                "allowed: units made of second, mole, item, litre, metre, gram, kilogram and "
                "dimensionless"
            )
        si, dims = self.kinds[kind]
        return _canonical(si, dims), dims

    def definition(self, ud, where: str) -> tuple[float, tuple]:
        si, dims = 1.0, [0, 0, 0, 0]
        for i in range(ud.getNumUnits()):
            u = ud.getUnit(i)
            kind = u.getKind()
            if kind not in self.kinds:
                raise InputError(
                    f"{where} contains {self.lib.UnitKind_toString(kind)!r}, which cannot be "
                    "converted to twinjax units (h, nmol, L, kg); allowed: second, mole, item, "
                    "litre, metre, gram, kilogram, dimensionless"
                )
            e = u.getExponentAsDouble()
            if e != int(e):
                raise InputError(f"{where} has exponent {e}; allowed: integer exponents")
            kf, kd = self.kinds[kind]
            si *= (u.getMultiplier() * 10.0 ** u.getScale() * kf) ** e
            dims = [d + int(e) * k for d, k in zip(dims, kd, strict=True)]
        return _canonical(si, tuple(dims)), tuple(dims)

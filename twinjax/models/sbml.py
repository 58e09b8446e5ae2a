"""SBML import and export: published models as twinjax [`Template`][]s, and back.

SBML is the exchange format of SimBiology, PK-Sim/MoBi, COPASI and most published PBPK models.
[`read_sbml`][] turns an SBML model (Level 2 Version 4, Level 3 Version 1 or 2, core) into a
compartmental [`Template`][]: the structure twinjax's YAML templates produce, so the model simulates
through [`twinjax.models.simulate`][], samples virtual patients and is calibrated like any other
template. [`write_sbml`][] writes a twinjax model or template as SBML Level 3 Version 2.

**What an SBML model becomes.** twinjax moves one ligand between pools; its labelled (hot) and
unlabelled (cold) molecules share the kinetics and the label decays physically where the molecule
is. So:

- every SBML species marked `radioactive` (ids or names, shell patterns such as ``"L_hot_*"``)
  is a twinjax compartment (a pool of the ligand); its SBML compartment gives its volume (L);
- each reaction moves ligand from its one reactant to its one product (a product-less reaction
  moves it into an excreta pool ``eliminated``; a boundary species that only receives ligand is an
  excreta pool) and its kinetic law must be one of the forms the engine integrates:
  first-order mass action ``k * S`` (also reversible, ``kf * S - kr * P``, and sums of such terms)
  -> [`Transfer`][]; Michaelis-Menten ``Vmax * S / (Km + S)`` -> [`SaturableTransfer`][];
  binding to finite sites ``k_on * S * (Rtot - B)`` with ``B`` the product -> [`Binding`][];
- global and local parameters and compartment sizes are parameters (local ones renamed
  ``<reaction>_<parameter>``), assignment rules and initial assignments of parameters and
  compartments are derived parameters, function definitions are inlined;
- physical decay is not read from the file: the engine adds it to every pool with the nuclide of
  the [`Schedule`][], as for every twinjax model. A decay reaction written in the SBML must be
  listed in `drop_reactions`, or it would count twice.

**Units.** Every number is converted to twinjax units (h, nmol, L, kg) where it enters, with the
factor of its declared SBML unit (its SI factor times 1e9 per mole, 1e3 per m^3, 1/3600 per
second; ``item`` is 1/N_A mol, lengths and areas stay in metre powers). Parameter values are
stored in twinjax units and the kinetic laws are rewritten so that they compute the same numbers
as the file: each law is multiplied by the factor of its unit as libsbml derives it from the
units of its parts (amount per time, e.g. nmol/min -> x60), or, where a part has no declared unit,
by that of the model's extent and time units (SBML Level 2 defaults: mole and second; Level 3
without units: twinjax units; both overridable with `units`). A unit that is not a product of
second, mole, item, litre, metre, gram and dimensionless is refused, naming the unit.

**Refused, never dropped.** Events, algebraic and rate rules, constraints, delays, ``piecewise``,
time-dependent laws, fast reactions, variable compartments, stoichiometries other than 1,
non-zero initial ligand (twinjax doses through the schedule), SBML Level 3 packages (except
layout and render, which only draw the model), and species that
take part in reactions without being marked radioactive raise [`InputError`][] naming the element
id and what is supported. Malformed files raise it with libsbml's line and message.

Needs python-libsbml (``pip install "twinjax[sbml]"``), imported only when these functions run.
"""

from __future__ import annotations

import fnmatch
import json
import keyword
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._config import TemplateSpec, validate
from .._errors import InputError
from .._files import atomic_write
from ..nuclides import nuclide as _lookup
from ._expr import Expr, expr
from .compartmental import CompartmentalModel
from .library import Template

__all__ = ["read_sbml", "write_sbml"]

_NS = "https://twinjax.org/sbml/1"  # namespace of the twinjax metadata annotation
_AVOGADRO = 6.02214076e23
_SUPPORTED_VERSIONS = ((2, 4), (3, 1), (3, 2))
_LAW_FORMS = (
    "allowed: first-order mass action (k * S, kf * S - kr * P), Michaelis-Menten "
    "(Vmax * S / (Km + S)) and binding to finite sites (k_on * S * (Rtot - B)), with S the "
    "reactant and P, B the product"
)
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


def _libsbml():
    try:
        import libsbml
    except ImportError as err:
        raise ImportError(
            'SBML import/export needs python-libsbml: pip install "twinjax[sbml]"'
        ) from err
    return libsbml


# ================================================================ expression trees
# Internal trees are `Expr` nodes plus ("sp", species) leaves for ligand amounts (nmol).
def _num(v: float) -> tuple:
    v = float(v)
    if not math.isfinite(v):
        raise InputError(f"number {v!r} in SBML math is not finite; allowed: finite numbers")
    # A negative literal is written as a negation, so that str(Expr) parses back to the same tree.
    return ("neg", ("num", -v)) if v < 0 else ("num", v)


_ONE = ("num", 1.0)


def _mul(a: tuple, b: tuple) -> tuple:
    return a if b == _ONE else b if a == _ONE else ("mul", a, b)


def _div(a: tuple, b: tuple) -> tuple:
    return a if b == _ONE else ("div", a, b)


def _species_in(n: tuple) -> set[str]:
    if n[0] == "sp":
        return {n[1]}
    if n[0] in ("num", "name"):
        return set()
    if n[0] == "call":
        return _species_in(n[2])
    out: set[str] = set()
    for c in n[1:]:
        out |= _species_in(c)
    return out


def _flatten(n: tuple) -> tuple[int, list, list]:
    """``n = sign * prod(num) / prod(den)`` through products, quotients and negations."""
    if n[0] == "neg":
        s, a, b = _flatten(n[1])
        return -s, a, b
    if n[0] in ("mul", "div"):
        s1, n1, d1 = _flatten(n[1])
        s2, n2, d2 = _flatten(n[2])
        return (s1 * s2, n1 + n2, d1 + d2) if n[0] == "mul" else (s1 * s2, n1 + d2, d1 + n2)
    return 1, [n], []


def _product(factors: list) -> tuple:
    out = _ONE
    for f in factors:
        out = _mul(out, f)
    return out


def _linear(n: tuple, s: str) -> tuple | None:
    """Coefficient ``c`` (free of species) with ``n == c * x_s``, or None."""
    sign, nums, dens = _flatten(n)
    hits = [i for i, f in enumerate(nums) if f == ("sp", s)]
    rest = [f for i, f in enumerate(nums) if i != (hits[0] if hits else -1)]
    if len(hits) != 1 or any(_species_in(f) for f in rest + dens):
        return None
    c = _div(_product(rest), _product(dens))
    return c if sign > 0 else ("neg", c)


def _terms(n: tuple) -> list[tuple[int, tuple]]:
    """Signed terms of `n`, distributing products over the sums that contain species."""
    op = n[0]
    if op == "add":
        return _terms(n[1]) + _terms(n[2])
    if op == "sub":
        return _terms(n[1]) + [(-s, t) for s, t in _terms(n[2])]
    if op == "neg":
        return [(-s, t) for s, t in _terms(n[1])]
    if op == "mul" and _species_in(n):
        return [(s1 * s2, ("mul", t1, t2)) for s1, t1 in _terms(n[1]) for s2, t2 in _terms(n[2])]
    if op == "div" and not _species_in(n[2]):
        return [(s, ("div", t, n[2])) for s, t in _terms(n[1])]
    return [(1, n)]


def _py(name: str) -> str:
    """SBML ids are identifiers; Python keywords get a trailing underscore (expression names)."""
    return name + "_" if keyword.iskeyword(name) else name


# ================================================================ units
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


# ================================================================ reading
def _document(lib, source: str | Path):
    """Read an SBML document from a path or an XML string; refuse malformed files."""
    text = source if isinstance(source, str) and source.lstrip().startswith("<") else None
    if text is not None:
        where = "SBML string"
        doc = lib.readSBMLFromString(text)
    else:
        path = Path(source)
        where = f"SBML file {str(path)!r}"
        if not path.is_file():
            raise InputError(f"{where} does not exist; allowed: a path to an SBML file or XML text")
        doc = lib.readSBMLFromFile(str(path))
    errors = [
        doc.getError(i)
        for i in range(doc.getNumErrors())
        if doc.getError(i).getSeverity() >= lib.LIBSBML_SEV_ERROR
    ]
    if errors:
        e = errors[0]
        raise InputError(
            f"{where} is not valid SBML: line {e.getLine()}: {e.getMessage().strip()} "
            f"({len(errors)} error(s))"
        )
    if (doc.getLevel(), doc.getVersion()) not in _SUPPORTED_VERSIONS:
        raise InputError(
            f"{where}: SBML Level {doc.getLevel()} Version {doc.getVersion()} is not supported; "
            "allowed: Level 2 Version 4, Level 3 Version 1 or 2 (core)"
        )
    # SBML Level 3 packages the file declares (Level 2 has none). Layout and render only draw the
    # model; l3v2extendedmath is declared by every L3V2 document and its functions (max, rem,
    # ...) are refused by the math converter, which names them.
    ns = doc.getNamespaces()
    uris = [ns.getURI(i) for i in range(ns.getLength())] if ns is not None else []
    packages = [
        u.split("/")[-2] if u.rstrip("/").endswith(("version1", "version2")) else u
        for u in uris
        if u.startswith("http://www.sbml.org/sbml/level3/") and not u.endswith("/core")
    ]
    packages = [p for p in packages if p not in ("layout", "render", "l3v2extendedmath")]
    packages += [doc.getUnknownPackagePrefix(i) for i in range(doc.getNumUnknownPackages())]
    if packages:
        raise InputError(
            f"{where}: SBML packages {packages} are not supported; allowed: SBML core only"
        )
    if doc.getModel() is None:
        raise InputError(f"{where} contains no <model>")
    return doc, where


def _metadata(model) -> dict:
    """The twinjax annotation written by `write_sbml` (empty for other files)."""
    ann = model.getAnnotation()
    if ann is None:
        return {}
    for i in range(ann.getNumChildren()):
        child = ann.getChild(i)
        if child.getURI() == _NS and child.getName() == "metadata":
            return json.loads(
                "".join(child.getChild(j).getCharacters() for j in range(child.getNumChildren()))
            )
    return {}


def _refuse_unsupported(lib, model) -> None:
    def ids(items) -> list[str]:
        return [x.getId() or x.getMetaId() or f"#{i}" for i, x in enumerate(items)]

    if model.getNumEvents():
        raise InputError(
            f"events {ids(model.getListOfEvents())} are not supported (twinjax administers "
            "through a Schedule); allowed: models without events"
        )
    if model.getNumConstraints():
        raise InputError(f"model {model.getId()!r}: constraints are not supported; remove them")
    if model.getLevel() == 3 and model.isSetConversionFactor():
        raise InputError(
            f"model conversionFactor {model.getConversionFactor()!r} is not supported; "
            "allowed: species in the reaction extent units"
        )
    for r in model.getListOfRules():
        var = r.getVariable() if not r.isAlgebraic() else "(algebraic)"
        if r.isAlgebraic():
            raise InputError(
                "algebraic rules are not supported; allowed: assignment rules of parameters "
                "and compartments"
            )
        if r.isRate():
            raise InputError(
                f"rate rule of {var!r} is not supported (the engine integrates ligand pools "
                "only); allowed: assignment rules of parameters and compartments"
            )
    for c in model.getListOfCompartments():
        if not c.getConstant():
            raise InputError(
                f"compartment {c.getId()!r} has a variable size; allowed: constant compartments"
            )
        if c.isSetSpatialDimensions() and c.getSpatialDimensionsAsDouble() != 3:
            raise InputError(
                f"compartment {c.getId()!r} has spatialDimensions = "
                f"{c.getSpatialDimensionsAsDouble()}; allowed: 3 (volumes)"
            )
    for r in model.getListOfReactions():
        if r.getFast():
            raise InputError(f"reaction {r.getId()!r} is fast; allowed: fast = false")


def read_sbml(
    source: str | Path,
    *,
    radioactive: Sequence[str] | Mapping[str, str] | None = None,
    nuclide: str | None = None,
    dose: str | None = None,
    excreta: Sequence[str] = (),
    drop_reactions: Sequence[str] = (),
    cv: Mapping[str, float] | None = None,
    rois: Mapping[str, Sequence[str]] | None = None,
    units: Mapping[str, str] | None = None,
    activity_MBq: float | None = None,
    ligand_nmol: float | None = None,
    name: str | None = None,
) -> Template:
    """Import an SBML model as a compartmental [`Template`][] (see the module docs).

    **Arguments:**
    - `source`: path of an SBML file, or the SBML XML text itself.
    - `radioactive`: the species that carry the labelled ligand (ids or names; shell patterns
      such as ``"L_hot_*"``), or a mapping pattern -> nuclide (one nuclide in all: the engine
      follows one label). Read from the twinjax annotation of files written by [`write_sbml`][].
    - `nuclide`: the label's nuclide (e.g. ``"Lu-177"``) when `radioactive` is a list.
    - `dose`: the species that administrations enter (e.g. the venous plasma).
    - `excreta`: patterns of species outside the body (urine, faeces).
    - `drop_reactions`: patterns of reaction ids left out deliberately, e.g. an explicit decay
      reaction that the engine's physical decay replaces; listed in the template's notes.
    - `cv`: between-patient lognormal CVs (-) of parameters (the template's priors).
    - `rois`: imaging region -> groups or species (default: one group per SBML compartment,
      holding the species in it and in the compartments inside it, and ``whole_body``).
    - `units`: defaults for elements without declared units: ``{"time": "s"|"min"|"h"|"d",
      "substance": "mol"|"mmol"|"umol"|"nmol"|"pmol", "volume": "L"|"mL"|"uL"}``.
    - `activity_MBq`, `ligand_nmol`: the default administration (MBq, nmol), optional.
    - `name`: template name (default: the model id).

    **Returns:** a [`Template`][] whose `model` is a [`CompartmentalModel`][] with one
    compartment per radioactive species, and whose `params` are in twinjax units.
    """
    lib = _libsbml()
    doc, where = _document(lib, source)
    model = doc.getModel()
    meta = _metadata(model)
    _refuse_unsupported(lib, model)
    reader = _Reader(lib, model, where, meta, units or {})
    return reader.template(
        radioactive=radioactive if radioactive is not None else meta.get("radioactive"),
        nuclide=nuclide or meta.get("nuclide"),
        dose=dose,
        excreta=excreta,
        drop_reactions=drop_reactions,
        cv=cv,
        rois=rois,
        activity_MBq=activity_MBq,
        ligand_nmol=ligand_nmol,
        name=name,
    )


class _Reader:
    """One SBML model being converted; holds the symbol table and the unit factors."""

    def __init__(self, lib, model, where: str, meta: dict, overrides: Mapping[str, str]):
        self.lib, self.model, self.where, self.meta = lib, model, where, meta
        unknown = set(overrides) - set(_OVERRIDES)
        if unknown:
            raise InputError(f"units: keys {sorted(unknown)}; allowed: {', '.join(_OVERRIDES)}")
        self.units = _Units(lib, model, model.getLevel(), overrides)
        self.functions = {f.getId(): f for f in model.getListOfFunctionDefinitions()}
        self.ligand: dict[str, str] = {}  # species id -> twinjax compartment name
        self.used: set[str] = set()  # parameter names the model's expressions need
        self.params: dict[str, tuple[float, tuple | None, str]] = {}  # value, dims, source
        self.derived: dict[str, tuple] = {}  # name -> tree (canonical units)
        self.symbols: dict[str, tuple] = {}  # SBML id -> tree in the file's units
        self.compartments: set[str] = set()  # parameter names of compartment sizes

    # ------------------------------------------------------------ math
    def math(self, ast, where: str, env: Mapping[str, tuple] | None = None, depth: int = 0):
        lib, env = self.lib, env or {}
        t = ast.getType()
        kids = [ast.getChild(i) for i in range(ast.getNumChildren())]

        def sub(i: int) -> tuple:
            return self.math(kids[i], where, env, depth)

        if t == lib.AST_INTEGER:
            return _num(ast.getInteger())
        if t in (lib.AST_REAL, lib.AST_REAL_E, lib.AST_RATIONAL):
            return _num(ast.getReal())
        if t == lib.AST_CONSTANT_PI:
            return _num(math.pi)
        if t == lib.AST_CONSTANT_E:
            return _num(math.e)
        if t == lib.AST_NAME_AVOGADRO:
            return _num(_AVOGADRO)
        if t == lib.AST_NAME:
            n = ast.getName()
            return env[n] if n in env else self.symbol(n, where)
        if t == lib.AST_PLUS:
            if not kids:
                return ("num", 0.0)
            out = sub(0)
            for i in range(1, len(kids)):
                out = ("add", out, sub(i))
            return out
        if t == lib.AST_MINUS:
            return ("neg", sub(0)) if len(kids) == 1 else ("sub", sub(0), sub(1))
        if t == lib.AST_TIMES:
            out = _ONE
            for i in range(len(kids)):
                out = ("mul", out, sub(i)) if i else sub(0)
            return out
        if t == lib.AST_DIVIDE:
            return ("div", sub(0), sub(1))
        if t in (lib.AST_POWER, lib.AST_FUNCTION_POWER):
            return ("pow", sub(0), sub(1))
        if t == lib.AST_FUNCTION_EXP:
            return ("call", "exp", sub(0))
        if t == lib.AST_FUNCTION_LN:
            return ("call", "log", sub(0))
        if t == lib.AST_FUNCTION_LOG:  # children: base, argument
            base = sub(0) if len(kids) == 2 else _num(10.0)
            return ("div", ("call", "log", sub(len(kids) - 1)), ("call", "log", base))
        if t == lib.AST_FUNCTION_ROOT:  # children: degree, argument
            degree = sub(0) if len(kids) == 2 else _num(2.0)
            arg = sub(len(kids) - 1)
            return (
                ("call", "sqrt", arg)
                if degree == ("num", 2.0)
                else ("pow", arg, ("div", _ONE, degree))
            )
        if t == lib.AST_FUNCTION and ast.getName() in self.functions:
            if depth > 50:
                raise InputError(f"{where}: function definitions nest deeper than 50 (recursion?)")
            lam = self.functions[ast.getName()].getMath()
            n_args = lam.getNumBvars()
            if n_args != len(kids):
                raise InputError(
                    f"{where}: function {ast.getName()!r} takes {n_args} arguments, got {len(kids)}"
                )
            inner = {lam.getChild(i).getName(): sub(i) for i in range(n_args)}
            return self.math(lam.getChild(n_args), where, inner, depth + 1)
        if t == lib.AST_NAME_TIME:
            what = "the time symbol"
        elif t == lib.AST_FUNCTION_DELAY:
            what = "delay"
        elif t == lib.AST_FUNCTION_PIECEWISE:
            what = "piecewise (twinjax expressions are smooth)"
        else:
            what = repr(lib.formulaToL3String(ast))
        raise InputError(
            f"{where}: {what} is not supported; allowed: numbers, parameters, compartments, + - "
            "* / ^, pow, exp, ln, log, root and function definitions"
        )

    def symbol(self, sid: str, where: str) -> tuple:
        if sid not in self.symbols:
            raise InputError(
                f"{where}: {sid!r} is not a parameter, compartment or species of the model"
            )
        return self.symbols[sid]

    # ------------------------------------------------------------ symbols
    def declare(self, sid, key, value, units, where, source, default=None) -> None:
        """A parameter or compartment size: stored in twinjax units under `key`, read in the
        file's units in expressions (`default`: the unit of an element without one)."""
        f = (self.units.factor(units, where) if units else None) or default
        factor = f[0] if f else 1.0
        # In expressions the file's number is (twinjax value) / factor.
        self.symbols[sid] = ("name", key) if factor == 1.0 else ("div", ("name", key), _num(factor))
        if value is not None and math.isfinite(value):
            self.params[key] = (value * factor, f[1] if f else None, source)

    def template(
        self,
        *,
        radioactive,
        nuclide,
        dose,
        excreta,
        drop_reactions,
        cv,
        rois,
        activity_MBq,
        ligand_nmol,
        name,
    ) -> Template:
        model, meta = self.model, self.meta
        species = list(model.getListOfSpecies())
        nuc = self._nuclide(radioactive, nuclide)
        patterns = list(radioactive)
        names = meta.get("names", {})
        for p in patterns:
            hits = [s.getId() for s in species if _match(p, s)]
            if not hits:
                raise InputError(
                    f"radioactive pattern {p!r} matches no species; species: "
                    f"{', '.join(s.getId() for s in species)}"
                )
            for sid in hits:
                self.ligand[sid] = names.get(sid, sid)

        # Parameters (global), compartment sizes, then the species' view of amounts.
        sources, exact = meta.get("sources", {}), meta.get("values", {})
        for p in model.getListOfParameters():
            pid = p.getId()
            value = p.getValue() if p.isSetValue() else None
            if (
                value is not None
                and pid in exact
                and math.isclose(exact[pid], value, rel_tol=1e-14)
            ):
                value = exact[pid]  # the file's value, to the last bit written by write_sbml
            self.declare(
                pid,
                _py(pid),
                value,
                p.getUnits(),
                f"parameter {pid!r}",
                sources.get(pid, f"SBML parameter {pid}"),
            )
        for c in model.getListOfCompartments():
            cid = c.getId()
            size = c.getSize() if c.isSetSize() else None
            self.compartments.add(_py(cid))
            self.declare(
                cid,
                _py(cid),
                size,
                c.getUnits(),
                f"compartment {cid!r}",
                f"SBML compartment {cid} size",
                self.units.defaults["volume"],
            )
        for s in species:
            self._species_symbol(s)
        self._assignments()

        excreta_ids = self._select(excreta, species, "excreta")
        if dose is None:
            dose = meta.get("dose")
        if dose is None:
            raise InputError("dose: missing; allowed: the id of the species administrations enter")
        dose_id = next(
            (s.getId() for s in species if dose in (s.getId(), names.get(s.getId()))), None
        )
        if dose_id not in self.ligand:
            raise InputError(
                f"dose = {dose!r} is not a radioactive species; allowed: {sorted(self.ligand)}"
            )

        processes, dropped = self._reactions(drop_reactions)
        comps = [self.ligand[s.getId()] for s in species if s.getId() in self.ligand]
        excreta_ids |= set(self._sinks)
        excreta_names = [self.ligand[s.getId()] for s in species if s.getId() in excreta_ids]
        if self._targets_used:
            comps.append(self._eliminated)
            excreta_names.append(self._eliminated)
        volumes = self._volumes(species)
        groups = self._groups(species, set(excreta_names), comps)

        # Parameters the model needs, derived ones resolved in dependency order.
        order, available, skipped = self._derived_order(), set(self.params), []
        for k in list(order):
            if set(Expr(self.derived[k]).names) <= available:
                available.add(k)
            elif k in self.used:
                missing = sorted(set(Expr(self.derived[k]).names) - available)
                raise InputError(f"assignment of {k!r} uses {missing}, which have no value")
            else:
                order.remove(k)  # unused by the model and not computable: noted below
                skipped.append(k)
        for k in list(self.used):
            if k not in self.params and k not in self.derived:
                raise InputError(
                    f"{self.where}: {k!r} is used but has no value; allowed: a value "
                    "or an initial assignment"
                )
        cvs = dict(meta.get("cv", {}))
        cvs.update(cv or {})
        unknown = [k for k in cvs if k not in self.params]
        if unknown:
            raise InputError(
                f"cv: {unknown} are not parameters of the model; allowed: "
                f"{', '.join(sorted(self.params))}"
            )
        parameters = {}
        for k, (value, dims, source) in self.params.items():
            if k in self.derived or (k in self.compartments and k not in self.used):
                continue
            label = _LABELS.get(dims, "-") if dims is not None else "-"
            if dims is None:
                source += " (no units declared: value as in the file)"
            elif dims not in _LABELS:
                source += f" (twinjax units: nmol^{dims[0]} m^{dims[1]} h^{dims[2]} kg^{dims[3]})"
            entry = {"value": value, "unit": label, "source": source}
            if k in cvs:
                entry["cv"] = float(cvs[k])
            parameters[k] = entry
        admin = meta.get("default_administration")
        if activity_MBq is not None:
            admin = {"activity_MBq": float(activity_MBq)}
            if ligand_nmol is not None:
                admin["ligand_nmol"] = float(ligand_nmol)
        model_name = name or meta.get("name") or model.getId() or "sbml_model"
        notes = meta.get("notes") or ""
        if skipped:
            notes = (notes + " " if notes else "") + f"Assignments without inputs: {skipped}."
        if dropped:
            notes = (notes + " " if notes else "") + f"Reactions left out on import: {dropped}."
        spec = {
            "schema": "twinjax.template/1",
            "name": model_name,
            "title": meta.get("title") or model.getName() or model_name,
            "kind": "compartmental",
            "nuclide": nuc,
            "references": meta.get("references")
            or {"sbml": f"{self.where}, model {model.getId()!r}"},
            "model": {
                "kind": "compartmental",
                "compartments": comps,
                "dose": self.ligand[dose_id],
                "excreta": excreta_names,
                "volumes": {c: str(Expr(v)) for c, v in volumes.items()},
                "transfers": [
                    {"from": s, "to": t, "rate": str(r)}
                    for kind, s, t, r in processes
                    if kind == "transfer"
                ],
                "saturable": [
                    {"from": s, "to": t, "vmax": str(v[0]), "km": str(v[1]), "volume": str(v[2])}
                    for kind, s, t, v in processes
                    if kind == "saturable"
                ],
                "bindings": [
                    {
                        "free": s,
                        "bound": t,
                        "k_on": str(v[0]),
                        "capacity": str(v[1]),
                        "volume": str(v[2]),
                    }
                    for kind, s, t, v in processes
                    if kind == "binding"
                ],
                "groups": groups,
            },
            "parameters": parameters,
            "derived": {k: str(Expr(self.derived[k])) for k in order},
            "rois": {k: list(v) for k, v in (rois or meta.get("rois") or {}).items()},
            "default_administration": admin,
            "notes": notes or None,
        }
        tpl = Template(spec=validate(TemplateSpec, spec, self.where), path=None)
        m = tpl.model
        missing = [n for n in m.parameter_names if n not in tpl.params]
        if missing:
            raise InputError(f"{self.where}: parameters {missing} are used but have no value")
        m.check_params(tpl.params)
        for roi, members in tpl.spec.rois.items():
            for g in members:
                try:
                    m.group(g)
                except InputError as err:
                    raise InputError(f"rois.{roi}: {err}") from None
        return tpl

    def _nuclide(self, radioactive, nuclide) -> str:
        if radioactive is None or isinstance(radioactive, str):
            raise InputError(
                f"radioactive = {radioactive!r}; allowed: a list of species ids or patterns "
                "(e.g. ['L_hot_*']) or a mapping pattern -> nuclide"
            )
        if isinstance(radioactive, Mapping):
            found = {_lookup(v).name for v in radioactive.values()}
            if nuclide is not None:
                found.add(_lookup(nuclide).name)
            if len(found) != 1:
                raise InputError(
                    f"radioactive maps species to nuclides {sorted(found)}; allowed: one nuclide "
                    "(the engine follows one label per simulation)"
                )
            return found.pop()
        if nuclide is None:
            raise InputError("nuclide: missing; allowed: a nuclide name such as 'Lu-177'")
        return _lookup(nuclide).name

    def _select(self, patterns, species, field: str) -> set[str]:
        out: set[str] = set()
        for p in patterns:
            hits = [s.getId() for s in species if _match(p, s)]
            if not hits:
                raise InputError(f"{field} pattern {p!r} matches no species")
            for sid in hits:
                if sid not in self.ligand:
                    raise InputError(
                        f"{field}: species {sid!r} is not radioactive; allowed: {sorted(self.ligand)}"
                    )
                out.add(sid)
        out |= {k for k in self.meta.get("excreta", []) if k in self.ligand}
        return out

    def _species_symbol(self, s) -> None:
        sid = s.getId()
        where = f"species {sid!r}"
        if self.model.getLevel() == 3 and s.isSetConversionFactor():
            raise InputError(f"{where}: conversionFactor is not supported")
        units = s.getSubstanceUnits()
        a = (self.units.factor(units, where) if units else None) or self.units.defaults["substance"]
        if a[1] != (1, 0, 0, 0):
            raise InputError(
                f"{where}: substance unit {units!r} is not an amount; allowed: mole, item"
            )
        comp = self.symbols[s.getCompartment()]
        if sid in self.ligand:
            init = (
                s.getInitialAmount()
                if s.isSetInitialAmount()
                else (s.getInitialConcentration() if s.isSetInitialConcentration() else 0.0)
            )
            if init != 0.0 or self.model.getInitialAssignment(sid) is not None:
                raise InputError(
                    f"{where}: initial value {init!r} (or an initial assignment); allowed: 0 "
                    "(twinjax administers the ligand through the Schedule)"
                )
            amount = ("sp", sid) if a[0] == 1.0 else ("div", ("sp", sid), _num(a[0]))
            self.symbols[sid] = amount if s.getHasOnlySubstanceUnits() else ("div", amount, comp)
            return
        # A species that is not ligand may only enter kinetic laws as a constant (a modifier).
        value = s.getInitialAmount() if s.isSetInitialAmount() else s.getInitialConcentration()
        if s.isSetInitialAmount() and not s.getHasOnlySubstanceUnits():
            size = self.model.getCompartment(s.getCompartment()).getSize()
            value = value / size
        self.symbols[sid] = ("name", _py(sid))
        self.params[_py(sid)] = (value, None, f"SBML species {sid} (constant)")

    def _assignments(self) -> None:
        """Initial assignments and assignment rules of parameters and compartments: derived."""
        items = [
            (a.getSymbol(), a.getMath(), "initial assignment")
            for a in self.model.getListOfInitialAssignments()
        ]
        items += [
            (r.getVariable(), r.getMath(), "assignment rule")
            for r in self.model.getListOfRules()
            if r.isAssignment()
        ]
        for sid, ast, kind in items:
            where = f"{kind} of {sid!r}"
            if self.model.getParameter(sid) is None and self.model.getCompartment(sid) is None:
                raise InputError(
                    f"{where}: only parameters and compartments may be assigned; "
                    f"allowed: {kind}s of parameters and compartments"
                )
            tree = self.math(ast, where)
            if _species_in(tree):
                raise InputError(f"{where} depends on species; allowed: formulas of parameters")
            target = self.symbols[sid]
            # symbols[sid] is name / factor: the twinjax value is factor * (formula in file units)
            factor = target[2] if target[0] == "div" else _ONE
            self.derived[_py(sid)] = _mul(tree, factor) if factor != _ONE else tree

    def _derived_order(self) -> list[str]:
        """Derived parameters the model needs, each after those it uses; adds their inputs to
        the used names."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(k: str, chain: tuple) -> None:
            if state.get(k) == 2:
                return
            if state.get(k) == 1:
                raise InputError(f"assignments form a cycle: {' -> '.join(chain + (k,))}")
            state[k] = 1
            for dep in Expr(self.derived[k]).names:
                if dep in self.derived:
                    visit(dep, chain + (k,))
            state[k] = 2
            order.append(k)

        for k in sorted(self.derived):
            # a compartment's size formula is its pools' volume; a parameter only if used
            if k not in self.compartments or k in self.used:
                visit(k, ())
        for k in order:
            self.used.update(Expr(self.derived[k]).names)
        return order

    # ------------------------------------------------------------ reactions
    def _reactions(self, drop_patterns):
        processes: list[tuple] = []
        dropped: list[str] = []
        self._sinks: list[str] = []
        self._targets_used: set[str] = set()
        # Ligand leaving through a product-less reaction collects in this excreta pool.
        self._eliminated = "eliminated"
        while self._eliminated in self.ligand.values():
            self._eliminated += "_"
        reactions = list(self.model.getListOfReactions())
        for p in drop_patterns:
            if not any(fnmatch.fnmatchcase(r.getId(), p) for r in reactions):
                raise InputError(f"drop_reactions pattern {p!r} matches no reaction")
        for r in reactions:
            rid = r.getId()
            if any(fnmatch.fnmatchcase(rid, p) for p in drop_patterns):
                dropped.append(rid)
                continue
            processes += self._reaction(r)
        return processes, dropped

    def _reaction(self, r) -> list[tuple]:
        rid = r.getId()
        where = f"reaction {rid!r}"

        def refs(items, role):
            out = []
            for ref in items:
                sid = ref.getSpecies()
                if self.model.getLevel() == 2 and ref.isSetStoichiometryMath():
                    raise InputError(f"{where}: stoichiometryMath is not supported")
                if (
                    ref.getStoichiometry() != 1.0
                    or (self.model.getLevel() == 3 and not ref.getConstant())
                    or (self.model.getLevel() == 3 and self.model.getInitialAssignment(ref.getId()))
                ):
                    raise InputError(
                        f"{where}: {role} {sid!r} has stoichiometry {ref.getStoichiometry()}; "
                        "allowed: constant stoichiometry 1"
                    )
                if sid not in self.ligand:
                    raise InputError(
                        f"{where}: {role} {sid!r} is not marked radioactive; twinjax moves one "
                        "ligand between pools: mark it in radioactive=, or leave the reaction "
                        "out with drop_reactions="
                    )
                out.append(sid)
            return out

        reactants = refs(r.getListOfReactants(), "reactant")
        products = refs(r.getListOfProducts(), "product")
        if len(reactants) != 1 or len(products) > 1:
            raise InputError(
                f"{where} has reactants {reactants} and products {products}; allowed: one "
                "reactant and at most one product (transport of the ligand)"
            )
        for m in r.getListOfModifiers():
            if m.getSpecies() in self.ligand:
                raise InputError(
                    f"{where}: modifier {m.getSpecies()!r} is a ligand pool; {_LAW_FORMS}"
                )
        src = reactants[0]
        spc = self.model.getSpecies(src)
        if spc.getBoundaryCondition() or spc.getConstant():
            raise InputError(
                f"{where}: reactant {src!r} is a boundary or constant species; "
                "allowed: inputs through the Schedule"
            )
        if products:
            dst = products[0]
            sp_dst = self.model.getSpecies(dst)
            if (sp_dst.getBoundaryCondition() or sp_dst.getConstant()) and dst not in self._sinks:
                self._sinks.append(dst)  # an SBML sink that receives ligand is an excreta pool
            target = self.ligand[dst]
        else:
            dst, target = None, self._eliminated
            self._targets_used.add(target)
        if not r.isSetKineticLaw() or r.getKineticLaw().getMath() is None:
            raise InputError(f"{where} has no kinetic law; {_LAW_FORMS}")
        law = r.getKineticLaw()
        # Local parameters become global ones named <reaction>_<parameter>; inside the law
        # they shadow global ids, which `env` does.
        lps = list(
            law.getListOfLocalParameters()
            if self.model.getLevel() == 3
            else law.getListOfParameters()
        )
        env = {}
        for lp in lps:
            key = _py(f"{rid}_{lp.getId()}")
            if key in self.params or key in self.symbols:
                raise InputError(
                    f"{where}: local parameter {lp.getId()!r} would be renamed "
                    f"{key!r}, which already exists"
                )
            value = lp.getValue() if lp.isSetValue() else None
            self.declare(
                key,
                key,
                value,
                lp.getUnits(),
                f"{where}: local parameter {lp.getId()!r}",
                f"SBML reaction {rid} local parameter {lp.getId()}",
            )
            env[lp.getId()] = self.symbols.pop(key)
        tree = self.math(law.getMath(), f"{where}: kinetic law", env)
        g = self._law_factor(law, where)
        if g != 1.0:
            tree = ("mul", tree, _num(g))
        return self._classify(tree, src, dst, target, where, law)

    def _law_factor(self, law, where: str) -> float:
        """Factor from the law's unit to nmol/h (see module docs)."""
        if not law.containsUndeclaredUnits():
            ud = law.getDerivedUnitDefinition()
            if ud is not None and ud.getNumUnits():
                f, dims = self.units.definition(ud, f"{where}: kinetic law unit")
                if dims != (1, 0, -1, 0):
                    raise InputError(
                        f"{where}: the kinetic law has units "
                        f"{self.lib.UnitDefinition.printUnits(ud)!r}; allowed: amount per time "
                        "(multiply concentration rates by the compartment volume)"
                    )
                return f
        sub, time = self.units.defaults["substance"], self.units.defaults["time"]
        return sub[0] / time[0]

    def _classify(self, tree, src, dst, target, where, law) -> list[tuple]:
        formula = self.lib.formulaToL3String(law.getMath())
        here = f"{where}: kinetic law {formula!r}"
        self._mark(tree)
        # Exact forms (those `write_sbml` writes), so that a round trip keeps every expression.
        if tree[0] == "mul" and tree[2] == ("sp", src) and not _species_in(tree[1]):
            return [("transfer", self.ligand[src], target, Expr(tree[1]))]
        if (
            dst is not None
            and tree[0] == "div"
            and tree[1][0] == "mul"
            and tree[1][2] == ("sp", src)
            and tree[2][0] == "add"
            and tree[2][2] == ("sp", src)
            and tree[2][1][0] == "mul"
            and not _species_in(tree[1][1])
            and not _species_in(tree[2][1])
        ):
            vmax, (km, vol) = tree[1][1], tree[2][1][1:]
            return [("saturable", self.ligand[src], target, tuple(map(Expr, (vmax, km, vol))))]
        if (
            dst is not None
            and tree[0] == "mul"
            and tree[1][0] == "div"
            and tree[1][1][0] == "mul"
            and tree[1][1][2] == ("sp", src)
            and tree[2][0] == "sub"
            and tree[2][2] == ("sp", dst)
            and not (_species_in(tree[1][1][1]) | _species_in(tree[1][2]) | _species_in(tree[2][1]))
        ):
            k_on, vol, cap = tree[1][1][1], tree[1][2], tree[2][1]
            return [("binding", self.ligand[src], target, tuple(map(Expr, (k_on, cap, vol))))]
        # General forms, by factoring the law.
        sign, nums, dens = _flatten(tree)
        sp_nums = [f for f in nums if _species_in(f)]
        sp_dens = [f for f in dens if _species_in(f)]
        rest_n = [f for f in nums if not _species_in(f)]
        rest_d = [f for f in dens if not _species_in(f)]
        volume = self._volume_of(src)
        if sign > 0 and ("sp", src) in sp_nums and dst is not None:
            others = list(sp_nums)
            others.remove(("sp", src))
            if not others and len(sp_dens) == 1 and sp_dens[0][0] == "add":
                # Michaelis-Menten: rest * x / (K + c x) = (rest / c) x / (K / c + x)
                d = sp_dens[0]
                for k_part, x_part in ((d[1], d[2]), (d[2], d[1])):
                    c = _linear(x_part, src)
                    if c is not None and not _species_in(k_part):
                        vmax = _div(_div(_product(rest_n), _product(rest_d)), c)
                        km = _div(_div(k_part, c), volume)
                        return [
                            (
                                "saturable",
                                self.ligand[src],
                                target,
                                (Expr(vmax), Expr(km), Expr(volume)),
                            )
                        ]
            if len(others) == 1 and not sp_dens and others[0][0] == "sub":
                # Binding: rest * x_free * (E - c x_bound) = rest c x_free (E / c - x_bound)
                e_part, x_part = others[0][1], others[0][2]
                c = _linear(x_part, dst)
                if c is not None and not _species_in(e_part):
                    coef = _mul(_div(_product(rest_n), _product(rest_d)), c)
                    return [
                        (
                            "binding",
                            self.ligand[src],
                            target,
                            (Expr(_mul(coef, volume)), Expr(_div(e_part, c)), Expr(volume)),
                        )
                    ]
        # Sums of first-order terms: forward from the reactant, backward from the product.
        out = []
        for s, term in _terms(tree):
            c_fwd = _linear(term, src)
            c_bwd = _linear(term, dst) if dst is not None and dst != src else None
            if s > 0 and c_fwd is not None:
                out.append(("transfer", self.ligand[src], target, Expr(c_fwd)))
            elif s < 0 and c_bwd is not None:
                out.append(("transfer", self.ligand[dst], self.ligand[src], Expr(c_bwd)))
            else:
                raise InputError(f"{here} is not supported; {_LAW_FORMS}")
        return out

    def _mark(self, tree: tuple) -> None:
        self.used.update(n for n in Expr(_strip_species(tree)).names)

    def _volume_of(self, sid: str) -> tuple:
        c = self.model.getSpecies(sid).getCompartment()
        self.used.add(_py(c))
        return ("name", _py(c))

    def _volumes(self, species) -> dict[str, tuple]:
        """Volume (L) of each ligand pool: its SBML compartment's size (formula if assigned)."""
        no_volume = set(self.meta.get("no_volume", []))
        out = {}
        for s in species:
            sid = s.getId()
            if sid not in self.ligand or sid in no_volume:
                continue
            c = _py(s.getCompartment())
            if c in self.derived:
                out[self.ligand[sid]] = self.derived[c]
                self.used.update(Expr(self.derived[c]).names)
            elif c in self.params:
                out[self.ligand[sid]] = ("name", c)
                self.used.add(c)
        return out

    def _groups(self, species, excreta: set[str], comps: list[str]) -> dict[str, list[str]]:
        if "groups" in self.meta:
            return {g: list(m) for g, m in self.meta["groups"]}
        groups: dict[str, list[str]] = {}
        for c in self.model.getListOfCompartments():
            members = []
            for s in species:
                if s.getId() not in self.ligand or self.ligand[s.getId()] in excreta:
                    continue
                chain, cur = [], self.model.getCompartment(s.getCompartment())
                while cur is not None and cur.getId() not in chain:
                    chain.append(cur.getId())
                    cur = (
                        self.model.getCompartment(cur.getOutside())
                        if (cur.isSetOutside())
                        else None
                    )
                if c.getId() in chain:
                    members.append(self.ligand[s.getId()])
            if members and c.getId() not in comps:
                groups[c.getId()] = members
        body = [c for c in comps if c not in excreta]
        if "whole_body" not in comps and "whole_body" not in groups:
            groups["whole_body"] = body
        return groups


def _strip_species(n: tuple) -> tuple:
    if n[0] == "sp":
        return _ONE
    if n[0] in ("num", "name"):
        return n
    if n[0] == "call":
        return ("call", n[1], _strip_species(n[2]))
    return (n[0], *(_strip_species(c) for c in n[1:]))


def _match(pattern: str, s) -> bool:
    return fnmatch.fnmatchcase(s.getId(), pattern) or (
        s.isSetName() and fnmatch.fnmatchcase(s.getName(), pattern)
    )


# ================================================================ writing
def write_sbml(
    model_or_template: Template | CompartmentalModel,
    path: str | Path,
    *,
    params: Mapping[str, float] | None = None,
    nuclide: str | None = None,
) -> Path:
    """Write a twinjax model or template as SBML Level 3 Version 2 (core).

    Each compartment of the model becomes a species (amount in nmol, ``hasOnlySubstanceUnits``)
    in an SBML compartment whose size is the model's volume formula (an initial assignment);
    each process becomes a reaction with its kinetic law (nmol/h): a transfer ``k * S``, a
    saturable transfer ``Vmax * S / (Km * V + S)``, a binding ``k_on * F / V * (R - B)``. Model
    units are h, nmol and L; parameters carry the units of their template entry. A template's
    derived parameters are initial assignments. The twinjax structure SBML cannot say (dose pool,
    excreta, groups, regions, nuclide, priors) travels in an annotation, so that
    [`read_sbml`][] restores the template; other SBML tools simulate the unlabelled ligand
    (they know no physical decay).

    **Arguments:**
    - `model_or_template`: a [`Template`][] (its typical parameter values are written), or a
      [`CompartmentalModel`][] with `params`.
    - `path`: the file to write (atomically).
    - `params`: parameter values in twinjax units; override a template's values.
    - `nuclide`: the label's nuclide, recorded for `read_sbml` (a template's by default).

    **Returns:** the path written.
    """
    lib = _libsbml()
    if isinstance(model_or_template, Template):
        tpl = model_or_template
        model = tpl.model
        spec = tpl.spec
        values = {k: tpl.params[k] for k in spec.parameters}
        derived = {k: expr(f) for k, f in spec.derived.items()}
        dims = {k: _UNIT_DIMS.get(p.unit) for k, p in spec.parameters.items()}
        meta = {
            "name": spec.name,
            "title": spec.title,
            "nuclide": nuclide or tpl.nuclide,
            "references": spec.references,
            "notes": spec.notes,
            "rois": spec.rois,
            "cv": tpl.cv,
            "sources": {k: p.source for k, p in spec.parameters.items()},
            "default_administration": (
                spec.default_administration.model_dump()
                if spec.default_administration is not None
                else None
            ),
        }
    elif isinstance(model_or_template, CompartmentalModel):
        model = model_or_template
        if params is None:
            raise InputError("params: missing; allowed: a mapping parameter -> value for a model")
        values, derived, dims = {}, {}, {}
        meta = {"name": model.name, "nuclide": nuclide and _lookup(nuclide).name}
    else:
        raise InputError(
            f"model_or_template is a {type(model_or_template).__name__}; allowed: a Template or "
            "a CompartmentalModel"
        )
    if params is not None:
        values.update(params)
    for k in model.parameter_names:
        if k not in values and k not in derived:
            raise InputError(f"params: {k!r} is missing; the model uses {model.parameter_names}")
    numbers = {}
    for k, v in values.items():
        try:
            numbers[k] = float(v)
        except TypeError:
            raise InputError(f"params[{k!r}] = {v!r}; allowed: a number") from None

    doc = lib.SBMLDocument(3, 2)
    sbml = doc.createModel()
    taken: set[str] = set(numbers) | set(derived)
    for k in taken:
        if not lib.SyntaxChecker.isValidSBMLSId(k):
            raise InputError(
                f"parameter name {k!r} is not a valid SBML id; allowed: letters, "
                "digits and underscores"
            )

    def fresh(base: str) -> str:
        sid = "".join(ch if ch.isalnum() and ch.isascii() else "_" for ch in base)
        sid = sid if sid and not sid[0].isdigit() else "_" + sid
        while sid in taken:
            sid += "_"
        taken.add(sid)
        return sid

    sbml.setId(fresh(model.name))
    sbml.setName(meta.get("title") or model.name)
    unit_ids = _write_units(lib, sbml, fresh)
    for attr, uid in (
        ("setTimeUnits", "hour"),
        ("setSubstanceUnits", "nmol"),
        ("setExtentUnits", "nmol"),
        ("setVolumeUnits", "litre"),
    ):
        getattr(sbml, attr)(unit_ids.get(uid, uid))

    for k, v in numbers.items():
        p = sbml.createParameter()
        p.setId(k)
        p.setValue(v)
        p.setConstant(True)
        if dims.get(k) is not None:
            p.setUnits(_unit_for(lib, sbml, dims[k], unit_ids, fresh))
    for k, e in derived.items():
        p = sbml.createParameter()
        p.setId(k)
        p.setConstant(True)
        ia = sbml.createInitialAssignment()
        ia.setSymbol(k)
        ia.setMath(_ast(lib, e.node, {}))

    # Species (one per compartment of the model) in compartments that carry their volumes.
    volumes = dict(model.volumes)
    sid_of: dict[str, str] = {}
    shared = None
    for c in model.compartments:
        sid = sid_of[c] = fresh(c)
        sp = sbml.createSpecies()
        sp.setId(sid)
        sp.setName(c)
        if c in volumes:
            comp = sbml.createCompartment()
            comp.setId(fresh(f"V_{sid}"))
            comp.setSpatialDimensions(3)
            comp.setConstant(True)
            comp.setUnits("litre")
            ia = sbml.createInitialAssignment()
            ia.setSymbol(comp.getId())
            ia.setMath(_ast(lib, volumes[c].node, {}))
            sp.setCompartment(comp.getId())
        else:
            if shared is None:  # pools without a volume: a nominal 1-L space
                shared = sbml.createCompartment()
                shared.setId(fresh("pools_without_volume"))
                shared.setSize(1.0)
                shared.setSpatialDimensions(3)
                shared.setConstant(True)
                shared.setUnits("litre")
            sp.setCompartment(shared.getId())
        sp.setInitialAmount(0.0)
        sp.setSubstanceUnits(unit_ids.get("nmol", "nmol"))
        sp.setHasOnlySubstanceUnits(True)
        sp.setBoundaryCondition(False)
        sp.setConstant(False)

    def reaction(kind: str, source: str, target: str, law: tuple) -> None:
        r = sbml.createReaction()
        r.setId(fresh(f"{kind}_{sid_of[source]}_to_{sid_of[target]}"))
        r.setReversible(False)
        for ref, s in ((r.createReactant(), source), (r.createProduct(), target)):
            ref.setSpecies(sid_of[s])
            ref.setStoichiometry(1.0)
            ref.setConstant(True)
        r.createKineticLaw().setMath(_ast(lib, law, sid_of))

    for t in model.transfers:
        reaction("transfer", t.source, t.target, ("mul", t.rate.node, ("sp", t.source)))
    for t in model.saturable:
        x = ("sp", t.source)
        law = ("div", ("mul", t.vmax.node, x), ("add", ("mul", t.km.node, t.volume.node), x))
        reaction("saturable", t.source, t.target, law)
    for b in model.bindings:
        law = (
            "mul",
            ("div", ("mul", b.k_on.node, ("sp", b.free)), b.volume.node),
            ("sub", b.capacity.node, ("sp", b.bound)),
        )
        reaction("binding", b.free, b.bound, law)

    meta.update(
        {
            "schema": "twinjax.sbml/1",
            "radioactive": [sid_of[c] for c in model.compartments],
            "names": {sid_of[c]: c for c in model.compartments},
            "dose": sid_of[model.dose_compartment],
            "excreta": [sid_of[c] for c in model.excreta],
            "groups": [[g, list(m)] for g, m in model.groups],
            "no_volume": [sid_of[c] for c in model.compartments if c not in volumes],
            # SBML writes 15 significant digits; the exact doubles make a round trip exact.
            "values": numbers,
        }
    )
    if isinstance(model_or_template, Template):
        meta.update(ligand=spec.ligand, description=spec.description)
    node = lib.XMLNode(
        lib.XMLTriple("metadata", _NS, "twinjax"), lib.XMLAttributes(), lib.XMLNamespaces()
    )
    node.getNamespaces().add(_NS, "twinjax")
    node.addChild(lib.XMLNode(json.dumps(meta, sort_keys=True)))
    sbml.appendAnnotation(node)
    text = lib.writeSBMLToString(doc)
    out = Path(path)
    atomic_write(out, text.encode("utf-8"))
    return out


def _write_units(lib, sbml, fresh) -> dict[str, str]:
    """Unit definitions of the model units: ``hour`` and ``nmol``."""
    ids = {}
    for uid, kind, scale, mult in (
        ("hour", lib.UNIT_KIND_SECOND, 0, 3600.0),
        ("nmol", lib.UNIT_KIND_MOLE, -9, 1.0),
    ):
        ud = sbml.createUnitDefinition()
        ids[uid] = fresh(uid)
        ud.setId(ids[uid])
        u = ud.createUnit()
        u.setKind(kind)
        u.setExponent(1)
        u.setScale(scale)
        u.setMultiplier(mult)
    return ids


def _unit_for(lib, sbml, dims: tuple, ids: dict[str, str], fresh) -> str:
    """Id of the unit definition of canonical `dims` (created on first use)."""
    if dims == (0, 0, 0, 0):
        return "dimensionless"
    key = str(dims)
    if key in ids:
        return ids[key]
    m, length, s, g = dims
    ud = sbml.createUnitDefinition()
    powers = [
        ("nmol", m),
        ("L", length // 3) if length % 3 == 0 else ("m", length),
        ("h", s),
        ("kg", g),
    ]
    num = [f"{n}{e if e != 1 else ''}" for n, e in powers if e > 0]
    den = [f"{n}{-e if e != -1 else ''}" for n, e in powers if e < 0]
    ids[key] = fresh("u_" + "_".join(num or ["1"]) + ("_per_" + "_".join(den) if den else ""))
    ud.setId(ids[key])
    parts = [
        (lib.UNIT_KIND_MOLE, m, -9, 1.0),
        (lib.UNIT_KIND_LITRE, length // 3, 0, 1.0)
        if length % 3 == 0
        else (lib.UNIT_KIND_METRE, length, 0, 1.0),
        (lib.UNIT_KIND_SECOND, s, 0, 3600.0),
        (lib.UNIT_KIND_KILOGRAM, g, 0, 1.0),
    ]
    for kind, e, scale, mult in parts:
        if e:
            u = ud.createUnit()
            u.setKind(kind)
            u.setExponent(e)
            u.setScale(scale)
            u.setMultiplier(mult)
    return ids[key]


def _ast(lib, n: tuple, species: Mapping[str, str]):
    """libsbml ASTNode of an expression tree (species leaves by their SBML ids)."""
    op = n[0]
    if op == "num":
        a = lib.ASTNode(lib.AST_REAL)
        a.setValue(n[1])
        return a
    if op in ("name", "sp"):
        a = lib.ASTNode(lib.AST_NAME)
        a.setName(n[1] if op == "name" else species[n[1]])
        return a
    if op == "neg":
        a = lib.ASTNode(lib.AST_MINUS)
        a.addChild(_ast(lib, n[1], species))
        return a
    if op == "call":
        if n[1] == "sqrt":
            a = lib.ASTNode(lib.AST_FUNCTION_ROOT)
            a.addChild(_ast(lib, ("num", 2.0), species))
        else:
            a = lib.ASTNode(lib.AST_FUNCTION_EXP if n[1] == "exp" else lib.AST_FUNCTION_LN)
        a.addChild(_ast(lib, n[2], species))
        return a
    kinds = {
        "add": lib.AST_PLUS,
        "sub": lib.AST_MINUS,
        "mul": lib.AST_TIMES,
        "div": lib.AST_DIVIDE,
        "pow": lib.AST_POWER,
    }
    a = lib.ASTNode(kinds[op])
    a.addChild(_ast(lib, n[1], species))
    a.addChild(_ast(lib, n[2], species))
    return a

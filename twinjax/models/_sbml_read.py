"""SBML model -> twinjax template (private, for [`twinjax.models.sbml`][], whose docs say what an
SBML model becomes): `_Reader` holds the symbol table and unit factors of one model and
converts its parameters, assignments and reactions."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping

from .._config import TemplateSpec, validate
from .._errors import InputError
from ..nuclides import nuclide as _lookup
from ._expr import Expr
from ._sbml_math import (
    _ONE,
    _div,
    _flatten,
    _linear,
    _mul,
    _num,
    _product,
    _py,
    _species_in,
    _strip_species,
    _terms,
)
from ._sbml_units import _AVOGADRO, _LABELS, _OVERRIDES, _Units
from .library import Template

_LAW_FORMS = (
    "allowed: first-order mass action (k * S, kf * S - kr * P), Michaelis-Menten "
    "(Vmax * S / (Km + S)) and binding to finite sites (k_on * S * (Rtot - B)), with S the "
    "reactant and P, B the product"
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


def _match(pattern: str, s) -> bool:
    return fnmatch.fnmatchcase(s.getId(), pattern) or (
        s.isSetName() and fnmatch.fnmatchcase(s.getName(), pattern)
    )

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

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._errors import InputError
from .._files import atomic_write
from ..nuclides import nuclide as _lookup
from ._expr import expr
from ._sbml_document import _NS, _document, _metadata, _refuse_unsupported
from ._sbml_read import _Reader
from ._sbml_units import _UNIT_DIMS
from ._sbml_write import _ast, _unit_for, _write_units
from .compartmental import CompartmentalModel
from .library import Template

__all__ = ["read_sbml", "write_sbml"]


def _libsbml():
    try:
        import libsbml
    except ImportError as err:
        raise ImportError(
            'SBML import/export needs python-libsbml: pip install "twinjax[sbml]"'
        ) from err
    return libsbml


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

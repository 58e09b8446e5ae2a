"""Reading an SBML document (private, for [`twinjax.models.sbml`][]): parsing and validating the
file, the twinjax metadata annotation, and the SBML features refused before any
conversion."""

from __future__ import annotations

import json
from pathlib import Path

from .._errors import InputError

_NS = "https://twinjax.org/sbml/1"  # namespace of the twinjax metadata annotation


_SUPPORTED_VERSIONS = ((2, 4), (3, 1), (3, 2))


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

"""Writing SBML (private, for [`twinjax.models.sbml`][]): unit definitions of twinjax units and
libsbml ASTs of expression trees."""

from __future__ import annotations

from collections.abc import Mapping


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

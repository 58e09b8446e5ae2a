"""Expression trees of SBML math (private, for [`twinjax.models.sbml`][]): `Expr` nodes plus
``("sp", species)`` leaves for ligand amounts (nmol), and the algebra that recognises the
kinetic-law forms the engine integrates."""

from __future__ import annotations

import keyword
import math

from .._errors import InputError


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


def _strip_species(n: tuple) -> tuple:
    if n[0] == "sp":
        return _ONE
    if n[0] in ("num", "name"):
        return n
    if n[0] == "call":
        return ("call", n[1], _strip_species(n[2]))
    return (n[0], *(_strip_species(c) for c in n[1:]))

"""Monomial expressions of positive parameters: ``c * p1**a1 * p2**a2 * ...``.

Rates, volumes and capacities of compartmental models are products and quotients of positive
physical parameters (``Q_kidneys / V_kidneys_vascular``, ``0.2 * GFR``, ``R_kidneys * V_kidneys``).
Keeping them as monomials makes them static, hashable structure (so one compiled simulator serves
every parameter value) and keeps them positive whenever the parameters are.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import jax.numpy as jnp

from .._errors import InputError

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<pow>\*\*)|(?P<op>[*/^]))")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Monomial:
    """``coefficient * prod(params[name] ** power)``; build with [`monomial`][]."""

    coefficient: float = 1.0
    factors: tuple[tuple[str, float], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.factors)

    def __call__(self, params: Mapping[str, object]):
        out = self.coefficient
        for name, power in self.factors:
            v = params[name]
            out = out * (v if power == 1.0 else (1.0 / v if power == -1.0 else v**power))
        return jnp.asarray(out) if not self.factors else out

    def __mul__(self, other: Monomial | float) -> Monomial:
        if not isinstance(other, Monomial):
            return Monomial(self.coefficient * float(other), self.factors)
        powers: dict[str, float] = dict(self.factors)
        for n, p in other.factors:
            powers[n] = powers.get(n, 0.0) + p
        return Monomial(
            self.coefficient * other.coefficient,
            tuple((n, p) for n, p in powers.items() if p != 0.0),
        )

    def __truediv__(self, other: Monomial) -> Monomial:
        return self * other.inverse()

    def inverse(self) -> Monomial:
        return Monomial(1.0 / self.coefficient, tuple((n, -p) for n, p in self.factors))

    def __str__(self) -> str:
        parts = [] if self.coefficient == 1.0 else [repr(self.coefficient)]
        for n, p in self.factors:
            parts.append(n if p == 1.0 else f"{n}^{p:g}")
        return " * ".join(parts) or "1"


def monomial(expr: str | float | Monomial) -> Monomial:
    """Parse ``"0.8 * GFR * fu / V_plasma"`` (``*``, ``/``, ``^`` or ``**`` with numeric powers).

    A bare number is a constant; a bare name is that parameter.
    """
    if isinstance(expr, Monomial):
        return expr
    if isinstance(expr, int | float):
        if not math.isfinite(expr) or expr <= 0:
            raise InputError(f"rate constant {expr!r} is invalid; allowed: a finite number > 0")
        return Monomial(float(expr))
    if not isinstance(expr, str) or not expr.strip():
        raise InputError(f"expression {expr!r} is invalid; allowed: e.g. 'CL / V1' or '0.5 * k'")
    tokens = []
    pos = 0
    s = expr.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise InputError(f"expression {expr!r}: cannot read {s[pos:]!r}; allowed: products "
                             "and quotients of names and numbers, e.g. 'Q / V' or '2 * k^0.5'")  # fmt: skip
        tokens.append(m)
        pos = m.end()
    out = Monomial()
    sign = 1.0  # +1 multiply, -1 divide
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t["op"] in ("*", "/"):
            sign = 1.0 if t["op"] == "*" else -1.0
            i += 1
            continue
        if t["num"] is None and t["name"] is None:
            raise InputError(f"expression {expr!r}: unexpected {t.group().strip()!r}")
        power = 1.0
        if i + 2 < len(tokens) and (tokens[i + 1]["op"] == "^" or tokens[i + 1]["pow"]):
            try:
                power = float(tokens[i + 2]["num"])
            except TypeError:
                raise InputError(f"expression {expr!r}: powers must be numbers") from None
            i += 2
        if t["num"] is not None:
            out = out * (float(t["num"]) ** (sign * power))
        else:
            out = out * Monomial(1.0, ((t["name"], sign * power),))
        sign = 1.0
        i += 1
    return out

"""Arithmetic expressions of named parameters: ``"Q_kidneys / (fv_kidneys * V_kidneys)"``.

Rates, volumes and capacities of compartmental models are small formulas of physical parameters.
An [`Expr`][] is parsed once (from a string or built in Python) into an immutable, hashable tree,
so a model made of expressions is static structure: one compiled simulator serves every parameter
value. Allowed: numbers, parameter names, ``+ - * / **`` (or ``^``), parentheses and the
functions ``exp``, ``log`` and ``sqrt``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Mapping

import jax.numpy as jnp

from .._errors import InputError

__all__ = ["Expr", "expr"]

_FUNCS = {"exp": jnp.exp, "log": jnp.log, "sqrt": jnp.sqrt}
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}


@dataclasses.dataclass(frozen=True)
class Expr:
    """An arithmetic expression tree; call it with a parameter mapping to evaluate."""

    node: tuple

    @property
    def names(self) -> tuple[str, ...]:
        out: list[str] = []

        def walk(n: tuple) -> None:
            if n[0] == "name":
                if n[1] not in out:
                    out.append(n[1])
            elif n[0] == "call":
                walk(n[2])
            elif n[0] != "num":
                for child in n[1:]:
                    walk(child)

        walk(self.node)
        return tuple(out)

    def __call__(self, params: Mapping[str, object]):
        def ev(n: tuple):
            op = n[0]
            if op == "num":
                return n[1]
            if op == "name":
                return params[n[1]]
            if op == "neg":
                return -ev(n[1])
            if op == "call":
                return _FUNCS[n[1]](ev(n[2]))
            a, b = ev(n[1]), ev(n[2])
            if op == "add":
                return a + b
            if op == "sub":
                return a - b
            if op == "mul":
                return a * b
            if op == "div":
                return a / b
            return a**b

        return jnp.asarray(ev(self.node), dtype=float)

    def _bin(self, op: str, other, swap: bool = False) -> Expr:
        o = expr(other).node
        return Expr((op, o, self.node) if swap else (op, self.node, o))

    def __mul__(self, other) -> Expr:
        return self._bin("mul", other)

    def __rmul__(self, other) -> Expr:
        return self._bin("mul", other, swap=True)

    def __truediv__(self, other) -> Expr:
        return self._bin("div", other)

    def __rtruediv__(self, other) -> Expr:
        return self._bin("div", other, swap=True)

    def __add__(self, other) -> Expr:
        return self._bin("add", other)

    def __radd__(self, other) -> Expr:
        return self._bin("add", other, swap=True)

    def __sub__(self, other) -> Expr:
        return self._bin("sub", other)

    def __rsub__(self, other) -> Expr:
        return self._bin("sub", other, swap=True)

    def __str__(self) -> str:
        def fmt(n: tuple) -> str:
            op = n[0]
            if op == "num":
                return repr(n[1])
            if op == "name":
                return n[1]
            if op == "neg":
                return f"-({fmt(n[1])})"
            if op == "call":
                return f"{n[1]}({fmt(n[2])})"
            sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}[op]
            return f"({fmt(n[1])} {sym} {fmt(n[2])})"

        return fmt(self.node)


def expr(value: str | float | int | Expr) -> Expr:
    """Parse an expression string (or wrap a positive number or an existing [`Expr`][])."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        raise InputError(f"expression {value!r} is invalid; allowed: a number or a formula")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InputError(f"expression {value!r} is invalid; allowed: a finite number")
        return Expr(("num", float(value)))
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"expression {value!r} is invalid; allowed: e.g. 'CL / V1' or '0.5 * k'")
    text = value.strip().replace("^", "**")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise InputError(
            f"expression {value!r} cannot be parsed; allowed: numbers, parameter names, "
            "+ - * / ** and parentheses"
        ) from None
    return Expr(_convert(tree, value))


def _convert(n: ast.AST, source: str) -> tuple:
    if (
        isinstance(n, ast.Constant)
        and isinstance(n.value, int | float)
        and not isinstance(n.value, bool)
    ):
        return ("num", float(n.value))
    if isinstance(n, ast.Name):
        return ("name", n.id)
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
        return ("neg", _convert(n.operand, source))
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.UAdd):
        return _convert(n.operand, source)
    if (
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id in _FUNCS
        and len(n.args) == 1
        and not n.keywords
    ):
        return ("call", n.func.id, _convert(n.args[0], source))
    if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
        return (_BINOPS[type(n.op)], _convert(n.left, source), _convert(n.right, source))
    raise InputError(
        f"expression {source!r}: {ast.unparse(n)!r} is not allowed; allowed: numbers, parameter "
        "names, + - * / ** and parentheses"
    )

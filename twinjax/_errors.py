"""Exceptions raised by twinjax."""

from __future__ import annotations


class InputError(ValueError):
    """Invalid user input: the message names the field, the value and what is allowed.

    Raised before any computation, so nothing has been solved or written when it is seen.
    """


class SolverError(RuntimeError):
    """An ODE/PDE solve failed (e.g. ``max_steps`` exceeded); the message says where and why."""

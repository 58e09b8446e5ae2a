"""Rosenbrock (linearly implicit) Runge-Kutta solvers for Diffrax: `Rodas4` and `Rodas3`.

Why twinjax has its own stiff solver: the receptor-binding PBPK models are small (tens to ~100
states) and stiff, and inference evaluates them hundreds of thousands of times with forward-mode
tangents. An ESDIRK method (Diffrax's ``Kvaerno5``) solves a nonlinear system per stage with a
nested root-finding loop; measured on ``psma617_reduced`` (75 states) one such step costs about
0.6 ms on a CPU, dominated by the loop machinery, not by arithmetic. A Rosenbrock method replaces
the Newton iterations by exactly one linear solve per stage with a matrix factorised once per
step: ``(I / (h gamma) - J) K_i = f(Y_i) + sum_j C_ij K_j / h + gamma_i h df/dt``, with
``Y_i = y0 + sum_j A_ij K_j`` and ``y1 = y0 + sum_i M_i K_i`` (the formulation of Hairer & Wanner,
Solving ODEs II, 2nd ed., 1996, section IV.7, with the transformed variables of their eq. 7.25).
Rosenbrock methods need an exact Jacobian, which JAX provides (``jacfwd`` of the vector field).

Coefficients (published constants, cited):

- ``Rodas4``: 6 stages, order 4 with an embedded order-3 error estimate, stiffly accurate and
  L-stable; Hairer & Wanner (1996), section IV.7 (method RODAS), as distributed with their
  code RODAS (``rodas.f``, subroutine RODAS4's coefficient set).
- ``Rodas3``: 4 stages, order 3 with an embedded order-2 estimate, stiffly accurate; Sandu A,
  Verwer JG, Blom JG, et al. Benchmarking stiff ODE solvers for atmospheric chemistry problems II:
  Rosenbrock solvers. Atmos Environ 1997;31:3459-3472.

Both are tested by their convergence order on a nonlinear problem and by their stability function
(``R(-inf) = 0``: L-stability) in ``tests/models/test_rosenbrock.py``.

Dense output is cubic Hermite from ``f(y0)`` and ``f(y1)`` (``f(y1)`` is reused as the next
step's first stage, since the methods are stiffly accurate). Save times should be step
boundaries (``PIDController(step_ts=...)``), where the interpolant is exact; `simulate` does that.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

__all__ = ["Rodas3", "Rodas4"]


def _lower(values, s):
    """Strictly lower-triangular s x s matrix from its row-wise packed entries."""
    m = np.zeros((s, s))
    k = 0
    for i in range(1, s):
        for j in range(i):
            m[i, j] = values[k]
            k += 1
    return m


class _Rosenbrock(dfx.AbstractAdaptiveSolver):
    """Shared step of the Rosenbrock methods (see module docs); subclasses set the tableau."""

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = dfx.ThirdOrderHermitePolynomialInterpolation

    # tableau (class constants; numpy, so they are compile-time constants)
    _gamma: ClassVar[float]
    _a: ClassVar[np.ndarray]
    _c: ClassVar[np.ndarray]
    _m: ClassVar[np.ndarray]
    _e: ClassVar[np.ndarray]
    _alpha: ClassVar[np.ndarray]
    _gammas: ClassVar[np.ndarray]
    _order: ClassVar[int]

    def order(self, terms):
        return self._order

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        flat0, unravel = ravel_pytree(y0)
        h = t1 - t0

        def f(t, y):
            return ravel_pytree(terms.vf(t, unravel(y), args))[0]

        # After a jump (a discontinuity in the vector field) f(y0) is stale: recompute it.
        f0 = jax.lax.cond(made_jump, lambda: f(t0, flat0), lambda: ravel_pytree(solver_state)[0])
        jac = jax.jacfwd(lambda y: f(t0, y))(flat0)
        dfdt = jax.jvp(lambda t: f(t, flat0), (t0,), (jnp.ones_like(t0),))[1]
        n = flat0.shape[0]
        g = jnp.eye(n, dtype=flat0.dtype) / (h * float(self._gamma)) - jac
        factors = _factorise(g)

        def solve(b):
            return _solve(factors, g, b)

        s = len(self._m)
        ks = []
        for i in range(s):
            # A stage at the same point as the previous one (same A row and alpha) reuses its
            # f evaluation (Rodas3's second stage).
            same_point = i > 0 and np.array_equal(self._a[i], self._a[i - 1])
            same_point = same_point and self._alpha[i] == self._alpha[i - 1]
            if i == 0:
                fi = f0
            elif not same_point:
                yi = flat0 + sum(
                    float(self._a[i, j]) * ks[j] for j in range(i) if self._a[i, j] != 0
                )
                fi = f(t0 + float(self._alpha[i]) * h, yi)
            rhs = fi + sum(
                (float(self._c[i, j]) / h) * ks[j] for j in range(i) if self._c[i, j] != 0
            )
            if self._gammas[i] != 0:
                rhs = rhs + (float(self._gammas[i]) * h) * dfdt
            ks.append(solve(rhs))
        y1 = flat0 + sum(float(self._m[i]) * ks[i] for i in range(s) if self._m[i] != 0)
        err = sum(float(self._e[i]) * ks[i] for i in range(s) if self._e[i] != 0)
        f1 = f(t1, y1)
        dense = dict(y0=y0, y1=unravel(y1), k0=unravel(h * f0), k1=unravel(h * f1))
        return unravel(y1), unravel(err), dense, unravel(f1), dfx.RESULTS.successful


def _factorise(g):
    """LU factors of `g` with the row permutation as an index array, outside differentiation.

    The tangents of the solves come from [`_solve`][]'s own rule, so the factorisation is never
    differentiated: forward-mode through an LU costs two n x n triangular solves per tangent
    per step, more than everything else in the step together.
    """
    lu, _, perm = jax.lax.linalg.lu(jax.lax.stop_gradient(g))
    return lu, perm


@jax.custom_jvp
def _solve(factors, g, b):
    """Solve ``g x = b`` with the LU `factors` of `g` (the permutation applied by a gather; two
    triangular solves). ``jax.scipy.linalg.lu_solve`` rebuilds the permutation from the pivots
    on every call, which costs more than the solves themselves at this size on CPU."""
    lu, perm = factors
    x = solve_triangular(lu, b[perm], lower=True, unit_diagonal=True)
    return solve_triangular(lu, x, lower=False)


@_solve.defjvp
def _solve_jvp(primals, tangents):
    # d(g^-1 b) = g^-1 (db - dg x): one more solve with the same factors per tangent.
    factors, g, b = primals
    _, dg, db = tangents
    x = _solve(factors, g, b)
    rhs = db - dg @ x
    return x, _solve(factors, g, rhs)


class Rodas4(_Rosenbrock):
    """Rosenbrock method RODAS4 (order 4, embedded order 3, 6 stages, stiffly accurate,
    L-stable; Hairer & Wanner 1996, IV.7). One Jacobian, one LU factorisation and six
    triangular-solve pairs per step; no Newton iterations. See the module docs."""

    _order: ClassVar[int] = 4
    _gamma: ClassVar[float] = 0.25
    _a: ClassVar[np.ndarray] = _lower(
        [
            1.544,
            0.9466785280815826,
            0.2557011698983284,
            3.314825187068521,
            2.896124015972201,
            0.9986419139977817,
            1.221224509226641,
            6.019134481288629,
            12.53708332932087,
            -0.687886036105895,
            1.221224509226641,
            6.019134481288629,
            12.53708332932087,
            -0.687886036105895,
            1.0,
        ],
        6,
    )
    _c: ClassVar[np.ndarray] = _lower(
        [
            -5.6688,
            -2.430093356833875,
            -0.2063599157091915,
            -0.1073529058151375,
            -9.594562251023355,
            -20.47028614809616,
            7.496443313967647,
            -10.24680431464352,
            -33.99990352819905,
            11.7089089320616,
            8.083246795921522,
            -7.981132988064893,
            -31.52159432874371,
            16.31930543123136,
            -6.058818238834054,
        ],
        6,
    )
    _m: ClassVar[np.ndarray] = np.array(
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.687886036105895, 1.0, 1.0]
    )
    _e: ClassVar[np.ndarray] = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    _alpha: ClassVar[np.ndarray] = np.array([0.0, 0.386, 0.21, 0.63, 1.0, 1.0])
    _gammas: ClassVar[np.ndarray] = np.array([0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0])


class Rodas3(_Rosenbrock):
    """Rosenbrock method RODAS3 (order 3, embedded order 2, 4 stages, stiffly accurate;
    Sandu et al. 1997). Cheaper per step than [`Rodas4`][]; for loose tolerances."""

    _order: ClassVar[int] = 3
    _gamma: ClassVar[float] = 0.5
    _a: ClassVar[np.ndarray] = _lower([0.0, 2.0, 0.0, 2.0, 0.0, 1.0], 4)
    _c: ClassVar[np.ndarray] = _lower([4.0, 1.0, -1.0, 1.0, -1.0, -8.0 / 3.0], 4)
    _m: ClassVar[np.ndarray] = np.array([2.0, 0.0, 1.0, 1.0])
    _e: ClassVar[np.ndarray] = np.array([0.0, 0.0, 0.0, 1.0])
    _alpha: ClassVar[np.ndarray] = np.array([0.0, 0.0, 1.0, 1.0])
    _gammas: ClassVar[np.ndarray] = np.array([0.5, 1.5, 0.0, 0.0])

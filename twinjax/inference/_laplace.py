"""The posterior mode and the Laplace approximation, in the flat latent space of a NumPyro model.

Twin models have few latent coordinates (a handful of parameters and one calibration factor per
scan), every one of them unconstrained (standard-normal ``z``, normal ``log_calibration``). So:

- the potential (negative log joint) is compiled once as a function of one flat vector, and its
  gradient is taken in forward mode (cheapest for a few inputs, and the only mode Diffrax's
  forward adjoint supports);
- the mode is found by SciPy's BFGS on the host (a handful of dozen compiled evaluations, each an
  ODE solve; BFGS's line search copes with ``inf`` from rejected solves) and then polished with
  exact Newton steps on the forward-over-forward Hessian, so that the mode is exact to round-off
  (a quadratic potential is minimised in one Newton step: the sequential = batch test relies on
  it);
- the Laplace covariance is the inverse Hessian at the mode.

[`LatentSpace`][] holds the layout (site name -> slice of the flat vector).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .._errors import SolverError

__all__ = ["LatentSpace", "ModeFinder", "find_mode", "hessian"]


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """Layout of the latent sites of a model: `sites` is ``((name, shape), ...)`` in the order of
    the flat vector (sorted by name, as `jax.flatten_util.ravel_pytree` orders a dict)."""

    sites: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, values: Mapping[str, object]) -> LatentSpace:
        return cls(tuple((k, tuple(np.shape(values[k]))) for k in sorted(values)))

    @property
    def size(self) -> int:
        return int(sum(np.prod(s, dtype=int) for _, s in self.sites))

    def slices(self) -> dict[str, slice]:
        out, i = {}, 0
        for name, shape in self.sites:
            n = int(np.prod(shape, dtype=int))
            out[name] = slice(i, i + n)
            i += n
        return out

    def unflatten(self, u):
        """Flat vector(s) ``(..., size)`` -> dict of site values ``(..., *shape)``."""
        lead = u.shape[:-1]
        return {
            name: u[..., sl].reshape(lead + shape)
            for (name, shape), sl in zip(self.sites, self.slices().values(), strict=True)
        }

    def flatten(self, values: Mapping[str, object], batch_ndim: int = 0):
        """Dict of site values (with `batch_ndim` leading axes) -> flat vector(s)."""
        parts = []
        for name, shape in self.sites:
            v = jnp.asarray(values[name])
            parts.append(v.reshape(v.shape[:batch_ndim] + (int(np.prod(shape, dtype=int)),)))
        return jnp.concatenate(parts, axis=-1)


def _value_and_grad(potential: Callable):
    def both(u, *args):
        v = potential(u, *args)
        return v, v

    grad_and_value = jax.jacfwd(both, has_aux=True)

    @jax.jit
    def vg(u, *args):
        g, v = grad_and_value(u, *args)
        return v, g

    return vg


def hessian(potential: Callable) -> Callable:
    """Compiled Hessian of `potential` in its first argument (forward over forward)."""
    return jax.jit(jax.jacfwd(jax.jacfwd(potential)))


class ModeFinder:
    """[`find_mode`][] with the compiled gradient and Hessian kept: ``ModeFinder(potential)``
    then ``.run(u0, *args)`` for many data sets `args` of the same shapes (one compile)."""

    def __init__(self, potential: Callable):
        self.vg = _value_and_grad(potential)
        self.hess = hessian(potential)

    def run(self, u0, *args, max_iter=1000, newton_steps=8, what="posterior"):
        return _find_mode(self.vg, self.hess, u0, args, max_iter, newton_steps, what)


def find_mode(
    potential: Callable,
    u0,
    *,
    max_iter: int = 1000,
    newton_steps: int = 8,
    what: str = "posterior",
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise `potential` (flat vector -> scalar, jit-able) from `u0`.

    **Returns:** ``(mode, hessian_at_mode)`` as NumPy arrays. Raises [`SolverError`][] when no
    finite mode is found or the Hessian there is not positive definite (then the posterior has
    no Gaussian approximation at that point: use NUTS).
    """
    return ModeFinder(potential).run(u0, max_iter=max_iter, newton_steps=newton_steps, what=what)


def _find_mode(vg, hess, u0, args, max_iter, newton_steps, what):
    def fun(u):
        v, g = vg(jnp.asarray(u), *args)
        v, g = float(v), np.asarray(g)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return np.inf, np.zeros_like(g)
        return v, g

    u0 = np.asarray(u0, dtype=float)
    if not np.isfinite(fun(u0)[0]):
        raise SolverError(
            f"the {what} log density is not finite at the starting point (ODE failure or "
            "impossible data); check the data against the model"
        )
    res = scipy.optimize.minimize(
        fun, u0, jac=True, method="BFGS", options={"maxiter": max_iter, "gtol": 1e-7}
    )
    u = res.x
    value = fun(u)[0]
    # Newton polish with the exact Hessian and a backtracking line search.
    h = np.asarray(hess(jnp.asarray(u), *args))
    for _ in range(newton_steps):
        g = fun(u)[1]
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)) or g @ step <= 0:
            break
        t = 1.0
        while t > 1e-6:
            cand = u - t * step
            vc = fun(cand)[0]
            if vc <= value + 1e-4 * t * (-(g @ step)):
                break
            t /= 2.0
        else:
            break
        u, value = cand, vc
        h = np.asarray(hess(jnp.asarray(u), *args))
        if np.max(np.abs(t * step)) < 1e-12 * (1.0 + np.max(np.abs(u))):
            break
    h = 0.5 * (h + h.T)
    if not np.isfinite(value) or not np.all(np.isfinite(h)):
        raise SolverError(f"no finite {what} mode found ({res.message})")
    try:
        np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        raise SolverError(
            f"the Hessian at the {what} mode is not positive definite (eigenvalues "
            f"{np.round(np.linalg.eigvalsh(h), 6).tolist()}): the mode is a saddle or the "
            "posterior is flat in some direction; use method='nuts'"
        ) from None
    return u, h

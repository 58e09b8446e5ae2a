"""Finite-volume operators on a [`Grid`][twinjax.pde.Grid].

Diffusion with a heterogeneous diffusivity map D (mm^2/h), cell-centred:

    du_i/dt = sum over faces f of cell i:  D_f (u_neighbour - u_i) / h_f^2

with the face diffusivity the harmonic mean of the two cells' values, ``D_f = 2 D_i D_j / (D_i +
D_j)`` (the exact flux of a piecewise-constant D in series; zero when either cell has D = 0, so
a mask or an impermeable region is simply D = 0). Every flux leaves one cell and enters its
neighbour, so the total amount ``sum_i u_i V_cell`` is conserved to rounding on a closed
domain. Domain boundaries are no-flux, or fixed-value (the boundary face half a cell away from
the centre: flux ``2 D_i (u_b - u_i) / h^2``). Second order in space for smooth D.

Exchange with vessels (perfusion, permeability-surface products) is a source term per cell,
``k (c_plasma - u)`` with k in 1/h, added by the models.

Units: length mm, time h, diffusivity mm^2/h, rates 1/h.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ._grid import Grid

__all__ = ["Diffusion"]


def _harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    return np.where(s > 0, 2.0 * a * b / np.where(s > 0, s, 1.0), 0.0)


class Diffusion(eqx.Module):
    """The diffusion operator of a diffusivity map (module docs); linear, ``op(u)`` gives
    du/dt (same units as u per h).

    **Arguments:**
    - `grid`: a [`Grid`][twinjax.pde.Grid].
    - `diffusivity_mm2_per_h`: a scalar or a map of the grid's shape, >= 0.
    - `mask`: optional boolean map; cells outside it do not exchange with the inside (their D
      is set to 0).
    - `boundary`: ``"no-flux"`` (default) or ``"fixed"`` (domain faces held at
      `boundary_value`, same units as u).
    """

    grid: Grid
    face_rate: tuple[Float[Array, " *faces"], ...]  # D_f / h^2 per axis, (n - 1) faces (1/h)
    boundary_rate: Float[Array, " *shape"]  # sum of 2 D_i / h^2 over the cell's fixed-value faces
    boundary_value: Float[Array, ""]
    max_rate_per_h: float = eqx.field(static=True)

    def __init__(
        self,
        grid: Grid,
        diffusivity_mm2_per_h,
        *,
        mask=None,
        boundary: str = "no-flux",
        boundary_value: float = 0.0,
    ):
        d = grid.check_field("diffusivity_mm2_per_h", diffusivity_mm2_per_h, nonnegative=True)
        if mask is not None:
            d = np.where(grid.check_mask("mask", mask), d, 0.0)
        if boundary not in ("no-flux", "fixed"):
            raise InputError(f"boundary = {boundary!r}; allowed: 'no-flux' or 'fixed'")
        if not np.isfinite(boundary_value):
            raise InputError(f"boundary_value = {boundary_value!r}; allowed: finite")
        faces, diag = [], np.zeros(grid.shape)
        bnd = np.zeros(grid.shape)
        for a, h in enumerate(grid.spacing_mm):
            n = grid.shape[a]
            lo = np.take(d, np.arange(n - 1), axis=a)
            hi = np.take(d, np.arange(1, n), axis=a)
            f = _harmonic(lo, hi) / h**2
            faces.append(jnp.asarray(f))
            pad = [(0, 0)] * grid.ndim
            pad[a] = (1, 0)
            diag += np.pad(f, pad)
            pad[a] = (0, 1)
            diag += np.pad(f, pad)
            if boundary == "fixed":
                for i in (0, n - 1):
                    sl = [slice(None)] * grid.ndim
                    sl[a] = slice(i, i + 1)
                    bnd[tuple(sl)] += 2.0 * d[tuple(sl)] / h**2
        self.grid = grid
        self.face_rate = tuple(faces)
        self.boundary_rate = jnp.asarray(bnd)
        self.boundary_value = jnp.asarray(float(boundary_value))
        # Gershgorin: every eigenvalue lies in [-2 max|diag|, 0]; explicit steps need
        # dt <= 1 / max|diag| (forward Euler and Heun alike).
        self.max_rate_per_h = float(np.max(diag + bnd)) if d.size else 0.0

    def __call__(self, u: Float[Array, " *shape"]) -> Float[Array, " *shape"]:
        out = self.boundary_rate * (self.boundary_value - u)
        for a, f in enumerate(self.face_rate):
            flux = f * jnp.diff(u, axis=a)  # into cell i from cell i + 1, per unit volume
            # Cell i gains flux[i] through its high face and loses flux[i - 1] through its low
            # face; the domain faces carry none (zero padding). Padding and slicing stay
            # contiguous, so XLA fuses them into one stencil loop (index gathers with jnp.take
            # were ~4x slower on CPU).
            lo = [(0, 0)] * u.ndim
            lo[a] = (1, 0)
            hi = [(0, 0)] * u.ndim
            hi[a] = (0, 1)
            out = out + jnp.pad(flux, hi) - jnp.pad(flux, lo)
        return out

    def linear_operator(self, u_struct=None) -> lx.FunctionLinearOperator:
        """The operator as a matrix-free `lineax` operator (its homogeneous part: with a fixed
        boundary value b, ``op(u) = L u + boundary_rate * b``)."""
        import jax

        struct = u_struct or jax.ShapeDtypeStruct(self.grid.shape, jnp.result_type(float))
        return lx.FunctionLinearOperator(
            lambda u: self(u) - self.boundary_rate * self.boundary_value,
            struct,
            tags=(lx.symmetric_tag, lx.negative_semidefinite_tag),
        )
